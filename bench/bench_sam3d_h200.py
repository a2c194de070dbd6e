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
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import types
import uuid
from collections import defaultdict
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


def log(*a):
    print(f"[{time.perf_counter() - T0:6.1f}s]", *a, flush=True)


def save():
    (OUT / "sam3d_h200.json").write_text(json.dumps(R, indent=1, default=str))


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


def sync():
    if CUDA:
        torch.cuda.synchronize()


def peak_gib():
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None


def reset_peak():
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


TIMES: dict[str, list[float]] = defaultdict(list)
SPANS: list = []  # (name, start event, end event) on CUDA, read into TIMES by collect_spans()


def timed(name, fn):
    """Wraps fn and records its duration without adding a wait: on CUDA, the GPU time from the
    call's start to the end of the work it queued (events on the calling thread's stream, read
    after the run, including any GPU idle inside the call); on the CPU, its wall time. Runs
    2-16 synchronised the GPU around each call instead, which itself idled the GPU between a
    step and the launch of the next, and so inflated every image → GLB figure."""
    def wrapper(*a, **k):
        if not CUDA:
            t = time.perf_counter()
            out = fn(*a, **k)
            TIMES[name].append(time.perf_counter() - t)
            return out
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(*a, **k)
        end.record()
        SPANS.append((name, start, end))
        return out
    return wrapper


def collect_spans():
    sync()
    for name, start, end in SPANS:
        TIMES[name].append(start.elapsed_time(end) / 1000)
    SPANS.clear()


def ms(name):
    v = np.array(TIMES.get(name, [])) * 1000
    return None if not len(v) else {"n": len(v), "mean": round(float(v.mean()), 1),
                                     "median": round(float(np.median(v)), 1)}


# ------------------------------------------------------------------ the checkpoint stand-in
def workspace() -> Path:
    import yaml

    src = Path(ARGS.configs) if ARGS.configs else next(
        p for p in (ROOT / ".sam3d" / "configs", ROOT.parent / "shared/reference/sam3d-objects-configs")
        if (p / "pipeline.yaml").is_file())
    ws = Path(tempfile.mkdtemp(prefix="sam3d_ws_"))
    for f in src.glob("*.yaml"):
        shutil.copy(f, ws / f.name)
    pipe = yaml.safe_load((ws / "pipeline.yaml").read_text())
    for key, value in pipe.items():
        if key.endswith("_ckpt_path") and isinstance(value, str):
            (ws / value).parent.mkdir(parents=True, exist_ok=True)
            (ws / value).write_bytes(b"")
    def edit(name, fn):
        d = yaml.safe_load((ws / name).read_text())
        fn(d)
        (ws / name).write_text(yaml.safe_dump(d))

    if ARGS.tiny:
        for g in ("ss_generator.yaml", "slat_generator.yaml"):
            edit(g, lambda d: d["module"]["generator"]["backbone"]["reverse_fn"]["backbone"].update(num_blocks=1))
        for name in ("slat_decoder_gs.yaml", "slat_decoder_mesh.yaml"):
            edit(name, lambda d: d.update(num_blocks=1))
    if ARGS.cpu:
        def on_cpu(d):
            d["device"] = "cpu"
            d["depth_model"]["device"] = "cpu"
        edit("pipeline.yaml", on_cpu)
    return ws


class SyntheticDepth:
    """Runs the random depth model for its cost; returns a finite synthetic point map instead."""

    def __init__(self, real):
        self.real, self.device = real, real.device

    def __call__(self, image):
        out = self.real(image)
        R.setdefault("random_moge_nonfinite_fraction", round(float(
            (~torch.isfinite(out["pointmaps"].float())).float().mean()), 4))
        h, w = image.shape[-2:]
        v, u = torch.meshgrid((torch.arange(h, device=self.device) + 0.5) / h,
                              (torch.arange(w, device=self.device) + 0.5) / w, indexing="ij")
        rho2 = ((v - 0.5) / 0.32) ** 2 + ((u - 0.5) / 0.28) ** 2
        z = 2.0 - 0.3 * torch.clamp(1 - rho2, min=0).sqrt()
        pts = torch.stack([(u - 0.5) * z, (v - 0.5) * z * h / w, z], -1).float()
        k = torch.tensor([[1.0, 0, 0.5], [0, w / h, 0.5], [0, 0, 1.0]], device=self.device)
        return {"pointmaps": pts, "points": pts, "intrinsics": k}


