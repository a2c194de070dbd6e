"""SAM 3D Objects on one GPU at full size with RANDOM weights: our streaming backend against
upstream's own `InferencePipeline.run()`, in one process, on one photo and mask.

What it builds: upstream's pipeline from the checkpoint's architecture YAMLs
(`--configs`, default ../shared/reference/sam3d-objects-configs, or .sam3d/configs on the GPU
machine) through our loader (`UpstreamModel`: attention choice, YAML allow-list, DINOv2 without
network), with every network at random init (no weights exist here). Random weights need three
stand-ins, each reported in the output:
  * the checkpoint files are empty; `instantiate_and_load_from_pretrained` builds at random init;
  * MoGe (random) still runs for its cost, but its output (non-finite) is replaced by a synthetic
    finite point map: a plane with the masked ellipse bulging towards the camera;
  * the sparse-structure decoder's logits are standardised and given an ellipsoidal bias plus an
    offset calibrated so that the final geometry has about `--target-voxels` surface voxels.
Nothing here says anything about output quality.

Runs: (a) our `Sam3dReconstructor.stream` + `MeshBakerBackend.bake` at cadence 1, cadence 5 and
last-frame-only, plus fast mode; (b) upstream's `run()` (mesh + Gaussians decoded) fed the SAME
noise our run drew, and the two compared: stage-1 occupancy IoU and stage-2 voxel count.

On the GPU machine, from the repo root with .sam3d carried:
    . .sam3d/setup.sh && python -m bench.bench_sam3d_h200 --out $OUT
Output: $OUT/sam3d_h200.json (copy to bench/results/).

This file parses the flags and runs the sequence; the parts are in bench/: sam3d_standins.py
(the stand-ins above), sam3d_ours.py (our runs), sam3d_upstream_runs.py (upstream's run(), fed
by sam3d_noise.py), sam3d_levers_ab.py (LEVERS, the lever runs, --ab), sam3d_timing.py (step
timers) and sam3d_state.py (the flags, results, log and deadline those share).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser()
ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
ap.add_argument("--configs", default="")
ap.add_argument("--steps", type=int, default=25)
ap.add_argument("--target-voxels", type=int, default=30_000)
ap.add_argument("--tiny", action="store_true", help="1-block transformers (dry run of the code paths)")
ap.add_argument("--cpu", action="store_true", help="tiny dry run on the CPU (bench/sam3d_cpu_dryrun.py)")
ap.add_argument("--quick", action="store_true", help="no cadence-5 run and no decoder-preview levers")
ap.add_argument("--levers", default="", help="comma-separated lever names to run (default: all)")
ap.add_argument("--ab", default="", help="a lever (a name in LEVERS) run alternately with the "
                                         "defaults, --ab-repeats times, at cadence 1 every step and as "
                                         "streamed, with a last-frame-only run per round")
ap.add_argument("--ab-repeats", type=int, default=3)
ap.add_argument("--ab-only", action="store_true", help="after the warm-up only the --ab runs")
ap.add_argument("--zero-init", action="store_true",
                help="keep upstream's zero-initialised modulation/output layers (the flow "
                     "transformers' blocks then pass their input through unchanged)")
ap.add_argument("--upstream-first", action="store_true",
                help="run upstream's run() once right after the build, before any of our code")
ap.add_argument("--deadline", type=float, default=520.0, help="skip remaining runs after this many s")
ARGS = ap.parse_args()
ARGS.tiny = ARGS.tiny or ARGS.cpu
T0 = time.perf_counter()
OUT = Path(ARGS.out)
OUT.mkdir(parents=True, exist_ok=True)
R: dict = {"random_weights": True, "stand_ins": [
    "empty checkpoint files; every network at random init",
    "random MoGe runs, its point map replaced by a synthetic finite one",
    "sparse-structure decoder logits standardised + ellipsoid bias + calibrated offset"]}


if "ray" not in sys.modules:  # the GPU machine has no Ray; the deployments only decorate with it
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        ray = types.ModuleType("ray")
        ray.serve = types.ModuleType("ray.serve")
        ray.serve.deployment = lambda *a, **k: (a[0] if a and callable(a[0]) else (lambda c: c))
        ray.serve.batch = lambda *a, **k: (a[0] if a and callable(a[0]) else (lambda f: f))
        sys.modules["ray"], sys.modules["ray.serve"] = ray, ray.serve

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.sam3d_levers_ab import ab_runs, lever_runs, occupancy_decoder_variants  # noqa: E402
from bench.sam3d_noise import record_noise  # noqa: E402
from bench.sam3d_ours import OurRuns, observe_runs, step_ms  # noqa: E402
from bench.sam3d_standins import (ShapedDecoder, SyntheticDepth, calibrate_offset,  # noqa: E402
                                  load_at_random_init, wake_zero_layers, workspace)
from bench.sam3d_state import BenchState  # noqa: E402
from bench.sam3d_timing import StepTimers  # noqa: E402
from bench.sam3d_upstream_runs import upstream_first, upstream_runs  # noqa: E402

CUDA = torch.cuda.is_available() and not ARGS.cpu
CPU_MODE = None
if ARGS.cpu:
    from bench import sam3d_cpu_dryrun

    CPU_MODE = sam3d_cpu_dryrun.install()
R["gpu"] = torch.cuda.get_device_name(0) if CUDA else "cpu"
R["torch"] = torch.__version__
if CUDA:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
STATE = BenchState(ARGS, OUT, R, StepTimers(CUDA), T0)
TIMERS = STATE.timers
log, save = STATE.log, STATE.save


# ------------------------------------------------------------------ main
def main():
    from deployments.mesh_baker.bake import MeshBakerBackend
    from deployments.reconstructor import sam3d_run
    from deployments.reconstructor.sam3d import Sam3dReconstructor
    from deployments.reconstructor.sam3d_upstream import LEVERS_OFF, UpstreamModel, import_pipeline
    from sam3d_common.settings import MeshBakerSettings, Sam3dSettings
    from sam3d_common.store import ArtifactStore
    from skimage import data as skdata

    image = skdata.coffee()  # 400x600 RGB
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - h / 2) / (0.32 * h)) ** 2 + ((xx - w / 2) / (0.28 * w)) ** 2 <= 1.0
    R["input"] = {"image": "skimage.data.coffee()", "shape": list(image.shape), "mask_px": int(mask.sum())}

    R["attention"] = import_pipeline()
    load_at_random_init()

    ws = workspace(ARGS.configs, ARGS.tiny, ARGS.cpu)
    settings = Sam3dSettings(checkpoint_dir=str(ws), geometry_steps=ARGS.steps, appearance_steps=ARGS.steps)
    TIMERS.reset_peak()
    t = time.perf_counter()
    model = UpstreamModel(ws, settings)
    TIMERS.sync()
    R["build_s"] = round(time.perf_counter() - t, 1)
    p = model.pipeline
    if not ARGS.zero_init:
        R["stand_ins"].append(
            "the flow transformers' zero-initialised layers (adaLN modulation, output) drawn from "
            "N(0, 0.01), so that their blocks change their input and levers' agreement means something")
        R["reinitialised_zero_layers"] = wake_zero_layers(p.models)
    R["params_M"] = {k: round(sum(x.numel() for x in m.parameters()) / 1e6, 1)
                     for k, m in {**p.models, **p.condition_embedders}.items() if m is not None}
    R["pipeline"] = {"dtype": str(p.dtype), "shape_model_dtype": str(p.shape_model_dtype),
                     "ss_cfg": p.ss_cfg_strength, "slat_cfg": p.slat_cfg_strength}
    log("built", R["build_s"], "s", R["params_M"], R["attention"])
    save()
    p.depth_model = SyntheticDepth(p.depth_model, R)
    shaped = ShapedDecoder(p.models["ss_decoder"], "cuda" if CUDA else "cpu")
    if ARGS.upstream_first:
        upstream_first(STATE, p, settings, image, mask)

    # Every noise tensor our run draws, so upstream's run can be fed the same; what each run saw
    # (occupancy, voxels, final latent); each stage timed.
    drawn = record_noise(sam3d_run.UpstreamRun)
    seen = observe_runs(sam3d_run.UpstreamRun, TIMERS)

    # Calibrate the decoder offset on a full geometry pass of the benchmark's seed.
    R["calibration"] = calibrate_offset(model, shaped, image, mask, ARGS.steps, ARGS.target_voxels)
    log("calibration", R["calibration"])

    recon = Sam3dReconstructor(settings, grid_size=64, model=model)
    if CPU_MODE is not None:  # torch function modes are per thread: the worker needs it too
        from concurrent.futures import ThreadPoolExecutor

        recon._worker = ThreadPoolExecutor(max_workers=1, initializer=lambda: CPU_MODE().__enter__())
    baker = MeshBakerBackend(MeshBakerSettings(), ArtifactStore(tempfile.mkdtemp(prefix="sam3d_store_")))
    ours = OurRuns(STATE, model, settings, recon, baker, image, mask, drawn, seen)

    R["compiled_blocks"] = model.compiled_blocks
    ours.with_settings()
    R["warm_up_s"] = round(model.warm_up(), 2)  # what a replica does before it reports healthy
    log("warm-up", R["warm_up_s"], "s")
    ours.run("first_request_after_warm_up", 5)
    if ARGS.ab_only:  # the alternating runs alone, for a short device call
        ab_runs(STATE, ours)
        return
    c1 = ours.run("ours_cadence1", 1)
    ours.reference = seen.get("local_occupancy")
    ours_slat = seen.get("slat_voxels")
    last = ours.run("ours_last_frame_only", ARGS.steps)
    # What the ingress asks for (serve_app/prepare.frame_interval at the default 10 frames/s):
    # cadence 1, thinned to the steps the stream could send.
    capped = ours.run("ours_cadence1_stream_cap", 1, frame_interval=0.08)
    ours.run("ours_fast", 1, fast=True)
    c5 = None if ARGS.quick else ours.run("ours_cadence5", 5)
    if CUDA:
        R["occupancy_decoder_variants"] = occupancy_decoder_variants(
            p.models["ss_decoder"], p.shape_model_dtype)
        log("occupancy decoder variants", json.dumps(R["occupancy_decoder_variants"]))
        save()
    ours.bake_threads(ours.final_of.get("ours_cadence1"))
    # Each lever switched from its default on its own, at cadence 1. First every lever off
    # (eager, as upstream runs): upstream's run() gets that run's noise, and shares its modules,
    # so it must not meet our compiled blocks, graphs or dense forwards.
    ours.with_settings(**dict.fromkeys(LEVERS_OFF, False))
    ours.run("lever_all_off", 1)
    eager_noise, eager_slat = list(drawn), seen.get("slat_voxels")
    eager_occ = ours.occupancies.get("lever_all_off")

    # Upstream's own run() from the same noise.
    up = upstream_runs(STATE, p, image, mask, eager_noise, eager_slat, eager_occ, ours.reference)

    lever_runs(STATE, ours, c1)
    if ARGS.ab:
        ab_runs(STATE, ours)
    if time.perf_counter() - T0 < ARGS.deadline:  # on the CPU (dry run) for its code paths only
        from bench.sam3d_profile import profile_stages

        ours.with_settings()
        try:
            R["kernel_profile"] = profile_stages(model, image, mask, ARGS.steps, TIMERS.sync)
        except Exception as exc:  # noqa: BLE001 - the figures above stand without it
            R["kernel_profile"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        log("kernel profile", json.dumps(R["kernel_profile"])[:3000])
        save()

    R["summary"] = summary(c1, c5, last, capped, up, ours_slat)
    R.update({k: v for k, v in R["summary"].items() if k not in R})  # the figures at top level too
    log("summary", json.dumps(R["summary"]))


def summary(c1, c5, last, capped, up: dict, ours_slat) -> dict:
    """The headline figures: our cadence-1 run's (c1), the other runs' image → GLB seconds, and
    upstream's run() (`up`) beside ours."""
    return {
        "gpu": R["gpu"], "params_M": R["params_M"], "steps": ARGS.steps,
        "geometry_ms_per_step": step_ms(c1, "geometry_step"),
        "appearance_ms_per_step": step_ms(c1, "appearance_step"),
        "preview_decode_ms": {"geometry": step_ms(c1, "geometry_preview"),
                              "appearance": step_ms(c1, "appearance_preview")},
        "final_decode_ms": step_ms(c1, "finish"),
        "first_frame_s": c1 and c1["first_frame_s"],
        "warm_up_s": R.get("warm_up_s"),
        "image_to_glb_s": {"cadence1": c1 and c1["image_to_glb_s"], "cadence5": c5 and c5["image_to_glb_s"],
                           "last_frame_only": last and last["image_to_glb_s"],
                           "cadence1_stream_cap": capped and capped["image_to_glb_s"],
                           "fast": R.get("ours_fast", {}).get("image_to_glb_s")},
        "upstream_run_s": up.get("run_s"), "upstream_image_to_glb_s": up.get("image_to_glb_s"),
        "stream_overhead_cadence1": (round(c1["image_to_glb_s"] / last["image_to_glb_s"] - 1, 3)
                                     if c1 and last else None),
        "stream_overhead_cadence1_stream_cap": (round(capped["image_to_glb_s"] / last["image_to_glb_s"] - 1, 3)
                                                if capped and last else None),
        "occupancy_iou_vs_upstream": up.get("occupancy_iou_vs_ours_eager"),
        "occupancy_iou_compiled_vs_upstream": up.get("occupancy_iou_vs_ours_default"),
        "same_slat_voxels_as_upstream": up.get("same_slat_voxels_as_ours_eager"),
        "active_voxels": ours_slat, "mesh_faces": c1 and c1["mesh_faces_decoded"],
        "mesh_faces_glb": c1 and c1["mesh_faces_glb"], "splat_gaussians": c1 and c1["splat_gaussians"],
        "upstream_mesh_faces": up.get("mesh_faces"), "upstream_gaussians": up.get("gaussians"),
        "peak_gpu_gib": max(x for x in (c1 and c1["peak_gpu_gib"], up.get("peak_gpu_gib"), 0) if x),
    }


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # record and still write what was measured
        R["fatal"] = f"{type(exc).__name__}: {exc}"
        R["traceback"] = traceback.format_exc()[-4000:]
        log(R["traceback"])
    R["total_s"] = round(time.perf_counter() - T0, 1)
    save()
    log("done")
