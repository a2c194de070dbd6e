"""HTTP routes. `build_fastapi_app(service)` is a plain factory so the routes can be tested
with any StageClients; the Serve deployment (serve_app.app) calls it at replica start."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from sam3d_common.errors import StageError
from serve_app.capabilities import build_capabilities_router
from serve_app.protocol import (BINARY_MEDIA_TYPE, ENCODINGS, EVENT_FIELDS, EVENT_TYPES,
                                PROTOCOL_VERSION, STAGES)
from serve_app.schemas import GenerateRequest
from serve_app.http_util import error_response, exception_response, validation_message
from serve_app.offline_docs import add_offline_docs
from serve_app.request_parsing import MULTIPART_BODY, parse_generate
from serve_app.prepare import prepare_job
from serve_app.run import start_run
from serve_app.service import GenerateService
from serve_app.admission import StreamAdmission
from serve_app.auth import install_auth
from serve_app.headers import install_headers
from sam3d_common.metrics import MetricsMiddleware
from serve_app.openapi import errors, install_openapi, ref
from sam3d_common.store import CONTENT_TYPES, ArtifactNotFound, ArtifactPending, InvalidArtifactRef, content_type
from serve_app.stream_response import StreamResponse
from serve_app.wire import FrameWriter, encode_and_pace, transport_of

# Serve 2.60 honours these client headers in its proxy, before our code runs.
TIMEOUT_HEADER = "x-request-timeout-seconds"
NO_DISCONNECT_HEADER = "x-request-disconnect-disabled"

STATIC = Path(__file__).parent / "static"

_GENERATE_DOC = """Stream a 3D object taking shape, as Server-Sent Events.

