"""@serve.batch for benchmarks run without a Serve cluster: the real decorator when Ray Serve imports (with
the replica context a replica would set), else an asyncio stand-in with its rules: a batch closes when full
or `batch_wait_timeout_s` after its first request, and at most `max_concurrent_batches` run at once, in the
order they closed, the next one forming while they run. Two ways to hand a batch to the encoder:
"pipelined", as the Segmenter deployment does (two batches at once, each holding its slot until its GPU
work is done), and "enqueue", as it did before (one at a time, a batch done once its kernels are queued,
each request then waiting for the GPU work queued so far). Where Ray Serve does not import at all, a stub
`ray.serve` with the decorators applied at import time lets the deployment modules import."""
from __future__ import annotations

import asyncio
import importlib
import sys
import time
import types
from typing import Any, Awaitable, Callable

import numpy as np

from bench.gpu_timing import gpu_work_done, ms


def stub_ray_serve_if_missing() -> bool:
    """→ True when the real ray.serve imports. Otherwise install a stub with the decorators the segmenter
    package applies at import time (none of them is exercised here)."""
    try:
        importlib.import_module("ray.serve")
        return True
    except Exception:  # noqa: BLE001 - not installed, or broken: the encoder bench does not need it
        pass

    class _Batch:
        def __init__(self, fn):
            self.fn = fn

        def set_max_batch_size(self, n):
            pass

        def set_batch_wait_timeout_s(self, s):
            pass

        def __get__(self, obj, cls=None):
            return self if obj is None else types.MethodType(self.fn, obj)

    def deployment(*args, **kwargs):
        def wrap(cls):
            cls.func_or_class = cls
            return cls
        return wrap(args[0]) if args and callable(args[0]) else wrap

    def batch(*args, **kwargs):
        return _Batch(args[0]) if args and callable(args[0]) else _Batch

    def multiplexed(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)

    def get_replica_context():
        raise RuntimeError("no replica (stubbed ray.serve)")

    serve = types.ModuleType("ray.serve")
    serve.deployment, serve.batch, serve.multiplexed, serve.get_replica_context = deployment, batch, multiplexed, get_replica_context
    ray_module = sys.modules.get("ray") or types.ModuleType("ray")
    ray_module.serve = serve
    sys.modules["ray"], sys.modules["ray.serve"] = ray_module, serve
    return False


SERVE_MODES = ("pipelined", "enqueue")


async def serve_batch_run(encode: Callable, images: list, concurrency: int, max_batch: int, wait_s: float,
                          key: Callable[[Any], str], real_serve: bool, mode: str = "pipelined",
                          queued_work_done: Callable[[], Awaitable] | None = None) -> dict:
    """Distinct images, `concurrency` in flight; each request computes its key in a thread (as the
    deployment hashes its image), then joins a batch: the real @serve.batch when `real_serve`, else the
    stand-in. encode(images, keys) runs each batch on a worker thread; `mode` (SERVE_MODES) says how the
    batch handler waits for the GPU (module docstring). queued_work_done: what an "enqueue" request awaits
    after its batch returns (default: the CUDA work queued so far, gpu_timing.gpu_work_done)."""
    from deployments.segmenter import ENCODER_CONCURRENT_BATCHES
    from deployments.segmenter.sam3.encoder import encode_until_done

    if mode not in SERVE_MODES:
        raise ValueError(f"mode {mode!r} is not one of {SERVE_MODES}")
    pipelined = mode == "pipelined"
    concurrent = ENCODER_CONCURRENT_BATCHES if pipelined else 1
    sizes, lat = [], []

    def run(batch_items):
        sizes.append(len(batch_items))
        ids, ims = zip(*batch_items)
        return encode(list(ims), list(ids))

    async def handle(items):  # pipelined: the deployment's own handler
        return await (encode_until_done(run, items) if pipelined else asyncio.to_thread(run, items))

    if real_serve:
        from ray import serve

        class Host:
            @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s, max_concurrent_batches=concurrent)
            async def go(self, items):
                return await handle(items)

        host = Host()
        install_replica_context(host, max(max_batch * concurrent, concurrency))
        submit = host.go
    else:
        queue: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(concurrent)  # max_concurrent_batches; its waiters are served in order
        loop = asyncio.get_running_loop()

        async def execute(batch):
            async with slots:
                out = await handle([item for item, _ in batch])
            for (_, fut), res in zip(batch, out):
                fut.set_result(res)

        async def form_batches():
            """One batch at a time, as @serve.batch forms them: from its first request, until full or
            wait_s later; it is handed to `execute` and the next one starts forming at once."""
            while True:
                batch = [await queue.get()]
                closes = loop.time() + wait_s
                while len(batch) < max_batch and (left := closes - loop.time()) > 0:
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), left))
                    except asyncio.TimeoutError:
                        break
                asyncio.ensure_future(execute(batch))

        former = asyncio.ensure_future(form_batches())

        async def submit(item):
            fut = loop.create_future()
            queue.put_nowait((item, fut))
            return await fut

    sem = asyncio.Semaphore(concurrency)

    async def one(img):
        async with sem:
            t = time.perf_counter()
            item_key = await asyncio.to_thread(key, img)
            await submit((item_key, img))
            if not pipelined:  # the handler returned once the batch was queued: its result exists later
                await (queued_work_done() if queued_work_done else gpu_work_done(0.0005))
            lat.append(time.perf_counter() - t)

    await asyncio.gather(*(one(im) for im in images[:max_batch]))  # warm-up
    sizes.clear(), lat.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(im) for im in images))
    wall = time.perf_counter() - t0
    if not real_serve:
        former.cancel()
    return {"images_per_s": round(len(images) / wall, 2), "mean_batch": round(float(np.mean(sizes)), 2),
            "latency": ms(lat), "real_serve_batch": real_serve, "mode": mode, "max_concurrent_batches": concurrent}


def install_replica_context(host, max_ongoing: int):
    """What a Serve replica sets before user code runs; @serve.batch reads it (real Ray Serve only)."""
    from ray.serve import context
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve._private.config import DeploymentConfig

    context._set_internal_replica_context(
        replica_id=ReplicaID("bench-replica", DeploymentID("Segmenter", "bench")), servable_object=host,
        _deployment_config=DeploymentConfig(max_ongoing_requests=max_ongoing), rank=None, world_size=1)
