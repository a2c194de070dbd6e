"""HTTP routes of the SAM 3 hybrid pattern: embed once on the server, decode clicks in the browser.

    POST /v1/embed                          image → compact embedding payload (+ its id)
    POST /v1/segment                        embedding_id or image, with label / clicks / box → mask PNG
    GET  /v1/models/sam3-click-decoder.onnx the ONNX click decoder for onnxruntime-web (per click)
    GET  /v1/models/sam3-click-decoder.photo.onnx   its photo graph (run once per photo: the click graph's inputs)

`build_segment_router(get_segmenter, limits)` returns an APIRouter. `get_segmenter()` gives an object
with the Segmenter deployment's async methods (embed, segment, segment_cached, click_decoder_onnx);
`SegmenterHandleAdapter(handle)` is that object over a DeploymentHandle. Errors are JSON
`{"error": {"code", "message"}}` with the stage error's status; nothing else leaks.

The ingress's event loop also relays every other request's stream, so what costs CPU per image (base64
and image decoding, the content hash that routes a request, the masks' PNG encoding: each several ms for
a 1080p photo) runs in worker threads, never on the loop.
"""
from __future__ import annotations

import asyncio
import base64
from typing import Any, Callable

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field, ValidationError

from sam3d_common.errors import BadInput, StageError, as_stage_error
from deployments.segmenter.base import Box, Point, SegmentPrompt, check_clicks_inside
from deployments.segmenter.sam3.encoder import image_id
from serve_app.http_util import exception_response, form_data, json_object, media_type, validation_message
from serve_app.inputs import b64_bytes, decode_image, decode_mask, fit_image, png_bytes
from serve_app.openapi import errors, ref
from serve_app.schemas import PointPrompt, RequestModel
from sam3d_common.settings import LimitsSettings

ONNX_ROUTE = "/v1/models/sam3-click-decoder.onnx"
ONNX_PHOTO_ROUTE = ONNX_ROUTE.removesuffix(".onnx") + ".photo.onnx"  # the page derives it the same way


class SegmentRequest(RequestModel):
    embedding_id: str | None = Field(None, max_length=128)
    image_b64: str | None = None
    label: str | None = Field(None, max_length=200)
    points: list[PointPrompt] = Field(default_factory=list, max_length=64)
    box: tuple[float, float, float, float] | None = Field(None, description="x_min, y_min, x_max, y_max")
    mask_b64: str | None = Field(None, description="PNG of a mask to refine, image-sized")
    max_instances: int = Field(10, ge=0, le=100)


class SegmenterHandleAdapter:
    """The router's view of the Segmenter deployment, over a Ray Serve DeploymentHandle.

    Requests about one embedding carry it as the multiplexed model id, so Serve prefers the replica that
    announced it (see Segmenter._announce); any replica still answers, from its cache or with a 404.
    """

    def __init__(self, handle):
        self.handle = handle

    def _for(self, key: str | None):
        return self.handle.options(multiplexed_model_id=key) if key else self.handle

    async def _for_image(self, image: np.ndarray):
        """The handle routed by the image's content id, hashed in a worker thread (module docstring)."""
        return self._for(await asyncio.to_thread(image_id, image))

    async def embed(self, image: np.ndarray, profile: str | None = None) -> dict:
        return await (await self._for_image(image)).embed.remote(image, profile)

    async def segment(self, image: np.ndarray, prompt: SegmentPrompt):
        return await (await self._for_image(image)).segment.remote(image, prompt)

    async def segment_cached(self, embedding_id: str, prompt: SegmentPrompt):
        return await self._for(embedding_id).segment_cached.remote(embedding_id, prompt)

    async def click_decoder_onnx(self, graph: str = "click") -> dict:
        return await self.handle.click_decoder_onnx.remote(graph)


def _encodings(payload: bytes) -> dict[str, str]:
    from deployments.segmenter.sam3.embedding_codec import read_header

    header, _, _ = read_header(payload)
    return {t["name"]: t["encoding"] for t in header["tensors"]}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_EMBED_200 = {"description": "the embedding payload (binary, metadata in X-Embedding-* headers), or JSON "
              "with `payload_b64` for `Accept: application/json`",
              "content": {"application/octet-stream": _BINARY, "application/json": {"schema": {"type": "object"}}}}
_SEGMENT_200 = {"description": "the mask as base64 PNG, its score and the instances",
                "content": {"application/json": {"schema": {"type": "object"}}}}
