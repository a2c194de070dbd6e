"""The speed levers as bench_sam3d_h200.py measures them: each lever switched from the defaults
on its own at cadence 1 (`lever_runs`), one lever alternated with the defaults (`--ab`,
`ab_runs`), and the occupancy decoder's cuDNN variants on their own (CUDA only)."""
from __future__ import annotations

import contextlib
import json
import statistics

import torch

from bench.sam3d_ours import OurRuns, step_ms
from bench.sam3d_state import BenchState

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


@contextlib.contextmanager
def device_context():
    """The old UpstreamRun._ctx: a default-device context (a torch function mode) around
    every call, to measure what dropping it gained."""
    from deployments.reconstructor import sam3d_run

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


def lever_runs(state: BenchState, ours: OurRuns, defaults: dict | None) -> None:
    """Each lever of LEVERS (but all_off; with --quick, not the decoder previews; with
    --levers, those named) switched on its own at cadence 1, back to the defaults after each;
    then the image → GLB seconds and step timers of every lever beside the defaults' run."""
    args, R = state.args, state.results
    for tag, update in LEVERS.items():
        if update is None or (args.quick and tag.startswith("previews")) or (
                args.levers and tag not in args.levers.split(",")):
            continue
        try:
            ours.with_settings(**update)
        except Exception as exc:  # noqa: BLE001 - a lever that cannot be set is reported
            R["lever_" + tag] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if tag == "device_context":
            with device_context():
                ours.run("lever_" + tag, 1)
        else:
            ours.run("lever_" + tag, 1)
        ours.with_settings()  # back to the defaults: each lever on its own
    R["levers_image_to_glb_s"] = {"defaults": defaults and defaults["image_to_glb_s"], **{
        tag: R.get("lever_" + tag, {}).get("image_to_glb_s") for tag in LEVERS}}
    R["levers_step_ms"] = {tag: {k: step_ms(R.get(run), k) for k in ("geometry_step", "appearance_step")}
                           for tag, run in [("defaults", "ours_cadence1")]
                           + [(t, "lever_" + t) for t in LEVERS]}


def ab_runs(state: BenchState, ours: OurRuns) -> None:
    """Defaults and the --ab lever, alternately in the same process, so that drifts of the
    host (clocks, other tenants) hit both: per round, each side at cadence 1 with every step
    decoded and as the ingress streams (0.08 s frame gap), then a last-frame-only run. Records
    in results["ab"] the median stream and image → GLB seconds per side and mode, and each
    side's streaming overhead (its median stream over the last-frame-only median, minus 1)."""
    args = state.args
    update = LEVERS[args.ab]
    runs: dict = {}
    for i in range(args.ab_repeats):
        for side, upd in (("defaults", {}), ("lever", update)):
            ours.with_settings(**upd)
            for mode, gap in (("every_step", 0.0), ("as_streamed", 0.08)):
                r = ours.run(f"ab_{side}_{mode}_{i}", 1, frame_interval=gap)
                if r:
                    runs.setdefault((side, mode), []).append(r)
        ours.with_settings()
        r = ours.run(f"ab_last_frame_only_{i}", args.steps)
        if r:
            runs.setdefault(("defaults", "last_frame_only"), []).append(r)

    def median(key, field):
        values = [r[field] for r in runs.get(key, [])]
        return round(statistics.median(values), 3) if values else None

    out = {"lever_settings": update, "rounds": args.ab_repeats}
    last = median(("defaults", "last_frame_only"), "stream_s")
    for (side, mode) in runs:
        entry = out.setdefault(side, {}).setdefault(mode, {})
        entry["stream_s"] = [r["stream_s"] for r in runs[(side, mode)]]
        entry["median_stream_s"] = median((side, mode), "stream_s")
        entry["median_image_to_glb_s"] = median((side, mode), "image_to_glb_s")
        if last and mode != "last_frame_only":
            entry["stream_overhead"] = round(entry["median_stream_s"] / last - 1, 4)
    state.results["ab"] = out
    state.log("ab", json.dumps(out))
    state.save()


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
