"""Our side of bench_sam3d_h200.py: `Sam3dReconstructor.stream` + `MeshBakerBackend.bake` on the
benchmark's photo and mask, one named run at a time, each recorded under its name in the
results (timings per stage, first frames, sizes, agreement with the cadence-1 run), and the
settings switched between runs as a replica applies them at start."""
from __future__ import annotations

import asyncio
import json
import time
import traceback
import uuid

from bench.sam3d_state import BenchState
from bench.sam3d_timing import StepTimers

STAGES = ("prepare", "geometry_step", "geometry_preview", "start_appearance", "appearance_step",
          "appearance_preview", "finish")


def observe_runs(upstream_run_cls, timers: StepTimers) -> dict:
    """Patches `upstream_run_cls` (deployments.reconstructor.sam3d_run.UpstreamRun) so that the
    returned dict holds what the latest run saw (its stage-1 occupancy, stage-2 voxel count and
    downsample factor, final latent), and each stage is timed under its name by `timers`."""
    seen: dict = {}
    real_start = upstream_run_cls.start_appearance

    def start_appearance(self, occupancy):
        real_start(self, occupancy)
        seen["local_occupancy"] = occupancy.copy()
        seen["slat_voxels"] = int(self.coords.shape[0])
        seen["downsample_factor"] = self.downsample_factor

    upstream_run_cls.start_appearance = start_appearance
    real_finish = upstream_run_cls.finish

    def finish(self, *a, **k):
        seen["final_latent"] = self.app.x[0].float().clone()
        return real_finish(self, *a, **k)

    upstream_run_cls.finish = finish
    for name in STAGES:
        setattr(upstream_run_cls, name, timers.timed(name, getattr(upstream_run_cls, name)))
    return seen


def iou(a, b):
    if a is None or b is None:
        return None
    return round(float((a & b).sum() / max((a | b).sum(), 1)), 5)


def step_ms(run, name):
    """A run's timer `name` ({n, mean, median} in ms), None where the run or timer is missing."""
    return (run or {}).get("timers_ms", {}).get(name)


