"""Routes of the jobs API: POST /v1/jobs, GET|DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/events.

`jobs` is a serve_app.jobs.JobManager in this process, or JobsHandleAdapter over the
JobManager deployment's handle: the same async methods either way.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from serve_app.http_util import error_response, exception_response, validation_message
from serve_app.request_parsing import MULTIPART_BODY, parse_generate
from serve_app.openapi import errors, ref
from serve_app.schemas import GenerateRequest
from serve_app.prepare import prepare_job
from serve_app.protocol import BINARY_MEDIA_TYPE
from serve_app.service import GenerateService
from serve_app.stream_owner import StreamOwner
from serve_app.stream_response import StreamResponse
from serve_app.wire import encode_and_pace, transport_of

# Inputs travel as digests in the manifest, never as copies of the image.
_NOT_IN_MANIFEST = {"image_b64", "image_url", "mask_b64"}


class JobsHandleAdapter:
    """The JobManager deployment's handle with JobManager's signatures."""

    def __init__(self, handle):
        self._h = handle

    async def submit(self, job, fields: dict) -> dict:
        return await self._h.submit.remote(job, fields)

    async def status(self, job_id: str) -> dict:
        return await self._h.status.remote(job_id)

    async def cancel(self, job_id: str) -> dict:
        return await self._h.cancel.remote(job_id)

    async def events(self, job_id: str, after: int = -1):
        gen = self._h.options(stream=True).events.remote(job_id, after)
        try:
            async for ev in gen:
                yield ev
        finally:
            # Only the subscription ends; the job keeps running in the JobManager.
            gen.cancel()


def _after(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return -1
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= -1 else None


async def _answer(call):
    """The job manager's answer, or its error as a status with a reason."""
    try:
        return await call
    except Exception as exc:  # noqa: BLE001 - mapped to a status with a reason
        return exception_response(exc)


def build_jobs_router(service: GenerateService, jobs, streams: dict | None = None) -> APIRouter:
    """`streams`: the ingress's registry of running streams' writers, so that
    POST /v1/streams/{job_id}/keyframe reaches a job's events stream on this replica too."""
    streams = {} if streams is None else streams
    router = APIRouter(tags=["jobs"])

    @router.post("/v1/jobs", status_code=202, summary="Start a job that outlives the connection",
                 responses={202: {"description": "the job's id, state and URLs"},
                            **errors(400, 401, 413, 415, 422, 429, 500, 501, 503, 504)},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": ref(GenerateRequest)},
                     "multipart/form-data": {"schema": MULTIPART_BODY}}}})
    async def submit(request: Request):
        """Same body and validation as POST /v1/generate; answers 202 with the job's URLs."""
        try:
            req, image_bytes, masks = await parse_generate(request, service.settings.limits.max_json_bytes)
            job = await prepare_job(service, req, image_bytes=image_bytes, mask_bytes=masks)
            fields = req.model_dump(exclude=_NOT_IN_MANIFEST)
            fields["image_source"] = ("upload" if image_bytes is not None else "image_b64" if req.image_b64
                                      else "image_url" if req.image_url else None)
            status = await jobs.submit(job, fields)
        except ValidationError as exc:
            return error_response(422, "bad_input", validation_message(exc))
        except Exception as exc:  # noqa: BLE001 - mapped to a status with a reason
            return exception_response(exc)
        return JSONResponse(status, status_code=202, headers={"Location": status["status_url"]})

    @router.get("/v1/jobs/{job_id}", summary="A job's state, queue position, progress and artifacts",
                responses=errors(401, 404, 422, 429))
    async def status(job_id: str):
        return await _answer(jobs.status(job_id))

    @router.delete("/v1/jobs/{job_id}", summary="Cancel a job (its running stage stops within a step)",
                   responses=errors(401, 404, 422, 429))
    async def cancel(job_id: str):
        return await _answer(jobs.cancel(job_id))

    @router.get("/v1/jobs/{job_id}/events", summary="A job's events, resumable with Last-Event-ID",
                responses={200: {"description": "the events", "content": {
                    "text/event-stream": {}, BINARY_MEDIA_TYPE: {}}}, **errors(400, 401, 404, 422, 429)})
    async def events(job_id: str, request: Request):
        """SSE (or binary records with `Accept: application/octet-stream`): the non-frame
        events after `Last-Event-ID` (header, or `last_event_id` query), one key frame of the
        current voxels, then live events. Closing this stream does not cancel the job."""
        after = _after(request)
        if after is None:
            return error_response(400, "bad_last_event_id", "Last-Event-ID must be an integer ≥ -1")
        try:
            info = await jobs.status(job_id)
        except Exception as exc:  # noqa: BLE001
            return exception_response(exc)
        # The subscription is all this stream owns: closing it leaves the job running.
        stream = StreamOwner(job_id, jobs.events(job_id, after))
        stream.on_close(stream.events.aclose)
        transport = transport_of(request)
        body = encode_and_pace(stream, info["encoding"], transport, service.settings.stream, streams)
        return StreamResponse(stream, body, transport, watch_disconnect=True)

    return router