_ONNX_200 = {"description": "the ONNX click decoder", "content": {"application/octet-stream": _BINARY}}
_ONNX_PHOTO_200 = {"description": "the click decoder's photo graph (the encoder's features → the click graph's inputs)",
                   "content": {"application/octet-stream": _BINARY}}


def build_segment_router(get_segmenter: Callable[[], Any], limits: LimitsSettings | None = None) -> APIRouter:
    limits = limits or LimitsSettings()
    router = APIRouter()
    onnx_cache: dict[str, Any] = {}
    onnx_lock = asyncio.Lock()

    def load_image(data: bytes | str, mask_data: str | None = None, points: list[PointPrompt] = ()):
        """data: the image's bytes, or base64 text (JSON's image_b64); mask_data: mask_b64. → (image
        scaled to max_image_side, mask likewise or None, scale, size as sent); BadInput for a click
        outside the image as sent. Run in a worker thread (module docstring)."""
        if isinstance(data, str):
            data = b64_bytes(data, "image_b64")
        mask_data = b64_bytes(mask_data, "mask_b64") if mask_data else None
        rgb, _alpha = decode_image(data, limits)
        sent = rgb.shape[:2]
        check_clicks_inside(points, sent)
        mask = decode_mask(mask_data, sent, limits) if mask_data else None
        image, mask, scale = fit_image(rgb, mask, limits.max_image_side)
        return np.ascontiguousarray(image), mask, scale, sent

    @router.post("/v1/embed", responses={200: _EMBED_200, **errors(400, 401, 413, 415, 422, 429, 500, 501, 503, 504)},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": {"type": "object", "required": ["image_b64"], "properties": {
                         "image_b64": {"type": "string"}, "profile": {"type": "string"}}}},
                     "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                         "image": {"type": "string", "format": "binary"}, "profile": {"type": "string"}}}}}}})
    async def embed(request: Request):
        try:
            profile = request.query_params.get("profile")
            if media_type(request) == "multipart/form-data":
                form = await form_data(request)
                upload = form.get("image")
                if upload is None or not hasattr(upload, "read"):
                    raise BadInput("multipart field `image` (a file) is required")
                data = await upload.read()
                profile = form.get("profile") or profile
            else:
                body = await json_object(request, limits.max_json_bytes)
                if not isinstance(body.get("image_b64"), str):
                    raise BadInput("send the image as multipart `image` or JSON `image_b64`")
                data = body["image_b64"]
                profile = body.get("profile") or profile
            image, _, _, _ = await asyncio.to_thread(load_image, data)
            out = await get_segmenter().embed(image, profile)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
            return exception_response(exc)
        payload: bytes = out["payload"]
        encodings = _encodings(payload)
        h, w = out["original_size"]
        meta = {
            "embedding_id": out["embedding_id"],
            "image_size": [h, w],
            "input_size": out["input_size"],
            "profile": out["profile"],
            "shapes": out["shapes"],
            "encodings": encodings,
            "bytes": len(payload),
            "cached": not out["encoded"],
        }
        if "application/json" in request.headers.get("accept", ""):
            b64 = await asyncio.to_thread(lambda: base64.b64encode(payload).decode())  # megabytes
            return JSONResponse({**meta, "payload_b64": b64})
        headers = {
            "X-Embedding-Id": meta["embedding_id"],
            "X-Image-Size": f"{h},{w}",
            "X-Input-Size": str(meta["input_size"]),
            "X-Embedding-Profile": meta["profile"],
            "X-Embedding-Shapes": ";".join(f"{k}={'x'.join(map(str, v))}" for k, v in meta["shapes"].items()),
            "X-Embedding-Encodings": ";".join(f"{k}={v}" for k, v in encodings.items()),
            "X-Embedding-Cached": "1" if meta["cached"] else "0",
        }
        return Response(payload, media_type="application/octet-stream", headers=headers)

    @router.post("/v1/segment", responses={200: _SEGMENT_200, **errors(400, 401, 404, 413, 415, 422, 429, 500, 501, 503, 504)},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": ref(SegmentRequest)}}}})
    async def segment(request: Request):
        try:
            try:
                req = SegmentRequest.model_validate(await json_object(request, limits.max_json_bytes))
            except ValidationError as exc:
                raise BadInput(validation_message(exc)) from None
            if not req.embedding_id and not req.image_b64:
                raise BadInput("send `embedding_id` (from POST /v1/embed) or `image_b64`")
            return await _segment(req)
        except Exception as exc:  # noqa: BLE001
            return exception_response(exc)

    async def _segment(req: SegmentRequest) -> JSONResponse:
        seg = get_segmenter()
        if req.embedding_id and not req.mask_b64:
            try:
                # Coordinates are in the embedding's image_size (as POST /v1/embed reported it).
                result = await seg.segment_cached(req.embedding_id, _prompt(req, 1.0, None))
                return await asyncio.to_thread(_segment_response, result, req)
            except Exception as exc:  # noqa: BLE001
                err = as_stage_error(exc)
                if req.image_b64 is None or err is None or err.code != "embedding_not_found":
                    raise
        if req.image_b64 is None:
            raise BadInput("mask_b64 needs image_b64: send the image with the mask")
        image, mask, scale, sent = await asyncio.to_thread(load_image, req.image_b64, req.mask_b64, req.points)
        # The SAM 3 backend finds this image's embedding in its cache by content, so no re-encoding.
        result = await seg.segment(image, _prompt(req, scale, mask))
        if scale != 1.0:  # the client's coordinates and masks are in the image as sent
            result = await asyncio.to_thread(_rescaled, result, sent)
        return await asyncio.to_thread(_segment_response, result, req)

    def _prompt(req: SegmentRequest, scale: float, mask: np.ndarray | None) -> SegmentPrompt:
        box = Box(*[v * scale for v in req.box]) if req.box is not None else None
        points = [Point(p.x * scale, p.y * scale, p.label) for p in req.points]
        return SegmentPrompt(label=req.label, points=points, box=box, mask=mask)

    async def onnx_graph(request: Request, graph: str) -> Response:
        try:
            async with onnx_lock:
                if graph not in onnx_cache:
                    out = await get_segmenter().click_decoder_onnx(graph)
                    onnx_cache[graph] = {"data": out["data"], "etag": f'"{out["filename"]}"'}
        except Exception as exc:  # noqa: BLE001
            return exception_response(exc)
        cached = onnx_cache[graph]
        # Revalidated on every load (a 304 when unchanged): the page runs the click graph and
        # the photo graph as a pair, and two cached copies of different exports would refuse
        # each other until a fixed max-age ran out.
        headers = {"ETag": cached["etag"], "Cache-Control": "public, no-cache"}
        if request.headers.get("if-none-match") == cached["etag"]:
            return Response(status_code=304, headers=headers)
        return Response(cached["data"], media_type="application/octet-stream", headers=headers)

    @router.get(ONNX_ROUTE, response_class=Response, responses={200: _ONNX_200, 304: {"description": "not modified (If-None-Match)"},
                                       **errors(500, 501, 503, 504)})
    async def click_decoder(request: Request):
        return await onnx_graph(request, "click")

    @router.get(ONNX_PHOTO_ROUTE, response_class=Response,
                responses={200: _ONNX_PHOTO_200, 304: {"description": "not modified (If-None-Match)"}, **errors(500, 501, 503, 504)})
    async def click_decoder_photo(request: Request):
        return await onnx_graph(request, "photo")

    return router


def _rescaled(result, size: tuple[int, int]):
    """Masks back to the size the client sent (nearest neighbour)."""
    from PIL import Image

    def up(mask: np.ndarray) -> np.ndarray:
        img = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
        return np.asarray(img) >= 128

    result.mask = up(result.mask)
    result.instances = [(up(m), s) for m, s in result.instances]
    return result


def _mask_json(mask: np.ndarray) -> dict:
    return {"mask_png_b64": base64.b64encode(png_bytes(mask)).decode(), "area": int(mask.sum())}


def _segment_response(result, req: SegmentRequest) -> JSONResponse:
    """The JSON answer, its masks as PNG (milliseconds each at photo size: called in a worker thread)."""
    h, w = result.mask.shape
    body = {
        "backend": result.backend,
        "embedding_id": result.embedding_id,
        "image_size": [h, w],
        "score": None if result.score is None else round(float(result.score), 4),
        **_mask_json(result.mask),
        "instances": [
            {"score": round(float(s), 4), **_mask_json(m)} for m, s in result.instances[: req.max_instances]
        ],
    }
    return JSONResponse(body)


__all__ = ["build_segment_router", "SegmenterHandleAdapter", "ONNX_ROUTE", "ONNX_PHOTO_ROUTE", "StageError"]
