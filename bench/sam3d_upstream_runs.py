"""Upstream's own `InferencePipeline.run()` (mesh + Gaussians decoded) in bench_sam3d_h200.py:
once before any of our code (--upstream-first), and twice fed the noise of our eager run, to
compare stage-1 occupancy and stage-2 voxel count with ours."""
from __future__ import annotations

import functools
import json
import time
import traceback

import numpy as np

from bench.sam3d_noise import clone, replay_noise
from bench.sam3d_ours import iou
from bench.sam3d_state import BenchState

GENERATORS = ("ss_generator", "slat_generator")


def run_upstream(p, image, mask, steps: int) -> dict:
    """Upstream's run() as the comparison calls it: the benchmark's seed, no post-processing."""
    return p.run(image, mask.astype(np.uint8) * 255, seed=1234, stage1_only=False,
                 with_mesh_postprocess=False, with_texture_baking=False,
                 with_layout_postprocess=False, use_vertex_color=True,
                 stage1_inference_steps=steps, stage2_inference_steps=steps,
                 decode_formats=["mesh", "gaussian"])


def upstream_first(state: BenchState, p, settings, image, mask) -> None:
    """Upstream's run() before any of our code has run on the GPU (no compiled block called,
    no graph captured), every lever off; then the settings' levers back on."""
    from deployments.reconstructor.sam3d_levers import apply_speed_settings
    from deployments.reconstructor.sam3d_upstream import LEVERS_OFF

    R = state.results
    apply_speed_settings(p.models, settings.model_copy(update=dict.fromkeys(LEVERS_OFF, False)), state.cuda)
    state.timers.sync()
    t = time.perf_counter()
    try:
        out = run_upstream(p, image, mask, state.args.steps)
        state.timers.sync()
        R["upstream_first"] = {"run_s": round(time.perf_counter() - t, 3),
                               "slat_voxels": int(out["coords"].shape[0])}
    except Exception as exc:  # noqa: BLE001 - recorded; the rest of the bench still runs
        R["upstream_first"] = {"error": f"{type(exc).__name__}: {exc}",
                               "traceback": traceback.format_exc()[-1500:]}
    state.log("upstream_first", json.dumps(R["upstream_first"])[:600])
    state.save()
    apply_speed_settings(p.models, settings, state.cuda)


def upstream_runs(state: BenchState, p, image, mask, eager_noise: list, eager_slat, eager_occ,
                  default_occ) -> dict:
    """upstream_run_1st and upstream_run_2nd: upstream's run() from the noise our eager run
    (every lever off) drew, compared with that run (`eager_slat`, `eager_occ`) and with our
    defaults' occupancy (`default_occ`). Returns the last one that ran ({} if none)."""
    R, timers = state.results, state.timers
    up = {}
    for tag in ("upstream_run_1st", "upstream_run_2nd"):
        if not eager_noise or state.past_deadline():
            R[tag] = {"skipped": "deadline"}
            continue
        queue = [clone(n) for n in eager_noise]
        redrawn = []
        for gen in GENERATORS:
            p.models[gen]._generate_noise = functools.partial(
                replay_noise, p.models[gen], queue, redrawn)
        timers.reset_peak()
        timers.sync()
        t = time.perf_counter()
        try:
            out = run_upstream(p, image, mask, state.args.steps)
        except Exception as exc:
            R[tag] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            state.log(tag, "FAILED", R[tag]["traceback"])
            state.save()
            continue
        finally:
            for gen in GENERATORS:
                p.models[gen].__dict__.pop("_generate_noise", None)
        timers.sync()
        run_s = time.perf_counter() - t
        t = time.perf_counter()
        glb = out["glb"].export(file_type="glb") if out.get("glb") is not None else b""
        up_occ = np.zeros((64,) * 3, bool)
        c = out["coords_original"][:, 1:].cpu().numpy()
        up_occ[c[:, 0], c[:, 1], c[:, 2]] = True
        up = {"run_s": round(run_s, 3), "image_to_glb_s": round(run_s + time.perf_counter() - t, 3),
              "glb_bytes": len(glb), "stage1_voxels": int(up_occ.sum()),
              "slat_voxels": int(out["coords"].shape[0]),
              "mesh_faces": int(out["mesh"][0].faces.shape[0]) if out.get("mesh") else None,
              "gaussians": int(out["gs"].get_xyz.shape[0]) if out.get("gs") is not None else None,
              "occupancy_iou_vs_ours_eager": iou(up_occ, eager_occ),
              "occupancy_iou_vs_ours_default": iou(up_occ, default_occ),
              "same_slat_voxels_as_ours_eager": int(out["coords"].shape[0]) == eager_slat,
              "noise_left_unused": len(queue), "noise_redrawn_for": redrawn,
              "peak_gpu_gib": timers.peak_gib()}
        R[tag] = up
        state.log(tag, json.dumps(up))
        state.save()
    return up
