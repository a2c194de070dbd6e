"""SAM 3D Objects reconstructor: image + mask → geometry frames, appearance frames, final assets.

How it streams. The geometry stage (the sparse-structure flow model) runs one denoising step per
call; at each step to be shown (`base.FrameGate`: every `geometry_every`-th step, at most one
per `min_frame_interval_s`), the clean latent predicted from that step is decoded by the
sparse-structure decoder into 64³ occupancy and rotated by the pose predicted with it into the
viewer's frame (x right, y up, z towards the camera), resampled to `grid_size`. The last
geometry step gives the final shape. The appearance stage (the SLAT flow model) then runs step
by step on the voxels upstream's pipeline would give it; shown steps are decoded by the Gaussian
decoder into one colour per voxel. After the last step the final structured latent is decoded as
upstream's `run()` decodes it: the FlexiCubes mesh with vertex colours and the Gaussians, plus
the pose (rotation, translation, scale). The Reconstruction carries those and the voxel volume
(the mesh baker's fast preview).

Every step runs on one worker thread owned by this backend (one GPU, one request at a time)
and is awaited, so a cancelled request stops at the next step boundary: the step already
running finishes, no other starts, and the request's GPU state is released (tensors dropped,
`torch.cuda.empty_cache()`) on that same thread right after it: on success, error or
cancellation alike. Each request seeds its own torch.Generator; the global RNG is not used.
What was verified where is in docs/sam3d.md.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml

from sam3d_common.errors import BadInput, ModelUnavailable, StageError
from sam3d_common.frames import VoxelFrame
from sam3d_common.settings import Sam3dSettings
from sam3d_common.weights import hub_snapshot

from .base import FrameGate, ReconstructOptions, Reconstruction, StepFrame, shell
from .sam3d_grid import ViewMapping, color_order, map_to_view, view_from_local
from .sam3d_host import settle

log = logging.getLogger(__name__)

HUB_ID = "facebook/sam-3d-objects"
# The hub repo's `checkpoints/` folder; pipeline.yaml names the others, and when it is
# readable the files it names are what is checked.
CHECKPOINT_FILES = (
    "pipeline.yaml",
    "ss_generator.yaml", "ss_generator.ckpt",
    "slat_generator.yaml", "slat_generator.ckpt",
    "ss_decoder.yaml", "ss_decoder.ckpt",
    "slat_decoder_gs.yaml", "slat_decoder_gs.ckpt",
    "slat_decoder_mesh.yaml", "slat_decoder_mesh.ckpt",
)


# ---------------------------------------------------------------- the model adapter's shape

class Sam3dRun(Protocol):
    """One request's state; sam3d_upstream.UpstreamRun is the real one. All calls are blocking
    and made on the backend's worker thread, in this order: prepare, geometry_step ×G (a
    geometry_preview after any of them), start_appearance, appearance_step ×A (likewise
    appearance_preview), and release exactly once at the end, whatever happened."""

    def prepare(self) -> None: ...
    def geometry_step(self) -> None: ...
    # The previews may be pending (sam3d_host): the frame thread settles them.
    def geometry_preview(self): ...  # .occupancy (m,m,m) bool, .rotation 3x3 or None
    def start_appearance(self, occupancy: np.ndarray) -> None: ...
    def appearance_step(self) -> None: ...
    def appearance_preview(self): ...  # .coords (V,3) int local, .colors (V,3) uint8
    def finish(self): ...  # .mesh, .gaussians, .pose (base.MeshData, GaussianData, Pose)
    def release(self) -> None: ...


class Sam3dModel(Protocol):
    def begin(self, image: np.ndarray, mask: np.ndarray, seed: int | None,
              geometry_steps: int, appearance_steps: int, fast: bool = False) -> Sam3dRun: ...


# ---------------------------------------------------------------- startup checks

def required_files(folder: Path) -> list[str]:
    """pipeline.yaml plus every file its *_config_path / *_ckpt_path keys name."""
    try:
        config = yaml.safe_load((folder / "pipeline.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return list(CHECKPOINT_FILES)
    if not isinstance(config, dict):
        return list(CHECKPOINT_FILES)
    from .sam3d_upstream import UNUSED_KEYS

    named = [v for k, v in config.items()
             if isinstance(v, str) and (k.endswith("_config_path") or k.endswith("_ckpt_path"))
             and k not in UNUSED_KEYS]
    return ["pipeline.yaml"] + named


def missing_files(folder: Path) -> list[str]:
    return [name for name in required_files(folder) if not (folder / name).is_file()]


def download_hint(model_id: str) -> str:
    return (f"The weights are gated at hub id {model_id}: request access on its model page, "
            "log in (`hf auth login`, or set HF_TOKEN), then run "
            f"`hf download {model_id} --local-dir /models/sam-3d-objects` and set "
            "reconstructor.sam3d.checkpoint_dir: /models/sam-3d-objects/checkpoints.")


def startup_problems(settings: Sam3dSettings) -> tuple[Path, list[str]]:
    """(checkpoint folder, what is missing): files, the package, CUDA."""
    from . import sam3d_upstream

    if settings.checkpoint_dir:
        folder = Path(settings.checkpoint_dir).expanduser()
        where = f"reconstructor.sam3d.checkpoint_dir {str(folder)!r}"
    else:
        folder = hub_snapshot(settings.model_id) / "checkpoints"
        where = (f"the Hugging Face cache {str(folder)!r} (reconstructor.sam3d.checkpoint_dir "
                 "is not set)")
    problems = []
    if not folder.is_dir():
        problems.append(f"checkpoint folder not found: {where} does not exist")
    else:
        missing = missing_files(folder)
        if missing:
            problems.append(f"checkpoint files missing in {where}: {', '.join(missing)}")
    problems += [p for p in (sam3d_upstream.package_problem(), sam3d_upstream.cuda_problem()) if p]
    return folder, problems


def load_model(settings: Sam3dSettings) -> Sam3dModel:
    folder, problems = startup_problems(settings)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        hint = download_hint(settings.model_id) if any("checkpoint" in p for p in problems) else ""
        raise ModelUnavailable(
            f"SAM 3D Objects (reconstructor.backend: sam3d) cannot start:\n{lines}\n{hint}".rstrip())
    from .sam3d_upstream import UpstreamModel

    model = UpstreamModel(folder, settings)
    if settings.warm_up:
        log.info("SAM 3D Objects warmed up in %.1f s", model.warm_up())
    return model


# ---------------------------------------------------------------- the backend

class Sam3dReconstructor:
    name = "sam3d"

    def __init__(self, settings: Sam3dSettings | None = None, grid_size: int = 64, *,
                 model: Sam3dModel | None = None):
        self.settings = settings or Sam3dSettings()
        self.n = grid_size
        self.model = model if model is not None else load_model(self.settings)
        # One thread: the GPU runs one request's steps in order, and a release queued behind
        # a running step waits for it.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam3d-gpu")
        # Frames are built (resampling to the view grid, encoding) on their own thread while
        # the GPU runs the next step.
        self._frames = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam3d-frames")

    def _gpu(self, fn, *args) -> asyncio.Future:
        """Queue fn on the GPU worker now; the future completes when it has run."""
        return asyncio.wrap_future(self._worker.submit(fn, *args))

    async def _call(self, fn, *args):
        return await self._gpu(fn, *args)

    def _cpu(self, fn, *args) -> asyncio.Future:
        return asyncio.wrap_future(self._frames.submit(fn, *args))

    def steps(self, options: ReconstructOptions) -> tuple[int, int]:
        s = self.settings
        if options.fast:
            default = (s.fast_geometry_steps, s.fast_appearance_steps)
        else:
            default = (s.geometry_steps, s.appearance_steps)
        return (options.geometry_steps or default[0], options.appearance_steps or default[1])

    async def stream(self, image: np.ndarray, mask: np.ndarray, options: ReconstructOptions):
        image = np.asarray(image)
        mask = np.asarray(mask).astype(bool)
        if image.ndim != 3 or image.shape[2] < 3 or mask.shape != image.shape[:2]:
            raise BadInput(f"image {image.shape} and mask {mask.shape} do not match")
        if not mask.any():
            raise BadInput("the mask is empty")
        geometry_steps, appearance_steps = self.steps(options)
        run = await self._call(self.model.begin, image, mask, options.seed,
                               geometry_steps, appearance_steps, options.fast)
        state: dict = {"step": None}  # the step queued on the GPU (for the cancellation below)
        try:
            await self._call(run.prepare)
            async with contextlib.aclosing(self._stage(
                    run, state, "geometry", geometry_steps,
                    FrameGate(options.geometry_every, options.min_frame_interval_s),
                    self._geometry_step, self._geometry_frame)) as frames:
                async for _, frame in frames:
                    yield frame
            final, frame = await state["pending"]  # the last step is always shown
            if not final[0].occupancy.any():
                raise StageError("SAM 3D Objects decoded no voxels for this image and mask")
            yield StepFrame("geometry", geometry_steps, geometry_steps, frame)
            geometry, mapping = final
            view_shell = await self._call(self._start_appearance, run, geometry, mapping)
            order: dict = {}  # the per-run colour gather (sam3d_grid.color_order), built once
            build = functools.partial(self._appearance_frame, geometry.occupancy, mapping, view_shell, order=order)
            async with contextlib.aclosing(self._stage(
                    run, state, "appearance", appearance_steps,
                    FrameGate(options.colors_every, options.min_frame_interval_s),
                    self._appearance_step, build)) as frames:
                async for _, frame in frames:
                    yield frame
            state["step"] = self._gpu(run.finish)  # the final decode overlaps the last frame's build
            colors, frame = await state["pending"]
            yield StepFrame("appearance", appearance_steps, appearance_steps, frame)
            assets = await state["step"]
            yield Reconstruction(occupancy=mapping.occupancy, colors=colors, backend=self.name,
                                 mesh=assets.mesh, gaussians=assets.gaussians, pose=assets.pose)
        finally:
            # Queued behind any step still on the worker; shielded so a second cancellation
            # cannot drop it from the queue.
            step = state["step"]
            if step is not None and not step.done():
                step.add_done_callback(lambda f: f.cancelled() or f.exception())
            await asyncio.shield(self._call(run.release))

    async def _stage(self, run: Sam3dRun, state: dict, stage: str, total: int, show: FrameGate, gpu_step, build):
        """One stage's steps: step k+1 is queued on the GPU before step k's frame is built
        (`build(preview)`, on the frame thread) and sent, so building and sending overlap the
        next step; a cancellation lets at most that one queued step run. Yields (what `build`
        returned first, the StepFrame) for every shown step but the last, whose build is left
        in state["pending"]; state["step"] is the step on the GPU."""
        pending = None
        for k in range(1, total + 1):
            state["step"] = self._gpu(gpu_step, run, show(k, total))
            if pending is not None:
                value, frame = await pending
                yield value, StepFrame(stage, k - 1, total, frame)
            preview = await state["step"]
            pending = None if preview is None else self._cpu(build, preview)
        state["pending"] = pending

    # The GPU worker's functions: a step, and the preview's decode when the step is shown.

    def _geometry_step(self, run: Sam3dRun, show: bool):
        run.geometry_step()
        return run.geometry_preview() if show else None

    def _start_appearance(self, run: Sam3dRun, geometry, mapping: ViewMapping) -> np.ndarray:
        run.start_appearance(geometry.occupancy)
        return shell(mapping.occupancy)

    def _appearance_step(self, run: Sam3dRun, show: bool):
        run.appearance_step()
        return run.appearance_preview() if show else None

    # The frame thread's functions: previews → voxel frames in the view grid.

    def _geometry_frame(self, preview):
        preview = settle(preview)
        mapping = map_to_view(preview.occupancy, view_from_local(preview.rotation), self.n)
        return (preview, mapping), VoxelFrame.from_occupancy(shell(mapping.occupancy))

    def _appearance_frame(self, local_occ: np.ndarray, mapping: ViewMapping,
                          view_shell: np.ndarray, preview, order: dict):
        """Colours by one gather: which preview voxel colours each view cell depends only on
        the run's voxels, so it is worked out at the first frame (`order` caches it)."""
        preview = settle(preview)
        colors = np.zeros(mapping.source.shape + (3,), np.uint8)
        if len(preview.coords):
            if order.get("coords") is not preview.coords:
                order["coords"] = preview.coords
                order["rows"] = color_order(local_occ.shape[0], preview.coords, mapping.source)
            colors[mapping.source >= 0] = preview.colors[order["rows"]]
        return colors, VoxelFrame.from_occupancy(view_shell, colors)