class OurRuns:
    """Runs of our stream on one model; `drawn` (from sam3d_noise.record_noise) and `seen`
    (from observe_runs) are cleared or overwritten by each run. Set `reference` to the cadence-1
    run's occupancy for the later runs' `occupancy_iou_vs_cadence1`."""

    def __init__(self, state: BenchState, model, settings, recon, baker, image, mask, drawn: list,
                 seen: dict):
        from deployments.reconstructor.sam3d_upstream import LEVERS_OFF

        self.state, self.model, self.settings = state, model, settings
        self.recon, self.baker, self.image, self.mask = recon, baker, image, mask
        self.drawn, self.seen = drawn, seen
        self.reference = None
        self.final_of: dict = {}
        self.occupancies: dict = {}
        self.latents: dict = {}
        self.lever_keys = LEVERS_OFF + ("compile_mode",)  # what needs the generators re-configured

    async def consume(self, options):
        from deployments.reconstructor.base import Reconstruction, StepFrame

        t = time.perf_counter()
        frames, final = [], None
        async for item in self.recon.stream(self.image, self.mask, options):
            if isinstance(item, StepFrame):
                frames.append((item.stage, item.step, time.perf_counter() - t))
            elif isinstance(item, Reconstruction):
                final = item
        return frames, final, time.perf_counter() - t

    def bake_threads(self, final) -> None:
        """The decoded bake with its three jobs on threads (the default) and one after another."""
        from deployments.mesh_baker.bake import BakeOptions, MeshBakerBackend
        from sam3d_common.settings import MeshBakerSettings

        if final is None:
            return
        out = {}
        for n in (1, MeshBakerBackend.bake_threads, 1, MeshBakerBackend.bake_threads):
            b = MeshBakerBackend(MeshBakerSettings(), self.baker.store)
            b.bake_threads = n
            t = time.perf_counter()
            b.bake(final, uuid.uuid4().hex, BakeOptions())
            out.setdefault(f"threads_{n}_s", []).append(round(time.perf_counter() - t, 3))
        self.state.results["bake_threads"] = out
        self.state.log("bake threads", out)
        self.state.save()

    def run(self, tag, every, fast=False, steps=None, frame_interval=0.0):
        """One request streamed at cadence `every` and baked, recorded as results[tag] and
        returned; None if it failed (the error is recorded) or the deadline has passed."""
        from deployments.mesh_baker.bake import BakeOptions
        from deployments.reconstructor.base import ReconstructOptions
        from deployments.reconstructor.sam3d_graphs import dense_trunk, graphed_trunk

        state, timers, R, seen = self.state, self.state.timers, self.state.results, self.seen
        p = self.model.pipeline
        if state.past_deadline():
            R[tag] = {"skipped": "deadline"}
            return None
        timers.clear()
        self.drawn.clear()
        timers.reset_peak()
        trunk = graphed_trunk(p.models["ss_generator"].reverse_fn.backbone)
        replays = trunk.replays if trunk is not None else 0
        app_trunk = dense_trunk(p.models["slat_generator"].reverse_fn.backbone)
        app_counts = (app_trunk.replays, app_trunk.captures) if app_trunk is not None else None
        options = ReconstructOptions(seed=1234, geometry_every=every, colors_every=every, fast=fast,
                                     geometry_steps=steps, appearance_steps=steps,
                                     min_frame_interval_s=frame_interval)
        try:
            frames, final, total = asyncio.run(self.consume(options))
        except Exception as exc:  # record and go on: one GPU run should give every figure it can
            R[tag] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            state.log(tag, "FAILED", R[tag]["traceback"])
            state.save()
            return None
        timers.collect_spans()
        t = time.perf_counter()
        baked = self.baker.bake(final, uuid.uuid4().hex, BakeOptions())
        bake_s = time.perf_counter() - t
        first = {s: next((f[2] for f in frames if f[0] == s), None) for s in ("geometry", "appearance")}
        r = {"cadence": every, "fast": fast, "frames": len(frames), "stream_s": round(total, 3),
             "first_frame_s": round(first["geometry"], 3),
             "first_appearance_frame_s": round(first["appearance"], 3) if first["appearance"] else None,
             "bake_s": round(bake_s, 3), "image_to_glb_s": round(total + bake_s, 3),
             "slat_voxels": seen.get("slat_voxels"), "mesh_faces_decoded": baked.model["faces_full"],
             "mesh_faces_glb": baked.model["faces"], "splat_gaussians": baked.model["gaussians"],
             "artifacts_bytes": baked.artifacts, "peak_gpu_gib": timers.peak_gib(),
             "occupancy_iou_vs_cadence1": iou(seen.get("local_occupancy"), self.reference),
             "compiled": bool(self.model.settings.compile_geometry and self.model.compiled_blocks),
             "geometry_graph_replays": (trunk.replays - replays) if trunk is not None else None,
             "appearance_graph_replays_captures": None if app_counts is None else [
                 app_trunk.replays - app_counts[0], app_trunk.captures - app_counts[1]],
             "timers_ms": {k: timers.ms(k) for k in sorted(timers.times)}}
        self.occupancies[tag] = seen.get("local_occupancy")
        latent, ref = seen.get("final_latent"), self.latents.get("ours_cadence1")
        if latent is not None:
            self.latents.setdefault(tag, latent)
            if ref is not None and ref.shape == latent.shape:
                r["final_latent_rel_error_vs_cadence1"] = round(float((latent - ref).norm() / ref.norm()), 5)
        self.final_of[tag] = final
        R[tag] = r
        state.log(tag, json.dumps({k: v for k, v in r.items() if k != "timers_ms"}))
        state.save()
        return r

    def with_settings(self, **update) -> None:
        """Settings for the next runs, applied as UpstreamModel applies them at start, then the
        replica's warm-up (compiles, graph captures), so that neither is counted in the run."""
        from deployments.reconstructor.sam3d_levers import apply_speed_settings

        model, lever_keys = self.model, self.lever_keys
        before = model.settings
        model.settings = self.settings.model_copy(update=update)
        s = model.settings
        if any(getattr(before, k) != getattr(s, k) for k in lever_keys):
            model.compiled_blocks = apply_speed_settings(model.pipeline.models, s, self.state.cuda)
            if s.warm_up:
                self.state.log("re-warm-up", self.state.results.setdefault("re_warm_up_s", {}).setdefault(
                    "/".join(f"{k}={getattr(s, k)}" for k in lever_keys), round(model.warm_up(), 2)))
