"""One request through the graph, as an async generator of protocol events.

The pipeline talks to the stages through `StageClients`, so the same code runs over
Ray Serve DeploymentHandles (serve_app.handles) and over in-process backends (tests).
Voxel frames travel inside events under the private key `_frame` (a VoxelFrame); the
stream writer encodes them for the wire in the request's encoding.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

import numpy as np

from sam3d_common.errors import BadInput
from deployments.mesh_baker.bake import BakeOptions
from deployments.reconstructor.base import Reconstruction, ReconstructOptions, StepFrame
from deployments.segmenter.base import SegmentPrompt, SegmentResult
from sam3d_common import metrics
from serve_app.inputs import at_size, png_bytes
from serve_app.protocol import Encoding, make_event
from serve_app.time_limits import QueueNotice, timed_stream, within
from serve_app.waiting import LINE
from sam3d_common.settings import TimeoutSettings

log = logging.getLogger("sam3d.pipeline")

# Share of overall progress per stage; the text route adds the first two.
WEIGHTS = {
    "request": 0.0, "prompt_enhancer": 0.02, "image_generator": 0.13, "segmenter": 0.08,
    "queue": 0.0, "geometry": 0.4, "appearance": 0.27, "mesh_baker": 0.08, "store": 0.02,
}


@dataclass
class Job:
    request_id: str
    prompt: str | None
    image: np.ndarray | None
    seg_prompt: SegmentPrompt
    options: ReconstructOptions  # its seed is left unset: the reconstructor gets `seed` below
    encoding: Encoding = "compact"
    seed: int | None = None  # the request's seed, for every stage that samples (generator, reconstructor)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    bake: BakeOptions = field(default_factory=BakeOptions)
    # The user's mask (seg_prompt.mask) is the object: the segmenter stage is skipped.
    mask_as_given: bool = False
    # (width, height) of the photo as sent; per-pixel artifacts (mask.png) come back at it.
    input_size: tuple[int, int] | None = None
    # The stage running now (as in sam3d_stage_seconds), so a failure is counted against it.
    stage: str = "request"


class StageClients(Protocol):
    async def enhance(self, text: str): ...
    async def generate_image(self, prompt: str, seed: int | None) -> np.ndarray: ...
    async def segment(self, image: np.ndarray, prompt: SegmentPrompt): ...
    def reconstruct(self, image: np.ndarray, mask: np.ndarray,
                    options: ReconstructOptions) -> AsyncIterator: ...
    async def bake(self, recon: Reconstruction, artifact_id: str, options: BakeOptions): ...
    async def bake_texture(self, recon: Reconstruction, artifact_id: str, options: BakeOptions): ...
    async def put_artifact(self, artifact_id: str, name: str, data: bytes) -> int: ...


class Progress:
    """Stamps request_id, seq, t and a never-decreasing overall progress on each event."""

    def __init__(self, request_id: str, text_route: bool):
        self.request_id = request_id
        self.t0 = time.monotonic()
        self.seq = 0
        self.value = 0.0
        stages = [s for s in WEIGHTS if text_route or s not in ("prompt_enhancer", "image_generator")]
        total = sum(WEIGHTS[s] for s in stages)
        self.start, acc = {}, 0.0
        for s in stages:
            self.start[s] = acc / total
            acc += WEIGHTS[s]
        self.share = {s: WEIGHTS[s] / total for s in stages}

    def stamp(self, event: dict, done_fraction: float | None = None) -> dict:
        stage = event["stage"]
        if done_fraction is None:
            total = event.get("total_steps") or 0
            done_fraction = event["step"] / total if total else 0.0
        if stage in self.start:
            self.value = max(self.value, self.start[stage] + self.share[stage] * done_fraction)
        if event["type"] == "complete":
            self.value = 1.0
        event.update(request_id=self.request_id, seq=self.seq, progress=round(self.value, 4),
                     t=round(time.monotonic() - self.t0, 4))
        self.seq += 1
        return event


async def run_pipeline(job: Job, clients: StageClients) -> AsyncIterator[dict]:
    """Yield the request's events in protocol order. Stage errors propagate as exceptions."""
    text_route = job.image is None
    p = Progress(job.request_id, text_route)
    yield p.stamp(make_event("loading", stage="request", message="accepted"))
    image, seg_prompt = job.image, job.seg_prompt
    timings: dict[str, float] = {}
    to = job.timeouts

    if text_route:
        t = time.monotonic()
        job.stage = "prompt_enhancer"
        yield p.stamp(make_event("loading", stage="prompt_enhancer", message="enhancing the prompt"))
        enhanced = await within(clients.enhance(job.prompt), to.prompt_enhancer_s, "prompt enhancer")
        timings["prompt_enhancer"] = time.monotonic() - t
        if not seg_prompt.label:
            seg_prompt.label = enhanced.segmentation_label
        yield p.stamp(make_event("loading", stage="image_generator", message=enhanced.image_prompt,
                                 segmentation_label=seg_prompt.label))
        t = time.monotonic()
        job.stage = "image_generator"
        image = await within(clients.generate_image(enhanced.image_prompt, job.seed),
                             to.image_generator_s, "image generator")
        timings["image_generator"] = time.monotonic() - t

    t = time.monotonic()
    job.stage = "segmenter"
    yield p.stamp(make_event("loading", stage="segmenter", message="finding the object",
                             image_width=int(image.shape[1]), image_height=int(image.shape[0])))
    if job.mask_as_given and seg_prompt.mask is not None:
        seg = SegmentResult(mask=seg_prompt.mask, score=None, backend="user_mask")
        found = "using the given mask"
    else:
        seg = await within(clients.segment(image, seg_prompt), to.segmenter_s, "segmenter")
        found = "object found"
    mask = np.asarray(seg.mask, dtype=bool)
    if mask.shape != image.shape[:2] or not mask.any():
        if job.mask_as_given:
            raise BadInput("the given mask has no pixel left once the photo is scaled to its working size")
        raise BadInput("segmentation returned no object; add a click or a box")
    mask_png = await asyncio.to_thread(png_bytes, at_size(mask, job.input_size))
    await clients.put_artifact(job.request_id, "mask.png", mask_png)
    timings["segmenter"] = time.monotonic() - t
    extra = {} if seg.score is None else {"score": round(float(seg.score), 4)}
    yield p.stamp(make_event("loading", stage="segmenter", step=1, total_steps=1,
                             message=found, mask_fraction=round(float(mask.mean()), 4),
                             segmenter=seg.backend, mask_url=f"/v1/artifacts/{job.request_id}/mask.png",
                             **extra))

    t = time.monotonic()
    recon = None
    job.stage = "reconstructor"
    steps = metrics.StepMeter()
    options = dataclasses.replace(job.options, seed=job.seed)
    took = False
    async for item in timed_stream(clients.reconstruct(image, mask, options), to.queue_s, to.step_s,
                                   LINE, to.queue_notice_s):
        if isinstance(item, QueueNotice):
            yield p.stamp(make_event("loading", stage="queue", message=f"waiting for a GPU: number "
                                     f"{item.position} in line", queue_position=item.position,
                                     queue_length=item.waiting))
            continue
        if not took:  # the reconstructor's first item: a replica runs the request from here
            took = True
            yield p.stamp(make_event("loading", stage="queue", step=1, total_steps=1, queue_position=0,
                                     message=f"a GPU took the request after {time.monotonic() - t:.1f} s"))
        if isinstance(item, StepFrame):
            steps.frame(item.stage, item.step, item.total_steps)
            ev = make_event(item.stage, stage=item.stage, step=item.step, total_steps=item.total_steps)
            ev["_frame"] = item.frame
            yield p.stamp(ev)
        elif isinstance(item, Reconstruction):
            recon = item
    if recon is None:
        raise RuntimeError("the reconstructor ended without a final volume")
    timings["reconstructor"] = time.monotonic() - t

    t = time.monotonic()
    job.stage = "mesh_baker"
    yield p.stamp(make_event("loading", stage="mesh_baker", message="meshing"))
    baked = await within(clients.bake(recon, job.request_id, job.bake), to.mesh_baker_s, "mesh baker")
    timings["mesh_baker"] = time.monotonic() - t
    yield p.stamp(make_event("mesh_preview", stage="mesh_baker", step=1, total_steps=1, **baked.preview))
    base = f"/v1/artifacts/{job.request_id}"
    yield p.stamp(make_event("glb_ready", stage="store", step=1, total_steps=1, artifact="model.glb",
                             url=f"{base}/model.glb", size_bytes=baked.artifacts["model.glb"]))
    artifacts = {name: {"url": f"{base}/{name}", "size_bytes": size} for name, size in baked.artifacts.items()}
    if job.bake.texture and recon.mesh is not None:
        # The reconstructor has returned: the GPU is already free for the next request.
        t = time.monotonic()
        yield p.stamp(make_event("loading", stage="store", message="baking the texture"))
        try:
            size = await within(clients.bake_texture(recon, job.request_id, job.bake),
                                to.mesh_baker_s, "texture baker")
        except Exception:  # an optional extra: its failure must not lose the finished artifacts
            log.exception("request %s: texture bake failed", job.request_id)
            size = None
            yield p.stamp(make_event("loading", stage="store", message="the texture bake failed; "
                                     "the other artifacts are complete"))
        timings["texture_baker"] = time.monotonic() - t
        if size is not None:
            name = "model_textured.glb"
            artifacts[name] = {"url": f"{base}/{name}", "size_bytes": size}
            yield p.stamp(make_event("texture_ready", stage="store", step=1, total_steps=1,
                                     artifact=name, url=f"{base}/{name}", size_bytes=size,
                                     texture_size=job.bake.texture_size))
    extra = {"pose": recon.pose.as_dict()} if recon.pose is not None else {}
    if baked.model:
        extra["model"] = baked.model
    yield p.stamp(make_event(
        "complete", stage="store", step=1, total_steps=1, artifacts=artifacts,
        model_glb_url=f"{base}/model.glb", gaussian_splat_url=f"{base}/splat.ply",
        mask_url=f"{base}/mask.png", timings={k: round(v, 4) for k, v in timings.items()},
        **extra,
    ), done_fraction=1.0)