Send JSON (`application/json`) with the fields of `GenerateRequest`, or
`multipart/form-data` with the photo as file `image`, optional mask files `mask`
(repeatable), and the other fields as form fields (`point_prompts` and `box_prompts` as
JSON text). Events: loading, geometry, appearance, mesh_preview, glb_ready,
texture_ready (with `texture`), complete, error.
With `Accept: application/octet-stream` the same events come as binary length-prefixed
records (docs/frame-format.md) instead of SSE.
"""


ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


class IsolatedStaticFiles(StaticFiles):
    """StaticFiles whose responses carry the page's cross-origin isolation headers: module workers
    (onnxruntime-web's threads) must be served with a COEP compatible with the page's."""

    async def get_response(self, path: str, scope):
        try:
            response = await super().get_response(path, scope)
        except StarletteHTTPException as exc:  # the JSON error body every route answers with
            return error_response(exc.status_code, "not_found" if exc.status_code == 404
                                  else "bad_input", "no such static file")
        except OSError:  # e.g. a name longer than the filesystem allows: not a file we have
            return error_response(404, "not_found", "no such static file")
        response.headers.update(ISOLATION_HEADERS)
        return response


_STREAM_200 = {"description": "the stream: SSE, or binary records with `Accept: application/octet-stream`",
               "content": {"text/event-stream": {"schema": {"type": "string"}},
                           BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
_ARTIFACT_200 = {"description": "the artifact's bytes", "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(set(CONTENT_TYPES.values()))}}


def client_stream_policy(request: Request, honor: bool) -> tuple[float | None, bool]:
    """(deadline in seconds or None for the configured one, whether to cancel on disconnect).

    Unless the operator enables them, the client's Serve headers change nothing here: the
    ingress keeps its own deadline and its own disconnect watch whatever the proxy did.
    """
    if not honor:
        return None, True
    deadline = None
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is not None:
        try:
            value = float(raw)
            deadline = value if value > 0 else 10 * 365 * 86400.0
        except ValueError:
            pass
    return deadline, request.headers.get(NO_DISCONNECT_HEADER) != "?1"


def build_fastapi_app(service: GenerateService, segmenter=None, jobs=None) -> FastAPI:
    """`segmenter`: an object with the Segmenter deployment's async methods (embed,
    segment, segment_cached, click_decoder_onnx) for the /v1/embed and /v1/segment routes.
    `jobs`: where /v1/jobs keeps its jobs (serve_app.routes_jobs); None: a JobManager in
    this process, over the service's own stage clients."""
    streams: dict[str, FrameWriter] = {}
    app = FastAPI(title="sam3d-serve", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Photo or text → 3D object, streamed as it takes shape.")
    add_offline_docs(app)
    models = [GenerateRequest]
    if segmenter is not None:
        from serve_app.routes_segment import SegmentRequest, build_segment_router

        app.include_router(build_segment_router(lambda: segmenter, service.settings.limits))
        models.append(SegmentRequest)
    app.include_router(build_capabilities_router(service, segment_routes=segmenter is not None))
    from serve_app.jobs import JobManager
    from serve_app.routes_jobs import build_jobs_router

    app.include_router(build_jobs_router(
        service, jobs if jobs is not None else JobManager(service.clients, service.store, service.settings),
        streams))
    install_openapi(app, models)
    if service.settings.limits.max_active_streams:  # inside auth: a key's quota is checked first
        app.add_middleware(StreamAdmission, limit=service.settings.limits.max_active_streams)
    install_auth(app, service.settings.auth)
    install_headers(app, service.settings.cors_allow_origins)
    app.add_middleware(MetricsMiddleware)  # outermost: counts 401/429 too

    @app.exception_handler(StageError)
    async def _stage_error(_, exc: StageError):
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(ValidationError)
    async def _invalid(_, exc: ValidationError):
        return error_response(422, "bad_input", validation_message(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid_req(_, exc: RequestValidationError):
        return error_response(422, "bad_input", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.post("/v1/generate", summary="Photo or text → streamed 3D object",
              description=_GENERATE_DOC, response_class=StreamingResponse,
              responses={200: _STREAM_200, **errors(400, 401, 413, 415, 422, 429, 500, 501, 503, 504)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": ref(GenerateRequest)},
                  "multipart/form-data": {"schema": MULTIPART_BODY}}}})
    async def generate(request: Request):
        """parse → prepare → run → encode and pace → respond; the stream's owner (`run`)
        closes it when it ends or the client leaves (serve_app/stream_owner.py)."""
        deadline_s, watch = client_stream_policy(request, service.settings.honor_client_serve_headers)
        try:
            req, image_bytes, masks = await parse_generate(request, service.settings.limits.max_json_bytes)
            job = await prepare_job(service, req, image_bytes=image_bytes, mask_bytes=masks)
            run = await start_run(service, job, deadline_s=deadline_s)
        except ValidationError as exc:
            return error_response(422, "bad_input", validation_message(exc))
        except Exception as exc:  # noqa: BLE001 - mapped to a status with a reason
            return exception_response(exc)
        transport = transport_of(request)
        body = encode_and_pace(run, job.encoding, transport, service.settings.stream, streams)
        return StreamResponse(run, body, transport, watch_disconnect=watch)

    @app.post("/v1/streams/{request_id}/keyframe", status_code=202, responses=errors(401, 404, 422, 429),
              summary="Ask a running stream for a key frame (resynchronisation)")
    async def keyframe(request_id: str):
        writer = streams.get(request_id)
        if writer is None:
            return error_response(404, "not_found", f"no running stream {request_id} on this ingress replica; "
                          "a client that reconnects gets a key frame first")
        writer.request_key()
        return {"request_id": request_id, "key_frame": "next"}

    @app.get("/v1/artifacts/{artifact_id}/{name}", summary="Download an artifact (GLB, splat PLY, mask)",
             response_class=Response, responses={200: _ARTIFACT_200, **errors(400, 404, 422)})
    async def artifact(artifact_id: str, name: str):
        try:
            data = service.store.get(artifact_id, name)
        except InvalidArtifactRef as exc:
            return error_response(400, "bad_artifact_ref", str(exc))
        except ArtifactPending:
            return error_response(404, "not_found", f"no artifact {artifact_id}/{name} yet: a job's "
                                  "artifacts appear when it has succeeded")
        except ArtifactNotFound:
            return error_response(404, "not_found", f"no artifact {artifact_id}/{name}")
        # One request's private result: no shared caches, kept no longer than the store keeps it.
        ttl = service.settings.store.ttl_s
        return Response(data, media_type=content_type(name),
                        headers={"Cache-Control": f"private, max-age={int(ttl) if ttl else 86400}"})

    @app.get("/v1/protocol", summary="Protocol version, event types and encodings")
    async def protocol():
        return {"version": PROTOCOL_VERSION, "event_types": list(EVENT_TYPES), "stages": list(STAGES),
                "event_fields": EVENT_FIELDS, "encodings": list(ENCODINGS)}

    @app.get("/healthz", summary="Liveness: the ingress answers (the backends: GET /v1/capabilities)")
    async def healthz():
        return {"status": "ok", "protocol_version": PROTOCOL_VERSION}

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC / "index.html"
        if page.exists():
            # Cross-origin isolated (every file the page loads is same-origin), so the viewer's
            # onnxruntime-web may run its click decoder on several threads (SharedArrayBuffer).
            return FileResponse(page, headers=ISOLATION_HEADERS)
        return {"service": "sam3d-serve", "docs": "/docs"}

    # The viewer's files, vendor/ included. StaticFiles resolves every path inside STATIC and
    # refuses anything that leaves it (.., encoded separators, symlinks out).
    app.mount("/static", IsolatedStaticFiles(directory=STATIC, follow_symlink=False), name="static")

    return app
