"""Request handling shared by the HTTP routes and the Python DeploymentHandle API."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import numpy as np

from sam3d_common.errors import BadInput, NotConfigured, StageError, as_stage_error
from deployments.image_generator.unavailable import MESSAGE as NO_GENERATOR
from deployments.mesh_baker.bake import BakeOptions
from deployments.reconstructor.base import ReconstructOptions
from deployments.segmenter.base import Box, Point, SegmentPrompt, check_clicks_inside
from sam3d_common import metrics
from serve_app import inputs
from serve_app.http_util import RETRY_AFTER_S
from serve_app.pipeline import Job, StageClients, run_pipeline
from serve_app.protocol import FRAME_EVENTS, make_event
from serve_app.protocol.events import RECONSTRUCTOR_STAGES
from serve_app.schemas import GenerateRequest
from serve_app.time_limits import until_deadline
from sam3d_common.settings import AppSettings
from sam3d_common.store import ArtifactStore, Retention, new_artifact_id

log = logging.getLogger("sam3d.service")


class GenerateService:
    def __init__(self, settings: AppSettings, clients: StageClients, store: ArtifactStore):
        self.settings = settings
        self.clients = clients
        self.store = store
        keep = settings.store
        self.retention = Retention(store, keep.ttl_s, keep.max_total_bytes, keep.sweep_every_s)
        self._generator_available: bool | None = None

    async def text_route_available(self) -> bool:
        if self._generator_available is None:
            info = await self.clients.describe_image_generator()
            self._generator_available = bool(info.get("available"))
        return self._generator_available

    async def prepare(self, req: GenerateRequest, image_bytes: bytes | None = None,
                      mask_bytes: list[bytes] | None = None,
                      image_array: np.ndarray | None = None) -> Job:
        """Validate everything that can be validated before the stream starts (→ 4xx)."""
        limits = self.settings.limits
        given = sum(x is not None for x in (image_bytes, req.image_b64, req.image_url, image_array))
        if given > 1:
            raise BadInput("give one image: an upload, image_b64, image_url or an array")
        image = alpha = None
        if image_array is not None:
            image = _check_array(image_array)
            inputs.check_size(image, limits)
        elif image_bytes is not None:
            image, alpha = inputs.decode_image(image_bytes, limits)
        elif req.image_b64 is not None:
            image, alpha = inputs.decode_image(inputs.b64_bytes(req.image_b64, "image_b64"), limits)
        elif req.image_url is not None:
            image, alpha = inputs.decode_image(await inputs.fetch_url(req.image_url, limits), limits)

        if image is None:
            if not (req.prompt and req.prompt.strip()):
                raise BadInput("give a text `prompt` or an image")
            if mask_bytes or req.mask_b64 or req.point_prompts or req.box_prompts:
                raise BadInput("masks, clicks and boxes refer to a photo; send the photo too")
            if not await self.text_route_available():
                raise NotConfigured(NO_GENERATOR)
        else:
            if req.prompt and not req.segmentation_label:
                # With a photo, free text names what to cut out.
                req.segmentation_label = req.prompt[:100]

        mask = alpha
        raw_masks = list(mask_bytes or []) + [inputs.b64_bytes(m, "mask_b64") for m in req.mask_b64]
        for i, data in enumerate(raw_masks):
            m = inputs.decode_mask(data, image.shape[:2], limits, what=f"mask {i + 1}")
            mask = m if mask is None else (mask | m)
        scale, input_size = 1.0, None
        if image is not None:
            h, w = image.shape[:2]
            input_size = (w, h)
            check_clicks_inside(req.point_prompts, (h, w))
            for b in req.box_prompts:
                if b.x_min >= w or b.y_min >= h:
                    raise BadInput(f"box starts outside the {w}x{h} image")
            image, mask, scale = inputs.fit_image(image, mask, limits.max_image_side)
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
                                     appearance_steps=req.appearance_steps)
        return Job(request_id=new_artifact_id(), prompt=req.prompt, image=image,
                   seg_prompt=seg_prompt, options=options, encoding=req.encoding, seed=req.seed,
                   timeouts=self.settings.timeouts,
                   bake=BakeOptions(face_budget=req.face_budget, texture=req.texture,
                                     texture_size=req.texture_size), input_size=input_size,
                   mask_as_given=mask is not None and not (req.refine_mask or req.point_prompts
                                                           or req.box_prompts))

    async def start(self, job: Job, deadline_s: float | None = None) -> AsyncIterator[dict]:
        """Run until the reconstructor has accepted the request (stream.answer_at "accepted": its
        first `queue` event, i.e. a replica took it or it holds a place in the queue) or until the
        first event ("first_event"), and raise what fails before, so a full queue is a real HTTP
        status.

        After that, failures, including the whole-request deadline, become an `error` event:
        the stream never just stops.
        """
        deadline = time.monotonic() + (deadline_s or self.settings.timeouts.request_s)
        self.retention.tick()
        # Under Serve's JSON logs this line also carries Serve's request_id: it links the two ids.
        log.info("stream %s starting", job.request_id)
        agen = run_pipeline(job, self.clients)
        held: list[dict] = []
        try:
            async for ev in until_deadline(agen, deadline):
                held.append(ev)
                if self.settings.stream.answer_at == "first_event" or accepted(ev):
                    break
        except BaseException as exc:
            await agen.aclose()
            self._discard(job.request_id)
            if isinstance(exc, Exception):  # not a cancellation (client gone)
                _count_error(exc, job.stage)
            raise

        async def events():
            seq = held[-1]["seq"] if held else -1
            complete = False
            try:
                # The held events inside the try too: a client gone after these still closes agen.
                async for ev in _chain(held, until_deadline(agen, deadline)):
                    seq = ev["seq"]
                    complete = ev["type"] == "complete"
                    metrics.stream_event(ev)
                    yield ev
            except Exception as exc:  # noqa: BLE001 - every failure must reach the client
                ev = error_event(exc, job.request_id, seq + 1)
                metrics.stream_event(ev)
                metrics.stage_error(job.stage, ev["code"])
                yield ev
            finally:
                await agen.aclose()
                if not complete:  # failed, or the client left: nothing of it stays served
                    self._discard(job.request_id)

        return events()

    def _discard(self, request_id: str) -> None:
        """Delete a request's artifacts in a thread, without awaiting (this may run while the
        stream is being cancelled)."""
        asyncio.get_running_loop().run_in_executor(None, self.store.delete, request_id)


def accepted(ev: dict) -> bool:
    """The event shows the reconstructor took the request or queued it: past a full-queue refusal."""
    return ev["type"] in FRAME_EVENTS or ev["stage"] in RECONSTRUCTOR_STAGES


async def _chain(first: list[dict], rest: AsyncIterator[dict]) -> AsyncIterator[dict]:
    for ev in first:
        yield ev
    async for ev in rest:
        yield ev


def _count_error(exc: BaseException, stage: str) -> None:
    """A failure before the stream's headers: counted by the stage it hit and its code; bad
    input found by a stage counts too (code bad_input)."""
    err = as_stage_error(exc)
    metrics.stage_error(stage, err.code if err is not None else "internal")


def error_event(exc: BaseException, request_id: str, seq: int) -> dict:
    err = as_stage_error(exc)
    if err is None:
        log.exception("request %s failed", request_id, exc_info=exc)
        code, message = "internal", f"internal error; quote request id {request_id} to the operator"
    else:
        code, message = err.code, err.message
    ev = make_event("error", stage="request", code=code, message=message)
    if err is not None and err.status == 503:  # the same request may succeed shortly
        ev["retry_after_s"] = RETRY_AFTER_S
    ev.update(request_id=request_id, seq=seq, progress=0.0, t=0.0)
    return ev


def _check_array(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise BadInput("image array must be HxWx3 uint8 RGB")
    return np.ascontiguousarray(a[:, :, :3])


__all__ = ["GenerateService", "error_event", "StageError"]
