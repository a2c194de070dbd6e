"""SAM 3 image encoder on a GPU, lever by lever (issue 16): encode p50 at batch 1, images/s at batch 8 and
16 (batches formed by the caller) and through @serve.batch at concurrency 32, peak memory, first-request
latency after a replica's start, and the browser payload's build time, bytes and mask fidelity.

Full-size model at random initialisation (transformers' Sam3VideoConfig defaults: ViT-L/14 at 1008 px),
bf16. Levers, each measured on its own in the same run:
- before:   the previous encode path, reproduced in bench/sam3_encoder_before.py (an upload and an
            antialiased resize per image even when it is already 1008², a blake2b hash per image on the
            encoder thread, per-image copies);
- hot_path: today's encode path (one pinned uint8 upload per batch, no identity resize, ids hashed before
            batching, no copies at batch 1), eager;
- sdpa_cudnn / sdpa_flash: hot_path with SDPA restricted to one kernel (CUDA only);
- compile_<mode>[_<scope>][_frozen][_cudnn][_unfolded][_dynamic]: hot_path under torch.compile, padded to batch
            buckets, compiled at start (--compile-variants mode:scope[:frozen][:cudnn][:unfolded][:dynamic], scope
            "vit" or "encoder" = ViT + tracker neck, frozen: inductor's freezing, `compile_freezing`; cudnn:
            `cudnn_benchmark`; unfolded: `encoder_folding` off, the patch conv and neck as transformers has them;
            dynamic: `compile_dynamic_batch`, one graph for the buckets above 1); a kernel
            profile of the last one (bench/gpu_profile.py: attention kernel names, matrix-multiply and
            Triton shares).
- compile_<mode>[_<scope>]_graph (--cuda-graph): the same compiled variant with
            `cuda_graph` on, built and measured right after it (its own compile of the buckets, with
            inductor's caches warm from the one before): each bucket's forward captured by hand into a
            CUDA graph at start and replayed from the worker threads; with the replays and captures it
            made, and whether the graph was used at all (never off CUDA: there the lever is the compiled
            path itself, and the report says so).
- fp8_* / fp8_tensor_* / fp8_static_* / fused_gelu_* (--fp8, --fp8-tensor, --fp8-static, --fused-gelu):
            the ViT with its linear layers in FP8 (`vit_fp8`; per-row, per-tensor or calibrated static
            scales, `vit_fp8_scaling`) or fc1 and
            GELU as one cuBLASLt call (`vit_fused_gelu`), compiled in the first --compile-modes mode (and
            graphed with --cuda-graph; frozen with --lever-freezing; dynamic with --lever-dynamic; once per compile_scope in
            --lever-scopes), with a batch-1 kernel profile and
            the agreement with the bf16 model (backbone relative error, click-mask IoU; random weights);
            the swapped modules are put back after.
- hot_path_unfolded (--eager-unfolded): the eager hot path with `encoder_folding` off, measured last.
The payload: the previous codec (float64 statistics, zlib default strategy, from float32 host copies)
against today's (quantised on the device, float32 statistics, Huffman-only deflate).

    python -m bench.bench_sam3_encoder --json-out bench/results/sam3_encoder_h200.json   # CUDA, full size
    python -m bench.bench_sam3_encoder --tiny --cpu                                       # a dry run
    python -m bench.bench_sam3_encoder --cuda-graph --max-batch 4 --serve-max-batch 4 --batches 4 \
        --skip-before --skip-sdpa --skip-payload --json-out bench/results/sam3_encoder_graph.json
    python -m bench.bench_sam3_encoder --cuda-graph --graph-only --fp8 --max-batch 8 --serve-max-batch 8 \
        --batches 4,8 --skip-before --skip-sdpa --skip-payload   # bf16 vs FP8, both replayed from graphs
    python -m bench.bench_sam3_encoder --cuda-graph --graph-only --fp8 --max-batch 1 --serve-max-batch 1 \
        --batches 1 --iters 10 --requests 16 --concurrency 4 --skip-before --skip-sdpa --skip-payload
                                        # the same at batch 1 only: one compiled shape per variant
    python -m bench.bench_sam3_encoder --compile-variants default:vit,default:vit:frozen --cuda-graph \
        --graph-only --fp8 --fp8-tensor --fused-gelu --max-batch 1 --serve-max-batch 1 --batches 1 --iters 20 \
        --requests 32 --concurrency 4 --skip-before --skip-sdpa --skip-payload
                                        # every batch-1 lever against run 6's profile, one call (~5 min)
    python -m bench.bench_sam3_encoder --compile-variants default:vit,default:vit:frozen --cuda-graph \
        --graph-only --fused-gelu --lever-freezing --max-batch 8 --serve-max-batch 8 --batches 1,8 \
        --requests 128 --concurrency 32 --skip-before --skip-sdpa --skip-payload --skip-fidelity
                                        # run 7's two bf16 gains together, batch 1 and 8 (~6 min)
    python -m bench.bench_sam3_encoder --compile-variants default:vit --cuda-graph --graph-only --fp8-static \
        --fp8-tensor --max-batch 1 --serve-max-batch 1 --batches 1 --iters 20 --requests 32 --concurrency 4 \
        --skip-before --skip-sdpa --skip-payload   # FP8 without the per-call amax, against run 7's per-tensor FP8
    python -m bench.bench_sam3_encoder --compile-variants default:vit:frozen --cuda-graph --graph-only \
        --fp8-static --fused-gelu --lever-freezing --max-batch 8 --serve-max-batch 8 --batches 1,8 \
        --requests 128 --concurrency 32 --skip-before --skip-sdpa --skip-payload --skip-fidelity
                                        # run 11: every lever frozen, batch 1 and 8 (~8.5 min on an H100)
    python -m bench.bench_sam3_encoder --skip-plain --cuda-graph --graph-only --fp8-static --lever-freezing \
        --lever-scopes vit,encoder --max-batch 1 --serve-max-batch 1 --batches 1 --iters 20 --requests 32 \
        --concurrency 4 --skip-before --skip-sdpa --skip-payload   # static FP8: ViT alone or with the neck
    python -m bench.bench_sam3_encoder --compile-modes max-autotune-no-cudagraphs --cuda-graph --graph-only \
        --max-batch 1 --serve-max-batch 1 --batches 1 --skip-before --skip-sdpa --skip-payload
                                        # Triton matrix multiplies with fused epilogues, replayed from graphs

On the H200 one run stays under 10 minutes with the defaults (one compile mode, buckets 1..16); add modes
with --compile-modes in a run of their own if needed.

Ray Serve is optional (bench/serve_batch_standin.py): without it, `ray.serve` is stubbed so the deployment
module imports, and the "serve_batch" figures come from an asyncio stand-in with @serve.batch's rule (a batch
closes when full or `batch_wait_timeout_s` after its first request); the report says which one ran. Each
lever's serve figures come once per --serve-modes entry: "pipelined" as the Segmenter deployment runs its
batches (two at once, each until its GPU work is done) and "enqueue" as it did before (serve_batch_enqueue);
and once per --serve-max-batch entry (`--max-batch 16 --serve-max-batch 8,16`: serve_batch[_enqueue]_mb16).
The previous version of this script (ONNX decoder, prompt latencies) is bench/bench_sam3_encoder_v1.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.serve_batch_standin import SERVE_MODES, stub_ray_serve_if_missing  # noqa: E402

REAL_SERVE = stub_ray_serve_if_missing()  # before the segmenter package imports ray.serve

import torch  # noqa: E402

from bench.gpu_timing import ms, sync, timed  # noqa: E402
from bench.sam3_encoder_before import (conv_patch_embedding, encode_before, one_deflate_thread,  # noqa: E402
                                      payload_before)
from deployments.segmenter.sam3 import embedding_codec  # noqa: E402
from bench.sam3_encoder_levers import (MODEL_LEVERS, SCOPES, bad_variant, compiled_levers,  # noqa: E402
                                       first_request, fresh_images, lever_name, measure_lever, model_lever)
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from sam3d_common.settings import Sam3Settings  # noqa: E402
from tests.support.sam3_fidelity import codec_fidelity, random_prompts  # noqa: E402
from tests.support.sam3_testing import random_init_models, tiny_video_config  # noqa: E402


def payload_figures(args, backend, models, size, device, report):
    """The browser payload, before and now, on one full-size embedding; fidelity of today's payload."""
    emb = backend.encode_batch(fresh_images(1, size, 7), ["payload"])[0]
    report["payload"] = {
        "before": {**ms(timed(lambda: payload_before(emb, size), torch.device("cpu"), warmup=1, iters=5)),
                   "bytes": len(payload_before(emb, size))},
        "now": {**ms(timed(lambda: backend.embedding_payload(emb), device, warmup=1, iters=5)),
                "bytes": len(backend.embedding_payload(emb))},
        "one_deflate_thread": one_deflate_thread(lambda: {
            **ms(timed(lambda: backend.embedding_payload(emb), device, warmup=1, iters=5)),
            "bytes": len(backend.embedding_payload(emb))}),
    }
    if not args.skip_fidelity:
        import copy

        from tests.support.sam3_fidelity import agreement, decode_masks

        tracker32 = copy.deepcopy(models.tracker).float()
        feats = emb.click_features()
        prompts = random_prompts(size, count=32, seed=1)
        reference = decode_masks(tracker32, feats, prompts)
        for key, data in (("now", backend.embedding_payload(emb)), ("before", payload_before(emb, size))):
            report["payload"][key].update(agreement(reference, decode_masks(tracker32, embedding_codec.decode(data)[1], prompts)))
        report["payload"]["codec_fidelity_numpy_path"] = codec_fidelity(tracker32, feats, size, "compact", prompts)
        del tracker32
    print("payload", json.dumps(report["payload"]), flush=True)


