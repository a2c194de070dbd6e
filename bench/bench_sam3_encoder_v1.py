"""SAM 3 image encoder on a GPU: latency, batched throughput with and without @serve.batch, peak memory,
browser payload size and fidelity, click-decoder latency. Full-size model at random initialisation
(transformers' Sam3Config defaults: ViT-L/14 at 1008 px, 72x72 tokens, FPN 256 channels).

    python -m bench.bench_sam3_encoder                      # CUDA, bf16, full size
    python -m bench.bench_sam3_encoder --tiny --device cpu  # a smoke run of the same code on the CPU

The @serve.batch runs drive the real Segmenter deployment class in this process: its `_embedding` method
(cache, in-flight sharing, then the @serve.batch encoder) with a Serve replica context installed, as in a
replica; "without @serve.batch" is the same method with no replica context, which encodes each request on
its own in a thread. No Ray cluster is started (the GPU machine has none).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from deployments.segmenter import Segmenter  # noqa: E402
from deployments.segmenter.base import Point, SegmentPrompt  # noqa: E402
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from deployments.segmenter.sam3.encoder import pixel_values  # noqa: E402
from tests.support.sam3_fidelity import codec_fidelity, random_prompts  # noqa: E402
from tests.support.sam3_testing import random_init_models, tiny_tokenizer, tiny_video_config  # noqa: E402
from sam3d_common.settings import EncoderBatching, Sam3Settings  # noqa: E402
from bench.gpu_timing import gpu_work_done, peak_mb, sync, timed  # noqa: E402
from bench.serve_batch_standin import install_replica_context  # noqa: E402


def ms(times):
    return {"median_ms": round(1000 * statistics.median(times), 2), "p90_ms": round(1000 * np.quantile(times, 0.9), 2)}


def clear_replica_context():
    from ray.serve import context

    context._INTERNAL_REPLICA_CONTEXT = None


async def serving_run(deployment, images, concurrency: int, batched: bool, max_batch: int, wait_s: float):
    """Requests for distinct images, `concurrency` in flight; → images/s and per-request latency.

    All runs share one event loop: a @serve.batch queue lives on the loop that first used it.
    """
    sizes = []
    real = deployment.backend.encode_batch

    def counting(batch, ids=None):
        sizes.append(len(batch))
        return real(batch, ids)

    deployment.backend.encode_batch = counting
    if batched:
        install_replica_context(deployment, max_ongoing=max(16, concurrency))
        deployment._encode_batched.set_max_batch_size(max_batch)
        deployment._encode_batched.set_batch_wait_timeout_s(wait_s)
    sem = asyncio.Semaphore(concurrency)
    lat = []

    async def one(img):
        async with sem:
            t = time.perf_counter()
            await deployment._embedding(img)
            # Done when the result exists (without holding a thread of the pool the deployment uses).
            await gpu_work_done(0.001)
            lat.append(time.perf_counter() - t)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(img) for img in images))
        wall = time.perf_counter() - t0
    finally:
        clear_replica_context()
        deployment.backend.encode_batch = real
    return {
        "images_per_s": round(len(images) / wall, 2),
        "mean_batch": round(float(np.mean(sizes)), 2),
        "latency": ms(lat),
    }


async def serving_runs(deployment, images, concurrency: int, wait_s: float) -> dict:
    async def no_announce(_embedding_id):  # Serve's multiplexed routing needs a controller; none here
        return None

    deployment._announce = no_announce
    await serving_run(deployment, images[:8], concurrency, False, 1, 0.0)  # warm-up
    out = {"without_serve_batch": await serving_run(deployment, images, concurrency, False, 1, 0.0)}
    print("serving without", json.dumps(out["without_serve_batch"]), flush=True)
    for mb in (1, 2, 4, 8):
        out[f"serve_batch_max_{mb}"] = await serving_run(deployment, images, concurrency, True, mb, wait_s)
        print("serving with max", mb, json.dumps(out[f"serve_batch_max_{mb}"]), flush=True)
    key = f"serve_batch_max_8_concurrency_{2 * concurrency}"
    out[key] = await serving_run(deployment, images, 2 * concurrency, True, 8, wait_s)
    print("serving", key, json.dumps(out[key]), flush=True)
    return out


def fresh_images(n, size, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tiny", action="store_true", help="tiny config (CPU smoke run)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    report: dict = {"args": vars(args)}
    import transformers

    report["env"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
    }
    print("env", json.dumps(report["env"]), flush=True)

    from transformers import Sam3VideoConfig

    config = tiny_video_config() if args.tiny else Sam3VideoConfig()
    t = time.perf_counter()
    models = random_init_models(config, device=args.device, dtype=args.dtype)
    models.tokenizer = tiny_tokenizer()  # random text encoder: any valid ids time the same
    device = models.device
    sync(device)
    vit = config.detector_config.vision_config.backbone_config
    n_det = sum(p.numel() for p in models.detector.parameters())
    n_trk = sum(p.numel() for n, p in models.tracker.named_parameters() if not n.startswith("vision_encoder.backbone"))
    report["model"] = {
        "build_s": round(time.perf_counter() - t, 1),
        "image_size": vit.image_size,
        "patch_size": vit.patch_size,
        "vit_hidden": vit.hidden_size,
        "vit_layers": vit.num_hidden_layers,
        "fpn_channels": config.detector_config.vision_config.fpn_hidden_size,
        "params_detector_M": round(n_det / 1e6, 1),
        "params_tracker_extra_M": round(n_trk / 1e6, 1),
        "dtype": str(models.dtype),
        "weights_mb": round(torch.cuda.memory_allocated() / 2**20) if device.type == "cuda" else None,
    }
    print("model", json.dumps(report["model"]), flush=True)

    settings = Sam3Settings(device=args.device, dtype=args.dtype, embedding_cache_mb=0, score_threshold=0.0,
                            onnx_cache_dir=str(ROOT / "build" / "onnx"))
    backend = Sam3Segmenter(settings, models=models)
    size = models.pixels.size
    img = fresh_images(1, size, 0)[0]
    emb = backend.encode_batch([img])[0]
    report["features"] = {k: v for k, v in emb.shapes().items()}
    print("features", json.dumps(report["features"]), flush=True)

    # 1. latency per image at the native resolution (ViT alone; the whole encode: upload, resize/normalise,
    #    ViT, tracker neck); 2. throughput at batch sizes 1..8 with batches formed by the caller.
    with torch.inference_mode():
        px = pixel_values(models, [img])
        vit_only = timed(lambda: models.detector.vision_encoder.backbone(px), device, iters=args.iters)
    photo = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    report["latency_bs1"] = {
        "vit_only": ms(vit_only),
        "encode": ms(timed(lambda: backend.encode_batch([img]), device, iters=args.iters)),
        "encode_1920x1080": ms(timed(lambda: backend.encode_batch([photo]), device, iters=args.iters)),
    }
    print("latency_bs1", json.dumps(report["latency_bs1"]), flush=True)
    report["direct_batches"] = {}
    for bs in (1, 2, 4, 8):
        batch = fresh_images(bs, size, bs)
        times = timed(lambda: backend.encode_batch(batch), device, warmup=2, iters=max(5, args.iters // 2))
        peak = peak_mb(device, lambda: backend.encode_batch(batch))
        report["direct_batches"][bs] = {
            "images_per_s": round(bs / statistics.median(times), 2),
            "batch_ms": round(1000 * statistics.median(times), 2),
            "peak_mb": peak,
        }
        print("direct", bs, json.dumps(report["direct_batches"][bs]), flush=True)

    # 3. serving: distinct images, `concurrency` requests in flight, through the deployment's code path.
    deployment = Segmenter.func_or_class({"backend": "grabcut"})
    deployment.backend = backend  # the random full-size SAM 3 (no weights to load)
    images = fresh_images(args.requests, size, 100)
    report["serving"] = asyncio.run(serving_runs(deployment, images, args.concurrency, EncoderBatching().batch_wait_timeout_s))

    # 4. browser payload: bytes and codec fidelity with the full-size decoder (fp32 copy of the tracker).
    fid_img = fresh_images(1, size, 7)[0]
    yy, xx = np.mgrid[0:size, 0:size] / size
    fid_img[: size // 2, : size // 2] = (200, 30, 30)
    fid_img = (fid_img * 0.3 + 255 * 0.7 * np.stack([xx, yy, 0.5 + 0.5 * np.sin(9 * xx)], -1)).astype(np.uint8)
    fid_emb = backend.encode_batch([fid_img])[0]
    feats = fid_emb.click_features()
    import copy

    tracker32 = copy.deepcopy(models.tracker).float()
    report["payload"] = {}
    prompts = random_prompts(size, count=32, seed=1)
    for profile in ("fp16", "int8", "compact"):
        payload = backend.embedding_payload(fid_emb, profile)  # device → host copy, quantise, deflate
        r = codec_fidelity(tracker32, feats, size, profile, prompts)
        r["payload_ms"] = ms(timed(lambda: backend.embedding_payload(fid_emb, profile), torch.device("cpu"), warmup=1, iters=3))
        r["payload_bytes"] = len(payload)
        report["payload"][profile] = r
        print("payload", profile, json.dumps(r), flush=True)
    del tracker32

    # 5. prompts on a cached embedding (server side), and the ONNX click decoder with onnxruntime (CPU).
    cached = backend.encode_batch([img])[0]
    click = SegmentPrompt(points=[Point(size * 0.4, size * 0.5, 1)])
    report["prompt_ms"] = {
        "click_torch": ms(timed(lambda: backend.segment_with_embedding(cached, click), device, iters=args.iters)),
        "text_detector_heads": ms(timed(lambda: backend.segment_with_embedding(cached, SegmentPrompt(label="mug")), device, iters=args.iters)),
    }
    print("prompt_ms", json.dumps(report["prompt_ms"]), flush=True)
    if not args.skip_onnx:
        from deployments.segmenter.sam3.onnx_decoder import prompt_arrays
        from tests.support.onnx_click_decoder import OnnxClickDecoder

        t = time.perf_counter()
        path = backend.click_decoder_path()
        dec = OnnxClickDecoder(path)
        coords, labels = prompt_arrays([(size * 0.4, size * 0.5, 1)], None, (size, size), size)
        ort_times = timed(lambda: dec(feats, coords, labels), torch.device("cpu"), warmup=2, iters=10)
        report["onnx"] = {"export_s": round(time.perf_counter() - t, 1), "file_bytes": path.stat().st_size,
                          "ort_cpu_click": ms(ort_times), "ort_threads": os.cpu_count()}
        print("onnx", json.dumps(report["onnx"]), flush=True)
    if device.type == "cuda":
        report["peak_mb_total"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print("REPORT " + json.dumps(report), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
