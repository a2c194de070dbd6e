"""Where Serve's extra time goes: one request through HTTP + Serve vs the in-process pipeline.

For each photo, runs the request alternately through Serve over HTTP and through the same
pipeline in this process (LocalClients, no Ray, no HTTP), pacing off, and splits the time to
`complete` by the pipeline's own clock (each event's `t`, seconds since the pipeline began).
Two HTTP sides, side by side: serve_app.client's iter_events as it is (a connection per
request, one TLS context per process), and a plain httpx.Client built per request, as the
client did before (httpx loads the CA bundle for every Client it builds):

  before the pipeline   client send, proxy, ingress parse, decode and validate
                        (arrival of the first geometry frame minus its `t`)
  segmenter, reconstructor, mesh baker
                        each stage as the pipeline timed it (`complete.timings`): over Serve
                        that includes the handle call, argument and result transfer
  after the pipeline    `complete` reaching the client (arrival minus `t` minus the first part)

A fourth side, `colocated`, answers what running the embedded stages inside the ingress would
buy: the same FastAPI app and pipeline as the product's ingress, deployed as one Serve
deployment (this module's `build_colocated`, its own app under /colocated) over the stages in
its own process (serve_app.local.LocalClients) instead of stage handles. Only the HTTP proxy hop
and the request's parsing remain; what it costs is the floor of any design that keeps HTTP
through Serve. Not a product mode: the product keeps one deployment per stage.

    python -m bench.bench_serve_overhead [--runs 7] [--out bench/results/serve_overhead.txt]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx  # noqa: E402

from bench.bench_local import PHOTOS, deploy, start_local_serve, stop_local_serve, write_results  # noqa: E402
from tests.conftest import local_config  # noqa: E402
from tests.photos import photo_bytes  # noqa: E402
from serve_app.client import iter_events  # noqa: E402
from serve_app.local import LocalClients  # noqa: E402
from serve_app.schemas import GenerateRequest  # noqa: E402
from serve_app.service import GenerateService  # noqa: E402
from serve_app.prepare import prepare_job  # noqa: E402
from serve_app.run import start_run  # noqa: E402
from serve_app.wire import encode_and_pace  # noqa: E402
from sam3d_common.settings import load_settings  # noqa: E402
from sam3d_common.store import ArtifactStore  # noqa: E402

STAGES = ("segmenter", "reconstructor", "mesh_baker")


def split(timeline: list[tuple[float, dict]]) -> dict:
    """{part: seconds} of one request from (arrival since the request began, event) pairs."""
    geo = next((a, ev) for a, ev in timeline if ev["type"] == "geometry")
    done = next((a, ev) for a, ev in timeline if ev["type"] == "complete")
    before = geo[0] - geo[1]["t"]
    out = {"before": before, **{s: done[1]["timings"][s] for s in STAGES}}
    out["after"] = done[0] - done[1]["t"] - before
    out["total"] = done[0]
    out["frames"] = sum(ev["type"] in ("geometry", "appearance") for _, ev in timeline)
    return out


def build_colocated(args: dict):
    """The product's HTTP app over stages in the same process: one Serve deployment."""
    from ray import serve

    from serve_app.ingress import build_fastapi_app

    # num_cpus 0: the product's replicas already hold the local Ray's 2 logical CPUs.
    @serve.deployment(name="ColocatedIngress", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    @serve.ingress()
    class ColocatedIngress:
        def __init__(self, settings: dict):
            self.settings = load_settings(settings)
            store = ArtifactStore(self.settings.store.url)
            self.service = GenerateService(self.settings, LocalClients(self.settings, store), store)

        def __serve_build_asgi_app__(self):
            return build_fastapi_app(self.service)

    return ColocatedIngress.bind(args)


def http_run(base: str, name: str, own_tls: bool = False) -> dict:
    """own_tls: the request through a plain httpx.Client built inside the timed window."""
    t0 = time.monotonic()
    client = httpx.Client(timeout=300.0) if own_tls else None
    try:
        return split([(a - t0, ev) for a, ev in iter_events(base, image=photo_bytes(name), client=client,
                                                            **PHOTOS[name])])
    finally:
        if client is not None:
            client.close()


def in_process_run(service: GenerateService, name: str) -> dict:
    async def run():
        t0 = time.monotonic()
        job = await prepare_job(service, GenerateRequest.model_validate(PHOTOS[name]), image_bytes=photo_bytes(name))
        stream = await start_run(service, job)
        try:
            return [(time.monotonic() - t0, ev)
                    async for ev in encode_and_pace(stream, job.encoding, "python", service.settings.stream)]
        finally:
            await stream.close()
    return split(asyncio.run(run()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/serve_overhead.txt")
    a = ap.parse_args()
    base = start_local_serve()
    cfg = local_config(tempfile.mkdtemp(), min_step_s=0.0)
    lines = [f"# Serve + HTTP vs in-process, serve_config.local.yaml with min_step_s 0, "
             f"{os.cpu_count()} CPU cores, median of {a.runs} alternating runs per side; "
             f"load average at start {os.getloadavg()[0]:.1f}", "",
             f"{'photo':<10} {'side':<11} " + " ".join(f"{p:>13}" for p in
                                                       ("before", *STAGES, "after", "complete")) + "   frames"]
    try:
        deploy(cfg)
        args = cfg["applications"][0]["args"]
        deploy({"applications": [{"name": "colocated", "route_prefix": "/colocated",
                                  "import_path": "bench.bench_serve_overhead:build_colocated",
                                  "args": args}]})
        colocated = base + "/colocated"
        ratios = {name: {} for name in PHOTOS}
        settings = load_settings(args)
        store = ArtifactStore(args["store"]["url"])
        service = GenerateService(settings, LocalClients(settings, store), store)
        for name in PHOTOS:
            http_run(base, name), in_process_run(service, name)  # warm-up
            http_run(colocated, name)  # warm-up
            sides = {"HTTP+Serve": [], "TLS/request": [], "colocated": [], "in-process": []}
            for _ in range(a.runs):
                sides["HTTP+Serve"].append(http_run(base, name))
                sides["TLS/request"].append(http_run(base, name, own_tls=True))
                sides["colocated"].append(http_run(colocated, name))
                sides["in-process"].append(in_process_run(service, name))
            med = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                   for side, runs in sides.items()}
            inproc = med["in-process"]
            for side, label in (("HTTP+Serve", "extra"), ("colocated", "colo extra")):
                med[label] = {k: med[side][k] - inproc[k] for k in inproc}
                ratios[name][side] = med[side]["total"] / inproc["total"]
            for side, m in med.items():
                lines.append(f"{name:<10} {side:<11} " + " ".join(
                    f"{m[k] * 1000:>10.0f} ms" for k in ("before", *STAGES, "after", "total"))
                    + f"   {m['frames']:g}")
            print("\n".join(lines[-len(med):]), flush=True)
        lines.append("TLS/request: a plain httpx.Client built per request (the client before); "
                     "HTTP+Serve: serve_app.client as it is; extra: HTTP+Serve minus in-process; "
                     "colocated: the same HTTP app with the stages in the ingress's process "
                     "(build_colocated); colo extra: colocated minus in-process")
        lines.append("")
        lines.append("complete over HTTP / in-process (medians): " + "; ".join(
            f"{n} {r['HTTP+Serve']:.2f}x, colocated {r['colocated']:.2f}x" for n, r in ratios.items()))
        lines.append(f"load average at the end {os.getloadavg()[0]:.1f} (other work on the same cores "
                     "inflates every figure)")
    finally:
        stop_local_serve()
    write_results(a.out, lines)


if __name__ == "__main__":
    main()