class ShapedDecoder:
    """Standardised random logits + an ellipsoid field + an offset: an object-shaped solid."""

    def __init__(self, decoder):
        self.forward_raw = decoder.forward
        c = (torch.arange(64, dtype=torch.float32) + 0.5) / 64 - 0.5
        x, y, z = torch.meshgrid(c, c, c, indexing="ij")
        self.field = (4.0 * (1 - (x / 0.40) ** 2 - (y / 0.34) ** 2 - (z / 0.30) ** 2)).to(
            "cuda" if CUDA else "cpu")
        self.offset = 0.0
        decoder.forward = self

    def shape(self, raw, offset=None):
        o = raw.float()
        return (o - o.mean()) / (o.std() + 1e-6) + self.field + (self.offset if offset is None else offset)

    def __call__(self, x, *a, **k):
        raw = self.forward_raw(x, *a, **k)
        return self.shape(raw).to(raw.dtype)


def upstream_first(p, settings, image, mask):
    """Upstream's run() before any of our code has run on the GPU (no compiled block called,
    no graph captured), every lever off; then the settings' levers back on."""
    from deployments.reconstructor.sam3d_levers import apply_speed_settings
    from deployments.reconstructor.sam3d_upstream import LEVERS_OFF

    apply_speed_settings(p.models, settings.model_copy(update=dict.fromkeys(LEVERS_OFF, False)), CUDA)
    sync()
    t = time.perf_counter()
    try:
        out = p.run(image, mask.astype(np.uint8) * 255, seed=1234, stage1_only=False,
                    with_mesh_postprocess=False, with_texture_baking=False,
                    with_layout_postprocess=False, use_vertex_color=True,
                    stage1_inference_steps=ARGS.steps, stage2_inference_steps=ARGS.steps,
                    decode_formats=["mesh", "gaussian"])
        sync()
        R["upstream_first"] = {"run_s": round(time.perf_counter() - t, 3),
                               "slat_voxels": int(out["coords"].shape[0])}
    except Exception as exc:  # noqa: BLE001 - recorded; the rest of the bench still runs
        R["upstream_first"] = {"error": f"{type(exc).__name__}: {exc}",
                               "traceback": traceback.format_exc()[-1500:]}
    log("upstream_first", json.dumps(R["upstream_first"])[:600])
    save()
    apply_speed_settings(p.models, settings, CUDA)


# Each lever: the settings it switches from the defaults (run at cadence 1, one at a time, or
# alternately with the defaults under --ab). None: run separately (every lever off).
LEVERS = {"all_off": None,
          "compile_geometry_off": {"compile_geometry": False},
          "geometry_cuda_graph_off": {"geometry_cuda_graph": False},
          "compile_appearance_off": {"compile_appearance": False},
          "dense_appearance_eager": {"compile_appearance": False, "dense_appearance": True},
          "both_off": {"geometry_cuda_graph": False, "compile_appearance": False},
          "compile_occupancy_decoder": {"compile_occupancy_decoder": True},
          "async_previews_only": {"preview_stream": False, "async_previews": True},
          "preview_refit_every_25": {"preview_refit_every": 25},
          "preview_refit_every_12": {"preview_refit_every": 12},
          "appearance_cuda_graph": {"appearance_cuda_graph": True},
          "preview_stream_off": {"preview_stream": False},
          # The preview levers together (each is also measured on its own above).
          "refit25_occupancy": {"preview_refit_every": 25, "compile_occupancy_decoder": True},
          "device_context": {},
          "compile_reduce_overhead": {"compile_mode": "reduce-overhead"},
          "previews_by_decoder_fp16": {"preview_colors": "decoder"},
          "previews_by_decoder_fp32": {"preview_colors": "decoder", "preview_dtype": "float32"}}


