"""A slow reader against the same long reconstruction, paced (the default) and unpaced,
side by side in one Serve instance: growth of the proxy's and replicas' memory, bytes the
server queued, frames sent and coalesced.

    python -m bench.bench_slow_reader [--out bench/results/slow_reader.txt]
"""
from __future__ import annotations

import argparse
import base64
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from tests.conftest import deploy_config, free_port, local_config  # noqa: E402
from tests.photos import photo_bytes  # noqa: E402
from tests.raw_http import RawStream, serve_rss_mb  # noqa: E402
from serve_app.client import iter_events  # noqa: E402
from serve_app.protocol import parse_sse  # noqa: E402

STEPS = 200
BODY = {"image_b64": base64.b64encode(photo_bytes("coffee")).decode(), "encoding": "seed"}
VARIANTS = {
    "paced": {"max_frames_per_s": 10, "max_bytes_per_s": 1_000_000},
    "unpaced": {"max_frames_per_s": 1000, "max_bytes_per_s": 1_000_000_000},
}


def app_config(name: str, stream: dict) -> dict:
    cfg = local_config(tempfile.mkdtemp(), geometry_steps=STEPS, appearance_steps=STEPS, min_step_s=0.02)
    app = cfg["applications"][0]
    app["name"], app["route_prefix"] = name, f"/{name}"
    app["args"]["stream"] = stream
    for d in app["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0.01}
        if d["name"] == "Reconstructor":
            d["max_ongoing_requests"] = 2
    return cfg


def slow_read(base: str, name: str) -> dict:
    list(iter_events(f"{base}/{name}", image=photo_bytes("coffee")))  # warm the replicas
    handle = serve.get_deployment_handle("Reconstructor", app_name=name)
    before = serve_rss_mb(name)
    peak = dict(before)
    s = RawStream(base, f"/{name}/v1/generate", BODY, rcvbuf=4096)
    s.read(4096)
    read = 0
    t0 = time.monotonic()
    while handle.stats.remote().result()["active"]:
        read += len(s.read(1024))
        for k, v in serve_rss_mb(name).items():
            peak[k] = max(peak.get(k, 0.0), v)
        time.sleep(0.25)
    producing = time.monotonic() - t0
    s.read_all()
    s.close()
    events = parse_sse(s.body().decode())
    frames = [e for e in events if e["type"] in ("geometry", "appearance")]
    return {"growth_mb": sum(peak[k] - before.get(k, 0.0) for k in peak),
            "body_bytes": len(s.body()), "read_while_producing": read, "seconds": producing,
            "frames": len(frames), "coalesced": events[-1].get("coalesced_frames", 0),
            "complete": events[-1]["type"] == "complete"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/slow_reader.txt")
    a = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    try:
        cfg = {"applications": []}
        for name, stream in VARIANTS.items():
            cfg["applications"] += app_config(name, stream)["applications"]
        deploy_config(cfg)
        res = {name: slow_read(base, name) for name in VARIANTS}
    finally:
        serve.shutdown()
        ray.shutdown()
    lines = [f"# a reader at ~4 KB/s against a {2 * STEPS}-step reconstruction of coffee.png, seed "
             "encoding (full frames), proxy + all replicas of the app", ""]
    for name, r in res.items():
        lines.append(f"{name:<8} memory growth {r['growth_mb']:6.1f} MB   stream {r['body_bytes']:>11,} B   "
                     f"frames sent {r['frames']:>3}   coalesced {r['coalesced']:>3}   "
                     f"read while producing {r['read_while_producing']:>7,} B in {r['seconds']:.1f} s   "
                     f"complete {r['complete']}")
    p, u = res["paced"], res["unpaced"]
    lines += ["", f"unpaced / paced: memory growth {u['growth_mb'] / max(p['growth_mb'], 0.1):.1f}x, "
              f"bytes queued {u['body_bytes'] / p['body_bytes']:.1f}x"]
    print("\n".join(lines))
    a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
