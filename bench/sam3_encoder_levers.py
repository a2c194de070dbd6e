"""The levers of bench/bench_sam3_encoder.py: how one is measured (batch-1 latency, direct batches,
@serve.batch), a replica's start and first request, the compiled variants of the unchanged model, and
the model levers that swap the ViT's modules (FP8 linears, the fused GELU) with their agreement to bf16."""
from __future__ import annotations

import asyncio
import json
import statistics
import time
import typing
from pathlib import Path

import numpy as np

from bench.serve_batch_standin import serve_batch_run, stub_ray_serve_if_missing

stub_ray_serve_if_missing()  # before the segmenter package imports ray.serve (the script decides real or not)

import torch  # noqa: E402

from bench.gpu_profile import kernel_profile  # noqa: E402
from bench.gpu_timing import ms, peak_mb, sync, timed  # noqa: E402
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from deployments.segmenter.sam3.compile import batch_buckets  # noqa: E402
from deployments.segmenter.sam3.encoder import image_id  # noqa: E402
from sam3d_common.settings import Sam3Settings  # noqa: E402


def fresh_images(n, size, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def measure_lever(name, encode, size, device, args, report):
    """encode(images, ids) → embeddings. Batch 1 latency, batch 8/16 throughput and peak, @serve.batch."""
    out = {}
    img = fresh_images(1, size, 0)[0]
    out["encode_bs1"] = ms(timed(lambda: encode([img], ["bs1"]), device, iters=args.iters))
    for bs in args.batch_sizes:
        batch, ids = fresh_images(bs, size, bs), [f"b{i}" for i in range(bs)]
        times = timed(lambda: encode(batch, ids), device, warmup=2, iters=max(3, args.iters // 2))
        out[f"direct_bs{bs}"] = {"images_per_s": round(bs / statistics.median(times), 2),
                                 "batch_ms": round(1000 * statistics.median(times), 2),
                                 "peak_mb": peak_mb(device, lambda: encode(batch, ids))}
    images = fresh_images(args.requests, size, 100)
    for j, max_batch in enumerate(args.serve_max_batches):
        for i, mode in enumerate(args.serve_modes.split(",")):  # the first of each is the table's "serve_batch"
            run = asyncio.run(serve_batch_run(encode, images, args.concurrency, max_batch, args.wait_s,
                                              key=image_id, real_serve=args.real_serve, mode=mode))
            out[serve_key(mode if i else None, max_batch if j else None)] = {
                **run, "max_batch": max_batch, "concurrency": args.concurrency}
    report["levers"][name] = out
    print("lever", name, json.dumps(out), flush=True)
    if args.json_out:  # as it goes: a run stopped by its time limit keeps what it measured
        Path(args.json_out).write_text(json.dumps(report, indent=2))


def serve_key(mode: str | None = None, max_batch: int | None = None) -> str:
    """A lever's @serve.batch figure: "serve_batch" for the first --serve-modes entry at the first
    --serve-max-batch, "_<mode>" for the other modes, "_mb<n>" for the other max batch sizes."""
    return "_".join(["serve_batch", *([mode] if mode else []), *([f"mb{max_batch}"] if max_batch else [])])


def first_request(settings, models, size, device, max_batch):
    """A replica's start (constructor: compilation and warm-up when on) and its first /v1/embed."""
    models.compiled = None
    sync(device)
    t0 = time.perf_counter()
    backend = Sam3Segmenter(settings, models=models, max_batch_size=max_batch)
    sync(device)
    t1 = time.perf_counter()
    emb = backend.embed(fresh_images(1, size, 4242)[0])
    backend.embedding_payload(emb)
    sync(device)
    t2 = time.perf_counter()
    return backend, {"constructor_s": round(t1 - t0, 2), "first_embed_request_ms": round(1000 * (t2 - t1), 1)}


# --fp8 / --fp8-tensor / --fp8-static / --fused-gelu → the settings that swap the ViT's modules, in run order
MODEL_LEVERS = {"fp8": {"vit_fp8": True, "vit_fp8_scaling": "row"}, "fp8_tensor": {"vit_fp8": True, "vit_fp8_scaling": "tensor"},
                "fp8_static": {"vit_fp8": True, "vit_fp8_scaling": "static"},
                "fused_gelu": {"vit_fused_gelu": True}}


def model_lever(kind, args, base, bf16_backend, models, size, device, compile_backend, report, scope="vit"):
    """The ViT with modules swapped by settings (MODEL_LEVERS[kind]: fc1 and GELU fused, or FP8 linears),
    compiled in the first --compile-modes mode (eager if none) with compile_scope `scope`, and its agreement with the bf16 model:
    backbone relative error and click-mask IoU on random points. The swap is undone afterwards (the
    backbone's children put back), so the levers can follow one another on the shared model."""
    from deployments.segmenter.base import Point, SegmentPrompt

    images = fresh_images(4, size, 77)
    rng = np.random.default_rng(5)
    prompts = [SegmentPrompt(points=[Point(int(x), int(y), 1)]) for x, y in rng.integers(0, size, (8, 2))]
    ref = [bf16_backend.encode_batch([im], [f"r{i}"])[0] for i, im in enumerate(images)]
    ref_masks = [[bf16_backend.segment_with_embedding(e, p).mask for p in prompts] for e in ref]
    mode = next((m for m in args.compile_modes.split(",") if m), None)
    torch._dynamo.reset()
    backbone = models.detector.vision_encoder.backbone
    undo = [(parent, name, child) for parent in backbone.modules() for name, child in parent.named_children()]
    # With --cuda-graph the encoder is replayed from graphs too (compared with compile_<mode>_graph).
    graph = bool(args.cuda_graph and mode)
    frozen = bool(args.lever_freezing and mode)
    dynamic = bool(args.lever_dynamic and mode)
    settings = Sam3Settings(**base, **MODEL_LEVERS[kind], compile="on" if mode else "off", cuda_graph=graph,
                            cudnn_benchmark=args.lever_cudnn,
                            **({"compile_mode": mode, "compile_backend": compile_backend,
                                "compile_freezing": frozen, "compile_dynamic_batch": dynamic,
                                "compile_scope": scope} if mode else {}))
    flags = [f for f, on in (("frozen", frozen), ("cudnn", args.lever_cudnn), ("dynamic", dynamic)) if on]
    name = f"{kind}_" + (lever_name(mode, scope, flags, graph) if mode else "_".join(["eager", *flags]))
    torch.backends.cudnn.benchmark = False  # process-wide: what an earlier :cudnn variant set
    try:
        try:
            backend, report[f"first_request_{name}"] = first_request(settings, models, size, device, args.max_batch)
        except Exception as exc:  # noqa: BLE001 - e.g. a GPU without FP8
            report["levers"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print("lever", name, "failed:", report["levers"][name]["error"], flush=True)
            return
        measure_lever(name, backend.encode_batch, size, device, args, report)
        if graph:
            graph_figures(name, backend, device, report)
        if device.type == "cuda":
            # Where the lever's time goes at batch 1 (for FP8: matrix multiplies against the activations' quantisation).
            batch = fresh_images(1, size, 901)
            try:
                report[f"kernel_profile_{name}"] = kernel_profile(lambda: backend.encode_batch(batch, ["q"]),
                                                                  lambda: sync(device))
            except Exception as exc:  # noqa: BLE001 - a profiler that cannot see into graph replays
                report[f"kernel_profile_{name}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print(f"kernel_profile_{name}", json.dumps(report[f"kernel_profile_{name}"]), flush=True)
        rel, ious = [], []
        for i, (im, e0) in enumerate(zip(images, ref)):
            e1 = backend.encode_batch([im], [f"f{i}"])[0]
            a, b = e0.backbone.float(), e1.backbone.float()
            rel.append(float((b - a).norm() / a.norm()))
            for p, m0 in zip(prompts, ref_masks[i]):
                m1 = backend.segment_with_embedding(e1, p).mask
                union = int((m0 | m1).sum())
                ious.append(1.0 if union == 0 else int((m0 & m1).sum()) / union)
        report["levers"][name]["agreement_vs_bf16"] = {
            "backbone_rel_error_mean": round(float(np.mean(rel)), 4), "mask_iou_mean": round(float(np.mean(ious)), 4),
            "mask_iou_min": round(float(np.min(ious)), 4), "masks": len(ious), "random_weights": True}
        print(f"{kind} agreement", json.dumps(report["levers"][name]["agreement_vs_bf16"]), flush=True)
    finally:
        for parent, child_name, child in undo:
            setattr(parent, child_name, child)
        models.compiled = None


def graph_figures(name: str, backend, device, report: dict) -> None:
    """What the CUDA-graph lever did, from the backend's own counters: buckets captured, captures,
    replays (warm-up and measurement), capture seconds; `used` False (and why) where nothing replayed."""
    stats = backend.describe()["compiled_vit"]["cuda_graph"] or {}
    out = {"used": bool(stats.get("batch_sizes")) and stats.get("replays", 0) > 0, **stats}
    if not out["used"]:
        out["why_not"] = ("not on CUDA: the setting does nothing there, this lever ran the compiled path"
                          if device.type != "cuda" else "no capture succeeded (the replica's log says why)")
    report["levers"][name]["cuda_graph"] = out
    print("cuda_graph", name, json.dumps(out), flush=True)


def compiled_levers(args, base, models, size, device, compile_backend, report):
    """The compiled variants, one at a time (dynamo's caches reset in between), and a kernel profile of
    the last one without a CUDA graph. With --cuda-graph, each compiled variant is followed by itself
    with cuda_graph on (its own compile of the buckets, inductor's caches warm from the one before);
    with --graph-only as well, only the graphed one runs."""
    variants = args.compile_variants or ",".join(f"{m}:vit" for m in args.compile_modes.split(",") if m)
    runs = [(v, graph) for v in variants.split(",") if v
            for graph in (((True,) if args.graph_only else (False, True))
                          if args.cuda_graph else (False,))]
    profiled = next((r for r in reversed(runs) if not r[1]), None)
    for variant, graph in runs:
        mode, scope, *flags = variant.split(":")
        torch._dynamo.reset()
        name = lever_name(mode if compile_backend == "inductor" else compile_backend, scope, flags, graph)
        settings = Sam3Settings(**base, compile="on", compile_mode=mode, compile_backend=compile_backend,
                                compile_scope=scope, cuda_graph=graph, compile_freezing="frozen" in flags,
                                cudnn_benchmark="cudnn" in flags, encoder_folding="unfolded" not in flags,
                                compile_dynamic_batch="dynamic" in flags)
        torch.backends.cudnn.benchmark = False  # process-wide: a :cudnn variant must not carry into the next
        try:
            backend_c, report[f"first_request_{name}"] = first_request(settings, models, size, device, args.max_batch)
        except Exception as exc:  # noqa: BLE001
            report["levers"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print("lever", name, "failed:", report["levers"][name]["error"], flush=True)
            continue
        report[f"first_request_{name}"]["buckets"] = list(batch_buckets(args.max_batch))
        if graph:
            stats = backend_c.describe()["compiled_vit"]["cuda_graph"] or {}
            report[f"first_request_{name}"]["cuda_graph_capture_s"] = stats.get("capture_s")
        print(f"first_request_{name}", json.dumps(report[f"first_request_{name}"]), flush=True)
        measure_lever(name, backend_c.encode_batch, size, device, args, report)
        if graph:
            graph_figures(name, backend_c, device, report)
        if (variant, graph) == profiled:
            report["kernel_profile"] = {"lever": name}
            for bs in (1, max(args.batch_sizes or [1])):
                batch, ids = fresh_images(bs, size, 900 + bs), [f"p{i}" for i in range(bs)]
                report["kernel_profile"][f"bs{bs}"] = kernel_profile(lambda: backend_c.encode_batch(batch, ids),
                                                                     lambda: sync(device))
            print("kernel_profile", json.dumps(report["kernel_profile"]), flush=True)
    models.compiled = None


# compile_freezing, cudnn_benchmark, encoder_folding off, compile_dynamic_batch
VARIANT_FLAGS = ("frozen", "cudnn", "unfolded", "dynamic")
MODES = typing.get_args(Sam3Settings.model_fields["compile_mode"].annotation)
SCOPES = typing.get_args(Sam3Settings.model_fields["compile_scope"].annotation)


def bad_variant(variants: str) -> str | None:
    """Why a --compile-variants entry can't run (an unknown mode, scope or flag), checked before any
    model loads, so a typo costs nothing on the GPU machine instead of silently measuring the default."""
    for variant in filter(None, variants.split(",")):
        mode, scope, *flags = variant.split(":") + ([] if ":" in variant else [""])
        if mode not in MODES or scope not in SCOPES or set(flags) - set(VARIANT_FLAGS):
            return (f"{variant!r} is not mode:scope[:flag...] with mode in {MODES}, scope in {SCOPES}, "
                    f"flags in {VARIANT_FLAGS}")
    return None


def lever_name(mode: str, scope: str, flags=(), graph: bool = False) -> str:
    """A compiled lever's name in the report: compile_<mode>[_<scope>][_<flag>...][_graph]."""
    return "_".join([f"compile_{mode}", *([scope] if scope != "vit" else []), *flags, *(["graph"] if graph else [])])
