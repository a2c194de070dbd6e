"""The whole graph under load: objects per minute, time to first voxel frame and to GLB, at a
fixed request rate and at saturation, with the replicas each deployment ran.

    python -m bench.bench_graph_load --dry              # embedded backends, tiny load (CI runs
                                                        # its load path against a test app)
    python -m bench.bench_graph_load --config serve_config.yaml --requests 64 --rate 0.5 \
        --concurrency 16 --out bench/results/graph_load_<kind>.json   # on an N-GPU host

It starts Ray and Serve on this host with the config (loopback HTTP), sends photos from
scikit-image's samples over HTTP, and reads every stream to its end. GPU utilisation per device
comes from NVML where the host has it (null otherwise). Multi-GPU figures (issue 17) need a host
with several GPUs, Ray and the models installed; none was lent where this was written.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo_bytes(name: str) -> bytes:
    import io

    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buf, format="PNG")
    return buf.getvalue()


def one_request(base_url: str, image: bytes) -> dict:
    """Send one photo and read its stream; times are from the request's start."""
    from serve_app.client import GenerateError, iter_events

    started = time.monotonic()
    out = {"first_frame_s": None, "glb_s": None, "ok": False, "error": None}
    try:
        for t, ev in iter_events(base_url, image=image, timeout=600):
            kind = ev.get("type")
            if kind in ("geometry", "appearance") and out["first_frame_s"] is None:
                out["first_frame_s"] = t - started
            elif kind == "glb_ready":
                out["glb_s"] = t - started
            elif kind == "complete":
                out["ok"] = True
            elif kind == "error":
                out["error"] = ev.get("code")
    except GenerateError as exc:
        out["error"] = str(exc)[:200]
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))], 3)


def summarise(results: list[dict], wall_s: float) -> dict:
    done = [r for r in results if r["ok"]]
    first = [r["first_frame_s"] for r in done if r["first_frame_s"] is not None]
    glb = [r["glb_s"] for r in done if r["glb_s"] is not None]
    return {"requests": len(results), "succeeded": len(done),
            "errors": sorted({str(r["error"]) for r in results if not r["ok"]}),
            "wall_s": round(wall_s, 2), "objects_per_min": round(60 * len(done) / wall_s, 2) if wall_s else None,
            "first_frame_s": {"p50": _pct(first, 0.5), "p95": _pct(first, 0.95)},
            "glb_s": {"p50": _pct(glb, 0.5), "p95": _pct(glb, 0.95),
                      "mean": round(statistics.fmean(glb), 3) if glb else None}}


async def run_load(base_url: str, requests: int, *, rate: float | None = None,
                   concurrency: int | None = None) -> dict:
    """`rate` requests/s open loop, or `concurrency` streams kept in flight (saturation)."""
    images = [photo_bytes(name) for name in PHOTOS]
    results: list[dict] = []
    started = time.monotonic()

    async def send(i: int):
        results.append(await asyncio.to_thread(one_request, base_url, images[i % len(images)]))

    if rate:
        tasks = []
        for i in range(requests):
            tasks.append(asyncio.create_task(send(i)))
            await asyncio.sleep(1.0 / rate)
        await asyncio.gather(*tasks)
    else:
        queue = iter(range(requests))

        async def worker():
            for i in queue:
                await send(i)

        await asyncio.gather(*(worker() for _ in range(concurrency or 1)))
    return summarise(results, time.monotonic() - started)


class GpuSampler:
    """Mean utilisation per GPU over a phase, from NVML; empty where there is none."""

    def __init__(self, period_s: float = 0.5):
        self.period_s, self.samples, self._stop = period_s, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001 - no NVML: no GPU figures
            self._nvml, self._handles = None, []

    def __enter__(self):
        if self._handles:
            threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self):
        while not self._stop.wait(self.period_s):
            self.samples.append([self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles])

    def __exit__(self, *exc):
        self._stop.set()

    def mean(self) -> list[float]:
        if not self.samples:
            return []
        return [round(statistics.fmean(s[i] for s in self.samples), 1) for i in range(len(self._handles))]


def replicas(app: str) -> dict:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return {}
    return {name: {state: n for state, n in d.replica_states.items()} for name, d in status.deployments.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "serve_config.local.yaml"))
    ap.add_argument("--dry", action="store_true", help="embedded backends, tiny load, pacing off")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--rate", type=float, default=1.0, help="requests/s of the fixed-rate phase")
    ap.add_argument("--concurrency", type=int, default=8, help="streams in flight at saturation")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.dry:
        a.requests, a.rate, a.concurrency = 4, 2.0, 2

    import ray
    from ray import serve

    from serve_app import launch

    cfg = launch.read_config(a.config)
    if a.dry:
        inflation = cfg["applications"][0]["args"]["reconstructor"].setdefault("inflation", {})
        inflation["min_step_s"] = 0
    port = 18000 + int(time.time()) % 1000
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    app = cfg["applications"][0]["name"]
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        t = time.monotonic()
        serve.start(http_options=cfg["http_options"])
        launch.deploy(cfg)
        report = {"config": a.config, "dry": a.dry, "start_s": round(time.monotonic() - t, 1),
                  "gpus": ray.cluster_resources().get("GPU", 0)}
        base = f"http://127.0.0.1:{port}{(cfg['applications'][0].get('route_prefix') or '/').rstrip('/')}"
        for phase, kwargs in (("fixed_rate", {"rate": a.rate}), ("saturation", {"concurrency": a.concurrency})):
            with GpuSampler() as gpu:
                report[phase] = asyncio.run(run_load(base, a.requests, **kwargs))
            report[phase]["gpu_util_pct"] = gpu.mean()
            report[phase]["replicas_after"] = replicas(app)
            print(phase, json.dumps(report[phase]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
