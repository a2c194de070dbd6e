"""The prepare step of POST /v1/generate and POST /v1/jobs (and of the Python API): a
validated GenerateRequest plus its image and mask bytes → a Job the pipeline can run.

Everything that can be checked before a stream starts is checked here, so it answers with a
4xx instead of an `error` event: one image source, the image and masks decoded and within the
limits, clicks and boxes inside the photo as sent, a text prompt only where an image
generator is configured. The photo is scaled to its working size once, prompts with it.
Decoding and scaling run in worker threads: they take tens of ms for a large photo, and the
event loop that calls this relays every other stream of the replica.
"""
from __future__ import annotations

import asyncio

import numpy as np

from sam3d_common.errors import BadInput, NotConfigured
from sam3d_common.settings import StreamSettings
from deployments.image_generator.unavailable import MESSAGE as NO_GENERATOR
from deployments.mesh_baker.bake import BakeOptions
from deployments.reconstructor.base import ReconstructOptions
from deployments.segmenter.base import Box, Point, SegmentPrompt, check_clicks_inside
from serve_app import inputs
from serve_app.pipeline import Job
from serve_app.schemas import GenerateRequest
from serve_app.service import GenerateService
from sam3d_common.store import new_artifact_id


async def prepare_job(service: GenerateService, req: GenerateRequest, image_bytes: bytes | None = None,
                      mask_bytes: list[bytes] | None = None, image_array: np.ndarray | None = None) -> Job:
    """The request's Job; raises BadInput or NotConfigured (→ 4xx/501) for what cannot run."""
    limits = service.settings.limits
    given = sum(x is not None for x in (image_bytes, req.image_b64, req.image_url, image_array))
    if given > 1:
        raise BadInput("give one image: an upload, image_b64, image_url or an array")
    image = alpha = None
    if image_array is not None:
        image = _check_array(image_array)
        inputs.check_size(image, limits)
    elif image_bytes is not None:
        image, alpha = await asyncio.to_thread(inputs.decode_image, image_bytes, limits)
    elif req.image_b64 is not None:
        image, alpha = await asyncio.to_thread(
            lambda: inputs.decode_image(inputs.b64_bytes(req.image_b64, "image_b64"), limits))
    elif req.image_url is not None:
        fetched = await inputs.fetch_url(req.image_url, limits)
        image, alpha = await asyncio.to_thread(inputs.decode_image, fetched, limits)

    if image is None:
        if not (req.prompt and req.prompt.strip()):
            raise BadInput("give a text `prompt` or an image")
        if mask_bytes or req.mask_b64 or req.point_prompts or req.box_prompts:
            raise BadInput("masks, clicks and boxes refer to a photo; send the photo too")
        if not await service.text_route_available():
            raise NotConfigured(NO_GENERATOR)
    else:
        if req.prompt and not req.segmentation_label:
            # With a photo, free text names what to cut out.
            req.segmentation_label = req.prompt[:100]

    # A mask sent on its own (a file or mask_b64: what the viewer's person saw) is the mask; the
    # photo's alpha channel is the mask only when none is sent.
    mask = None
    if mask_bytes or req.mask_b64:
        mask = await asyncio.to_thread(_decode_masks, list(mask_bytes or []), req.mask_b64, image.shape[:2], limits)
    if mask is None:
        mask = alpha
    scale, input_size = 1.0, None
    if image is not None:
        h, w = image.shape[:2]
        input_size = (w, h)
        check_clicks_inside(req.point_prompts, (h, w))
        for b in req.box_prompts:
            if b.x_min >= w or b.y_min >= h:
                raise BadInput(f"box starts outside the {w}x{h} image")
        image, mask, scale = await asyncio.to_thread(inputs.fit_image, image, mask, limits.max_image_side)
    seg_prompt = SegmentPrompt(
        label=req.segmentation_label,
        points=[Point(p.x * scale, p.y * scale, p.label) for p in req.point_prompts],
        box=(Box(*(v * scale for v in (b.x_min, b.y_min, b.x_max, b.y_max)))
             if (b := (req.box_prompts[0] if req.box_prompts else None)) else None),
        mask=mask,
    )
    options = ReconstructOptions(geometry_every=req.stream_geometry_every,
                                 colors_every=req.stream_colors_every, fast=req.fast,
                                 geometry_steps=req.geometry_steps,
                                 appearance_steps=req.appearance_steps,
                                 min_frame_interval_s=frame_interval(service.settings.stream))
    return Job(request_id=new_artifact_id(), prompt=req.prompt, image=image,
               seg_prompt=seg_prompt, options=options, encoding=req.encoding, seed=req.seed,
               timeouts=service.settings.timeouts,
               bake=BakeOptions(face_budget=req.face_budget, texture=req.texture,
                                texture_size=req.texture_size), input_size=input_size,
               mask_as_given=mask is not None and not (req.refine_mask or req.point_prompts
                                                       or req.box_prompts))


def frame_interval(stream: StreamSettings) -> float:
    """The reconstructor's `min_frame_interval_s` for a stream capped at max_frames_per_s: a
    frame it would coalesce is never built (on a GPU, never decoded). A fifth under the
    pacer's gap, so that steps paced at exactly that gap (the embedded default's min_step_s
    at 10 frames/s) all still show, and the pacer keeps the exact cap."""
    return 0.8 / stream.max_frames_per_s


def _decode_masks(raw: list[bytes], b64: list[str], shape: tuple[int, int], limits) -> np.ndarray:
    """The masks sent (files, then mask_b64 entries), each the image's size, as one: their union."""
    mask = None
    for i, data in enumerate(raw + [inputs.b64_bytes(m, "mask_b64") for m in b64]):
        m = inputs.decode_mask(data, shape, limits, what=f"mask {i + 1}")
        mask = m if mask is None else (mask | m)
    return mask


def _check_array(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise BadInput("image array must be HxWx3 uint8 RGB")
    return np.ascontiguousarray(a[:, :, :3])
