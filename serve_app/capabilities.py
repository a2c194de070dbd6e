"""GET /v1/capabilities: what this deployment can do, so the viewer picks its paths without trial.

The answer comes from the validated settings and one `describe` of the image generator (cached by
the service), never from probing routes:

    segmenter.backend           "sam3" or "grabcut"
    segmenter.browser_decoding  true when /v1/embed + the ONNX click decoder exist (SAM 3), so the page
                                decodes clicks itself; false: it asks POST /v1/segment per click
    segmenter.routes            the segment routes this ingress serves
    text_to_3d.available        whether a text prompt can be turned into a photo, with the reason if not
"""
from __future__ import annotations

from fastapi import APIRouter

from serve_app.openapi import errors

from deployments.image_generator.unavailable import MESSAGE as NO_GENERATOR
from serve_app.protocol import ENCODINGS, PROTOCOL_VERSION
from serve_app.routes_segment import ONNX_PHOTO_ROUTE, ONNX_ROUTE
from serve_app.service import GenerateService


def build_capabilities_router(service: GenerateService, segment_routes: bool) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/capabilities", summary="Backends and routes this deployment offers (for the viewer)",
                responses=errors(401, 429))
    async def capabilities() -> dict:
        settings = service.settings
        sam3 = segment_routes and settings.segmenter.backend == "sam3"
        routes = ["/v1/segment", "/v1/embed", ONNX_ROUTE, ONNX_PHOTO_ROUTE] if sam3 else ["/v1/segment"] if segment_routes else []
        try:
            text = await service.text_route_available()
        except Exception:  # noqa: BLE001 - a generator that cannot describe itself is not available
            text = False
        return {
            "protocol_version": PROTOCOL_VERSION,
            "encodings": list(ENCODINGS),
            "segmenter": {"backend": settings.segmenter.backend, "browser_decoding": sam3,
                          "click_decoder_url": ONNX_ROUTE if sam3 else None, "routes": routes},
            "reconstructor": {"backend": settings.reconstructor.backend},
            "text_to_3d": {"available": text, "reason": None if text else NO_GENERATOR},
            "limits": {"max_upload_bytes": settings.limits.max_upload_bytes,
                       "max_image_side": settings.limits.max_image_side},
        }

    return router