def summary(report: dict) -> dict:
    """The issue's figures at the top level, read from the run's own levers: the served path is the
    variant Sam3Settings' defaults select (compiled, replayed from CUDA graphs where `cuda_graph` is on)
    when it was measured, else the same without the graphs, else the eager hot path."""
    levers = report.get("levers", {})
    d = Sam3Settings()
    flags = [f for f, on in (("frozen", d.compile_freezing), ("cudnn", d.cudnn_benchmark),
                             ("unfolded", not d.encoder_folding), ("dynamic", d.compile_dynamic_batch)) if on]
    compiled = lever_name(d.compile_mode, d.compile_scope, flags)
    graphed = lever_name(d.compile_mode, d.compile_scope, flags, graph=True) if d.cuda_graph else None
    served = next((n for n in (graphed, compiled, "hot_path") if n and "encode_bs1" in levers.get(n, {})), None)
    lever = levers.get(served, {})
    return {"encode_lever": served,
            "encode_p50_ms": lever.get("encode_bs1", {}).get("p50_ms"),
            "serve_batch_images_per_s": lever.get("serve_batch", {}).get("images_per_s"),
            "serve_batch_images_per_s_by_max_batch": {  # the table's mode: serve_batch, serve_batch_mb<n>
                str(v["max_batch"]): v["images_per_s"] for k, v in lever.items()
                if re.fullmatch(r"serve_batch(_mb\d+)?", k) and "max_batch" in v},
            "compact_payload_ms": report.get("payload", {}).get("now", {}).get("p50_ms")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="run on the CPU in float32 (with --tiny: a dry run)")
    ap.add_argument("--tiny", action="store_true", help="the tiny test config instead of the full-size model")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--serve-max-batch", default="8",
                    help="@serve.batch's max_batch_size, or several comma-separated, each measured (the first is the "
                         "table's serve figure; the others are serve_batch[_<mode>]_mb<n>)")
    ap.add_argument("--wait-s", type=float, default=0.01)
    ap.add_argument("--serve-modes", default="pipelined,enqueue",
                    help=f"how @serve.batch hands batches to the encoder, each measured ({', '.join(SERVE_MODES)}; "
                         "bench/serve_batch_standin.py); the first is the table's serve figure")
    ap.add_argument("--compile-modes", default="default",
                    help="comma-separated torch.compile modes to measure ('' for none), e.g. "
                         "default,max-autotune-no-cudagraphs (autotuning takes minutes per batch size)")
    ap.add_argument("--compile-variants", default=None,
                    help="instead of --compile-modes: comma-separated mode:scope[:frozen][:cudnn][:unfolded][:dynamic], "
                         "e.g. default:vit,default:encoder,default:vit:frozen:cudnn (frozen: compile_freezing, "
                         "cudnn: cudnn_benchmark, unfolded: encoder_folding off, dynamic: compile_dynamic_batch)")
    ap.add_argument("--skip-before", action="store_true", help="skip the reproduced previous path")
    ap.add_argument("--skip-payload", action="store_true", help="skip the payload figures")
    ap.add_argument("--max-batch", type=int, default=16, help="the replica's max_batch_size: compiled buckets 1, 2, 4 .. this")
    ap.add_argument("--skip-sdpa", action="store_true", help="skip the SDPA-kernel levers")
    ap.add_argument("--batches", default="8,16", help="batch sizes measured directly (each one a compiled shape)")
    ap.add_argument("--fused-gelu", action="store_true", help="also the ViT with fc1 and GELU as one call (vit_fused_gelu)")
    ap.add_argument("--fp8", action="store_true", help="also the FP8-linear ViT (vit_fp8, per-row scales)")
    ap.add_argument("--lever-freezing", action="store_true",
                    help="compile the --fp8/--fp8-tensor/--fused-gelu levers with compile_freezing "
                         "(compare with a :frozen --compile-variants entry)")
    ap.add_argument("--lever-dynamic", action="store_true",
                    help="compile the --fp8/--fp8-tensor/--fp8-static/--fused-gelu levers with compile_dynamic_batch "
                         "(compare with a :dynamic --compile-variants entry)")
    ap.add_argument("--skip-plain", action="store_true",
                    help="skip the compiled variants of the unchanged model (only the model levers are compiled)")
    ap.add_argument("--lever-scopes", default="vit",
                    help="comma-separated compile_scope values the --fp8/--fp8-tensor/--fp8-static/--fused-gelu "
                         "levers are compiled with, each its own run (vit, encoder)")
    ap.add_argument("--eager-unfolded", action="store_true",
                    help="also the eager hot path with encoder_folding off (lever hot_path_unfolded), at the end")
    ap.add_argument("--lever-cudnn", action="store_true",
                    help="the --fp8/--fp8-tensor/--fp8-static/--fused-gelu levers with cudnn_benchmark "
                         "(compare with a :cudnn --compile-variants entry)")
    ap.add_argument("--fp8-static", action="store_true",
                    help="also the FP8-linear ViT with activation scales calibrated at start (vit_fp8_scaling: static)")
    ap.add_argument("--fp8-tensor", action="store_true",
                    help="also the FP8-linear ViT with per-tensor scales (vit_fp8_scaling: tensor, bias in the epilogue)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also each compiled variant with cuda_graph on (one more compile of the buckets)")
    ap.add_argument("--graph-only", action="store_true",
                    help="with --cuda-graph: only the graphed variant of each compile (one compile "
                         "of the buckets instead of two, no kernel profile of it; --fp8, --fp8-tensor and --fused-gelu still get theirs); "
                         "for short device calls")
    ap.add_argument("--compile-backend", default=None, help="default: inductor on CUDA, aot_eager on the CPU")
    ap.add_argument("--standin", action="store_true", help="the asyncio @serve.batch stand-in even with Ray Serve")
    ap.add_argument("--skip-fidelity", action="store_true")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if bad := bad_variant(args.compile_variants or ""):
        ap.error(f"--compile-variants: {bad}")
    if bad := set(args.lever_scopes.split(",")) - set(SCOPES):
        ap.error(f"--lever-scopes: {', '.join(sorted(bad))} is not a compile_scope {SCOPES}")
    if bad := set(args.serve_modes.split(",")) - set(SERVE_MODES):
        ap.error(f"--serve-modes: {', '.join(sorted(bad))} is not one of {SERVE_MODES}")
    args.batch_sizes = [int(b) for b in args.batches.split(",") if b]
    try:
        args.serve_max_batches = [int(b) for b in args.serve_max_batch.split(",") if b]
    except ValueError:
        ap.error(f"--serve-max-batch: {args.serve_max_batch!r} is not comma-separated integers")
    if not args.serve_max_batches or max(args.serve_max_batches) > args.max_batch:
        ap.error(f"--serve-max-batch: each of {args.serve_max_batch} must be at most --max-batch {args.max_batch} "
                 "(the compiled buckets)")
    args.real_serve = REAL_SERVE and not args.standin
    device_name, dtype = ("cpu", "float32") if args.cpu else ("cuda", "bfloat16")
    compile_backend = args.compile_backend or ("aot_eager" if args.cpu else "inductor")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    import transformers

    report: dict = {"args": vars(args), "levers": {}}
    report["env"] = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                     "device": torch.cuda.get_device_name() if device_name == "cuda" else platform.processor() or "cpu",
                     "ray_serve": args.real_serve}
    print("env", json.dumps(report["env"]), flush=True)

    from transformers import Sam3VideoConfig

    config = tiny_video_config() if args.tiny else Sam3VideoConfig()
    t = time.perf_counter()
    models = random_init_models(config, device=device_name, dtype=dtype)
    device = models.device
    sync(device)
    size = models.pixels.size
    report["model"] = {"build_s": round(time.perf_counter() - t, 1), "image_size": size, "dtype": str(models.dtype),
                       "weights_mb": round(torch.cuda.memory_allocated() / 2**20) if device.type == "cuda" else None}
    print("model", json.dumps(report["model"]), flush=True)
    base = dict(device=device_name, dtype=dtype, embedding_cache_mb=64, score_threshold=0.0)

    # Eager: replica start and first request, then the levers that need no compilation.
    backend, report["first_request_eager"] = first_request(Sam3Settings(**base, compile="off"), models, size, device, args.max_batch)
    print("first_request_eager", json.dumps(report["first_request_eager"]), flush=True)
    hot = backend.encode_batch
    if not args.skip_before:
        with conv_patch_embedding(models):
            measure_lever("before", lambda ims, ids: encode_before(models, ims), size, device, args, report)
    measure_lever("hot_path", hot, size, device, args, report)
    if device.type == "cuda" and not args.skip_sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for label, kernel in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
            def with_kernel(ims, ids, kernel=kernel):
                with sdpa_kernel([kernel]):
                    return hot(ims, ids)
            try:
                measure_lever(label, with_kernel, size, device, args, report)
            except Exception as exc:  # noqa: BLE001 - a kernel this model's attention cannot use
                report["levers"][label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                print("lever", label, "failed:", report["levers"][label]["error"], flush=True)

    if not args.skip_payload:
        payload_figures(args, backend, models, size, device, report)

    if not args.skip_plain:
        compiled_levers(args, base, models, size, device, compile_backend, report)
    for kind in MODEL_LEVERS:  # after the compiled levers: each swaps the shared model's modules for its run
        if getattr(args, kind):
            for scope in args.lever_scopes.split(","):
                model_lever(kind, args, base, backend, models, size, device, compile_backend, report, scope)

    if args.eager_unfolded:  # last: it leaves the shared model unfolded
        eager_unfolded = Sam3Segmenter(Sam3Settings(**base, compile="off", encoder_folding=False), models=models)
        measure_lever("hot_path_unfolded", eager_unfolded.encode_batch, size, device, args, report)
    if device.type == "cuda":
        report["peak_mb_total"] = round(torch.cuda.max_memory_allocated() / 2**20)
    before = report["levers"].get("before") or report["levers"]["hot_path"]
    bss = args.batch_sizes
    lines = [f"{'lever':44s} {'bs1 p50 ms':>10s} {'x':>5s} " + " ".join(f"{f'bs{b} img/s':>10s}" for b in bss)
             + f" {'serve img/s':>11s} {'x':>5s} {'peak MB':>8s}"]
    for name, r in report["levers"].items():
        if "error" in r:
            lines.append(f"{name:44s} error: {r['error'][:80]}")
            continue
        peak = r.get(f"direct_bs{bss[-1]}", {}).get("peak_mb") if bss else None
        label = name + (" (graph unused)" if r.get("cuda_graph", {}).get("used") is False else "")
        lines.append(f"{label:44s} {r['encode_bs1']['p50_ms']:10.2f} {before['encode_bs1']['p50_ms'] / r['encode_bs1']['p50_ms']:5.2f} "
                     + " ".join(f"{r[f'direct_bs{b}']['images_per_s']:10.2f}" for b in bss)
                     + f" {r['serve_batch']['images_per_s']:11.2f} {r['serve_batch']['images_per_s'] / before['serve_batch']['images_per_s']:5.2f} "
                     f"{str(peak):>8s}")
    p = report.get("payload")
    if p:
        lines.append(f"payload compact: before {p['before']['p50_ms']} ms {p['before']['bytes']} B, now {p['now']['p50_ms']} ms "
                     f"{p['now']['bytes']} B ({p['before']['p50_ms'] / p['now']['p50_ms']:.2f}x)")
    print("\n".join(lines))
    report["table"] = lines
    report.update(summary(report))
    print("REPORT " + json.dumps(report), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