def occupancy_decoder_variants(decoder, dtype, reps: int = 20) -> dict:
    """The geometry preview's occupancy decoder alone (the (1, 8, 16³) latent → 64³ logits, as
    sam3d_run calls it): GPU ms per call (CUDA events, after 3 warm-up calls) with cuDNN's
    heuristics (as shipped), with cudnn.benchmark, and in channels_last_3d, and each variant's
    largest logit difference from the first, on one random input."""
    cudnn = torch.backends.cudnn
    x = torch.randn(1, 8, 16, 16, 16, device="cuda")

    def call(inp):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            return decoder(inp)

    def measure(inp):
        for _ in range(3):
            call(inp)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            out = call(inp)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps, out.float()

    before = cudnn.benchmark
    res, ref = {"cudnn_benchmark_ambient": before, "reps": reps}, None
    try:
        for tag, bench_on, channels_last in (("heuristics", False, False), ("cudnn_benchmark", True, False),
                                             ("channels_last", False, True),
                                             ("channels_last_cudnn_benchmark", True, True)):
            cudnn.benchmark = bench_on
            fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
            decoder.to(memory_format=fmt)
            ms_, out = measure(x.to(memory_format=fmt))
            ref = out if ref is None else ref
            res[tag] = {"ms": round(ms_, 3), "max_abs_logit_diff": round(float((out - ref).abs().max()), 6)}
    except Exception as exc:  # noqa: BLE001 - the runs after this one do not depend on it
        res["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        cudnn.benchmark = before
        decoder.to(memory_format=torch.contiguous_format)
    return res


def ab_runs(ours, with_settings) -> None:
    """Defaults and the --ab lever, alternately in the same process, so that drifts of the
    host (clocks, other tenants) hit both: per round, each side at cadence 1 with every step
    decoded and as the ingress streams (0.08 s frame gap), then a last-frame-only run. Records
    in R["ab"] the median stream and image → GLB seconds per side and mode, and each side's
    streaming overhead (its median stream over the last-frame-only median, minus 1)."""
    update = LEVERS[ARGS.ab]
    runs: dict = {}
    for i in range(ARGS.ab_repeats):
        for side, upd in (("defaults", {}), ("lever", update)):
            with_settings(**upd)
            for mode, gap in (("every_step", 0.0), ("as_streamed", 0.08)):
                r = ours(f"ab_{side}_{mode}_{i}", 1, frame_interval=gap)
                if r:
                    runs.setdefault((side, mode), []).append(r)
        with_settings()
        r = ours(f"ab_last_frame_only_{i}", ARGS.steps)
        if r:
            runs.setdefault(("defaults", "last_frame_only"), []).append(r)

    def median(key, field):
        values = [r[field] for r in runs.get(key, [])]
        return round(statistics.median(values), 3) if values else None

    out = {"lever_settings": update, "rounds": ARGS.ab_repeats}
    last = median(("defaults", "last_frame_only"), "stream_s")
    for (side, mode) in runs:
        entry = out.setdefault(side, {}).setdefault(mode, {})
        entry["stream_s"] = [r["stream_s"] for r in runs[(side, mode)]]
        entry["median_stream_s"] = median((side, mode), "stream_s")
        entry["median_image_to_glb_s"] = median((side, mode), "image_to_glb_s")
        if last and mode != "last_frame_only":
            entry["stream_overhead"] = round(entry["median_stream_s"] / last - 1, 4)
    R["ab"] = out
    log("ab", json.dumps(out))
    save()


def wake_zero_layers(models) -> int:
    """Upstream zero-initialises each block's adaLN modulation and the output layers, so at
    random init every block is the identity and the flows barely move: timings hold, but two
    code paths agree whatever they compute. Draw those weights from N(0, 0.01) instead."""
    g = torch.Generator().manual_seed(0)
    count = 0
    with torch.no_grad():
        for name in ("ss_generator", "slat_generator"):
            for param in models[name].reverse_fn.backbone.parameters():
                if param.dim() >= 2 and not param.any():
                    param.copy_(torch.randn(param.shape, generator=g) * 0.01)
                    count += 1
    return count


def same_shape(noise, shape) -> bool:
    if isinstance(shape, dict):
        return isinstance(noise, dict) and set(noise) == set(shape) and all(
            same_shape(noise[k], shape[k]) for k in shape)
    return not isinstance(noise, dict) and tuple(noise.shape) == tuple(shape)


def replay_noise(generator, queue, redrawn, shape, device):
    """The noise our run drew, in order, for upstream's generators; where upstream asks for
    another shape (its stage 1 kept a different number of voxels than ours), fresh noise from
    the generator's own method, and the shape is recorded."""
    noise = queue.pop(0) if queue else None
    if noise is not None and same_shape(noise, shape):
        return noise
    redrawn.append(str(shape))
    return type(generator)._generate_noise(generator, shape, device)


def clone(x):
    return {k: clone(v) for k, v in x.items()} if isinstance(x, dict) else x.clone()


def surface_count(occ):
    o = occ.float()[None, None]
    empty = torch.nn.functional.pad(1 - o, (1,) * 6, value=1.0)
    return int(((o > 0) & (torch.nn.functional.max_pool3d(empty, 3, stride=1) > 0)).sum())


# ------------------------------------------------------------------ main
def main():
    from deployments.mesh_baker.bake import BakeOptions, MeshBakerBackend
    from deployments.reconstructor import sam3d_run
    from deployments.reconstructor.base import ReconstructOptions, Reconstruction, StepFrame
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
    from hydra.utils import instantiate
    from moge.model import v1 as moge_v1
    from sam3d_objects.pipeline import inference_pipeline as ip

    def random_init(self, config, ckpt_path, *a, device="cuda", **k):
        return instantiate(config).eval().requires_grad_(False).to(device)

    ip.InferencePipeline.instantiate_and_load_from_pretrained = random_init
    moge_v1.MoGeModel.from_pretrained = classmethod(lambda cls, *a, **k: cls(encoder="dinov2_vitl14"))

    ws = workspace()
    settings = Sam3dSettings(checkpoint_dir=str(ws), geometry_steps=ARGS.steps, appearance_steps=ARGS.steps)
    reset_peak()
    t = time.perf_counter()
    model = UpstreamModel(ws, settings)
    sync()
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
    p.depth_model = SyntheticDepth(p.depth_model)
    shaped = ShapedDecoder(p.models["ss_decoder"])
    if ARGS.upstream_first:
        upstream_first(p, settings, image, mask)

    # Every noise tensor our run draws, so upstream's run can be fed the same.
    drawn: list = []
    real_noise = sam3d_run.UpstreamRun._noise

    depth = [0]

    def record_noise(self, shape):  # _noise recurses into dicts: keep the outermost calls only
        depth[0] += 1
        try:
            out = real_noise(self, shape)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            drawn.append(clone(out))
        return out

    sam3d_run.UpstreamRun._noise = record_noise
    seen: dict = {}
    real_start = sam3d_run.UpstreamRun.start_appearance

    def start_appearance(self, occupancy):
        real_start(self, occupancy)
        seen["local_occupancy"] = occupancy.copy()
        seen["slat_voxels"] = int(self.coords.shape[0])
        seen["downsample_factor"] = self.downsample_factor

    sam3d_run.UpstreamRun.start_appearance = start_appearance
    real_finish = sam3d_run.UpstreamRun.finish

    def finish(self, *a, **k):
        seen["final_latent"] = self.app.x[0].float().clone()
        return real_finish(self, *a, **k)

    sam3d_run.UpstreamRun.finish = finish
    for name in ("prepare", "geometry_step", "geometry_preview", "start_appearance", "appearance_step",
                 "appearance_preview", "finish"):
        setattr(sam3d_run.UpstreamRun, name, timed(name, getattr(sam3d_run.UpstreamRun, name)))

    # Calibrate the decoder offset on a full geometry pass of the benchmark's seed.
    run = model.begin(image, mask, 1234, ARGS.steps, ARGS.steps)
    run.prepare()
    for _ in range(ARGS.steps):
        run.geometry_step()
    lat = run._latents(run.geo.x_hat)["shape"]
    with run._ctx(p.shape_model_dtype):
        raw = shaped.forward_raw(lat.permute(0, 2, 1).contiguous().view(1, 8, 16, 16, 16))
    scan = [(float(o), surface_count(shaped.shape(raw, float(o))[0, 0] > 0),
             int((shaped.shape(raw, float(o))[0, 0] > 0).sum())) for o in np.arange(-4, 4.01, 0.25)]
    best = min((s for s in scan if s[2] < 0.6 * 64**3), key=lambda s: abs(s[1] - ARGS.target_voxels))
    shaped.offset = best[0]
    R["calibration"] = {"offset": best[0], "surface_voxels": best[1], "occupied_voxels": best[2],
                        "raw_random_decoder_occupied": int((raw > 0).sum())}
    run.release()
    log("calibration", R["calibration"])

    recon = Sam3dReconstructor(settings, grid_size=64, model=model)
    if CPU_MODE is not None:  # torch function modes are per thread: the worker needs it too
        from concurrent.futures import ThreadPoolExecutor

        recon._worker = ThreadPoolExecutor(max_workers=1, initializer=lambda: CPU_MODE().__enter__())
    baker = MeshBakerBackend(MeshBakerSettings(), ArtifactStore(tempfile.mkdtemp(prefix="sam3d_store_")))

    async def consume(options):
        t = time.perf_counter()
        frames, final = [], None
        async for item in recon.stream(image, mask, options):
            if isinstance(item, StepFrame):
                frames.append((item.stage, item.step, time.perf_counter() - t))
            elif isinstance(item, Reconstruction):
                final = item
        return frames, final, time.perf_counter() - t

    reference = [None]
    final_of: dict = {}

    def step_ms(run, name):
        return (run or {}).get("timers_ms", {}).get(name)

    @contextlib.contextmanager
    def device_context():
        """The old UpstreamRun._ctx: a default-device context (a torch function mode) around
        every call, to measure what dropping it gained."""
        real = sam3d_run.UpstreamRun._ctx

        def ctx(self, dtype):
            stack = real(self, dtype)
            stack.enter_context(self.device)
            return stack

        sam3d_run.UpstreamRun._ctx = ctx
        try:
            yield
        finally:
            sam3d_run.UpstreamRun._ctx = real

    def bake_threads(final):
        """The decoded bake with its three jobs on threads (the default) and one after another."""
        if final is None:
            return
        out = {}
        for n in (1, MeshBakerBackend.bake_threads, 1, MeshBakerBackend.bake_threads):
            b = MeshBakerBackend(MeshBakerSettings(), baker.store)
            b.bake_threads = n
            t = time.perf_counter()
            b.bake(final, uuid.uuid4().hex, BakeOptions())
            out.setdefault(f"threads_{n}_s", []).append(round(time.perf_counter() - t, 3))
        R["bake_threads"] = out
        log("bake threads", out)
        save()
    occupancies: dict = {}
    latents: dict = {}

    def iou(a, b):
        if a is None or b is None:
            return None
        return round(float((a & b).sum() / max((a | b).sum(), 1)), 5)

    def ours(tag, every, fast=False, steps=None, frame_interval=0.0):
        if time.perf_counter() - T0 > ARGS.deadline:
            R[tag] = {"skipped": "deadline"}
            return None
        TIMES.clear()
        SPANS.clear()
        drawn.clear()
        reset_peak()
        trunk = graphed_trunk(p.models["ss_generator"].reverse_fn.backbone)
        replays = trunk.replays if trunk is not None else 0
        app_trunk = dense_trunk(p.models["slat_generator"].reverse_fn.backbone)
        app_counts = (app_trunk.replays, app_trunk.captures) if app_trunk is not None else None
        options = ReconstructOptions(seed=1234, geometry_every=every, colors_every=every, fast=fast,
                                     geometry_steps=steps, appearance_steps=steps,
                                     min_frame_interval_s=frame_interval)
        try:
            frames, final, total = asyncio.run(consume(options))
        except Exception as exc:  # record and go on: one GPU run should give every figure it can
            R[tag] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            log(tag, "FAILED", R[tag]["traceback"])
            save()
            return None
        collect_spans()
        t = time.perf_counter()
        baked = baker.bake(final, uuid.uuid4().hex, BakeOptions())
        bake_s = time.perf_counter() - t
        first = {s: next((f[2] for f in frames if f[0] == s), None) for s in ("geometry", "appearance")}
        r = {"cadence": every, "fast": fast, "frames": len(frames), "stream_s": round(total, 3),
             "first_frame_s": round(first["geometry"], 3),
             "first_appearance_frame_s": round(first["appearance"], 3) if first["appearance"] else None,
             "bake_s": round(bake_s, 3), "image_to_glb_s": round(total + bake_s, 3),
             "slat_voxels": seen.get("slat_voxels"), "mesh_faces_decoded": baked.model["faces_full"],
             "mesh_faces_glb": baked.model["faces"], "splat_gaussians": baked.model["gaussians"],
             "artifacts_bytes": baked.artifacts, "peak_gpu_gib": peak_gib(),
             "occupancy_iou_vs_cadence1": iou(seen.get("local_occupancy"), reference[0]),
             "compiled": bool(model.settings.compile_geometry and model.compiled_blocks),
             "geometry_graph_replays": (trunk.replays - replays) if trunk is not None else None,
             "appearance_graph_replays_captures": None if app_counts is None else [
                 app_trunk.replays - app_counts[0], app_trunk.captures - app_counts[1]],
             "timers_ms": {k: ms(k) for k in sorted(TIMES)}}
        occupancies[tag] = seen.get("local_occupancy")
        latent, ref = seen.get("final_latent"), latents.get("ours_cadence1")
        if latent is not None:
            latents.setdefault(tag, latent)
            if ref is not None and ref.shape == latent.shape:
                r["final_latent_rel_error_vs_cadence1"] = round(float((latent - ref).norm() / ref.norm()), 5)
        final_of[tag] = final
        R[tag] = r
        log(tag, json.dumps({k: v for k, v in r.items() if k != "timers_ms"}))
        save()
        return r

    from deployments.reconstructor.sam3d_graphs import dense_trunk, graphed_trunk
    from deployments.reconstructor.sam3d_levers import apply_speed_settings

    R["compiled_blocks"] = model.compiled_blocks
    lever_keys = LEVERS_OFF + ("compile_mode",)  # what needs the generators re-configured

    def with_settings(**update):
        """Settings for the next runs, applied as UpstreamModel applies them at start, then the
        replica's warm-up (compiles, graph captures), so that neither is counted in the run."""
        before = model.settings
        model.settings = settings.model_copy(update=update)
        s = model.settings
        if any(getattr(before, k) != getattr(s, k) for k in lever_keys):
            model.compiled_blocks = apply_speed_settings(p.models, s, CUDA)
            if s.warm_up:
                log("re-warm-up", R.setdefault("re_warm_up_s", {}).setdefault(
                    "/".join(f"{k}={getattr(s, k)}" for k in lever_keys), round(model.warm_up(), 2)))

    with_settings()
    R["warm_up_s"] = round(model.warm_up(), 2)  # what a replica does before it reports healthy
    log("warm-up", R["warm_up_s"], "s")
    ours("first_request_after_warm_up", 5)
    if ARGS.ab_only:  # the alternating runs alone, for a short device call
        ab_runs(ours, with_settings)
        return
    c1 = ours("ours_cadence1", 1)
    reference[0] = seen.get("local_occupancy")
    ours_slat = seen.get("slat_voxels")
    last = ours("ours_last_frame_only", ARGS.steps)
    # What the ingress asks for (serve_app/prepare.frame_interval at the default 10 frames/s):
    # cadence 1, thinned to the steps the stream could send.
    capped = ours("ours_cadence1_stream_cap", 1, frame_interval=0.08)
    ours("ours_fast", 1, fast=True)
    c5 = None if ARGS.quick else ours("ours_cadence5", 5)
    if CUDA:
        R["occupancy_decoder_variants"] = occupancy_decoder_variants(
            p.models["ss_decoder"], p.shape_model_dtype)
        log("occupancy decoder variants", json.dumps(R["occupancy_decoder_variants"]))
        save()
    bake_threads(final_of.get("ours_cadence1"))
    # Each lever switched from its default on its own, at cadence 1. First every lever off
    # (eager, as upstream runs): upstream's run() gets that run's noise, and shares its modules,
    # so it must not meet our compiled blocks, graphs or dense forwards.
    with_settings(**dict.fromkeys(LEVERS_OFF, False))
    ours("lever_all_off", 1)
    eager_noise, eager_slat = list(drawn), seen.get("slat_voxels")
    eager_occ = occupancies.get("lever_all_off")

    # Upstream's own run() from the same noise.
    def upstream_run():
        return p.run(image, mask.astype(np.uint8) * 255, seed=1234, stage1_only=False,
                     with_mesh_postprocess=False, with_texture_baking=False,
                     with_layout_postprocess=False, use_vertex_color=True,
                     stage1_inference_steps=ARGS.steps, stage2_inference_steps=ARGS.steps,
                     decode_formats=["mesh", "gaussian"])

    up = {}
    for tag in ("upstream_run_1st", "upstream_run_2nd"):
        if not eager_noise or time.perf_counter() - T0 > ARGS.deadline:
            R[tag] = {"skipped": "deadline"}
            continue
        queue = [clone(n) for n in eager_noise]
        redrawn = []
        for gen in ("ss_generator", "slat_generator"):
            p.models[gen]._generate_noise = functools.partial(
                replay_noise, p.models[gen], queue, redrawn)
        reset_peak()
        sync()
        t = time.perf_counter()
        try:
            out = upstream_run()
        except Exception as exc:
            R[tag] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            log(tag, "FAILED", R[tag]["traceback"])
            save()
            continue
        finally:
            for gen in ("ss_generator", "slat_generator"):
                p.models[gen].__dict__.pop("_generate_noise", None)
        sync()
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
              "occupancy_iou_vs_ours_default": iou(up_occ, reference[0]),
              "same_slat_voxels_as_ours_eager": int(out["coords"].shape[0]) == eager_slat,
              "noise_left_unused": len(queue), "noise_redrawn_for": redrawn,
              "peak_gpu_gib": peak_gib()}
        R[tag] = up
        log(tag, json.dumps(up))
        save()

    for tag, update in LEVERS.items():
        if update is None or (ARGS.quick and tag.startswith("previews")) or (
                ARGS.levers and tag not in ARGS.levers.split(",")):
            continue
        try:
            with_settings(**update)
        except Exception as exc:  # noqa: BLE001 - a lever that cannot be set is reported
            R["lever_" + tag] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if tag == "device_context":
            with device_context():
                ours("lever_" + tag, 1)
        else:
            ours("lever_" + tag, 1)
        with_settings()  # back to the defaults: each lever on its own
    R["levers_image_to_glb_s"] = {"defaults": c1 and c1["image_to_glb_s"], **{
        tag: R.get("lever_" + tag, {}).get("image_to_glb_s") for tag in LEVERS}}
    R["levers_step_ms"] = {tag: {k: step_ms(R.get(run), k) for k in ("geometry_step", "appearance_step")}
                           for tag, run in [("defaults", "ours_cadence1")]
                           + [(t, "lever_" + t) for t in LEVERS]}
    if ARGS.ab:
        ab_runs(ours, with_settings)
    if time.perf_counter() - T0 < ARGS.deadline:  # on the CPU (dry run) for its code paths only
        from bench.sam3d_profile import profile_stages

        with_settings()
        try:
            R["kernel_profile"] = profile_stages(model, image, mask, ARGS.steps, sync)
        except Exception as exc:  # noqa: BLE001 - the figures above stand without it
            R["kernel_profile"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        log("kernel profile", json.dumps(R["kernel_profile"])[:3000])
        save()


    R["summary"] = {
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
    R.update({k: v for k, v in R["summary"].items() if k not in R})  # the figures at top level too
    log("summary", json.dumps(R["summary"]))


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
