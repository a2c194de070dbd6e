"""Serve's own latency switches, side by side: the local config as shipped (app A at /) and the
same config with Serve environment flags set on its replicas (app B at /b, through the app's
runtime_env), in one Serve on one proxy, requests alternating A, B, pacing off.

Default flags: RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 and
RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 (user code and the handle router on the replica's main
event loop: no thread hop per call or per streamed item). Both apps reserve half the CPUs the
config gives each deployment, so the two fit the 2 logical CPUs of the local Ray.

    python -m bench.bench_serve_flags [--runs 7] [--flags '{"NAME": "0"}']
                                      [--out bench/results/serve_flags.txt]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


from bench.bench_local import PHOTOS, deploy, start_local_serve, stop_local_serve, write_results  # noqa: E402
from serve_app.client import iter_events, new_client  # noqa: E402
from tests.conftest import local_config  # noqa: E402
from tests.photos import photo_bytes  # noqa: E402

FLAGS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def run(url: str, name: str, http) -> dict:
    """ms from sending to the first geometry frame's pipeline start ('before'), to `complete`,
    and each stage as the pipeline timed it."""
    t0 = time.monotonic()
    geo = done = None
    for arrival, ev in iter_events(url, image=photo_bytes(name), client=http, **PHOTOS[name]):
        if ev["type"] == "geometry" and geo is None:
            geo = arrival - t0 - ev["t"]
        elif ev["type"] == "complete":
            done = (arrival - t0, ev["timings"])
    return {"before": 1e3 * geo, "complete": 1e3 * done[0], **{k: 1e3 * v for k, v in done[1].items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--flags", type=json.loads, default=FLAGS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/serve_flags.txt")
    a = ap.parse_args()
    base = start_local_serve()
    shipped = local_config(tempfile.mkdtemp(), min_step_s=0.0)
    for d in shipped["applications"][0]["deployments"]:
        d["ray_actor_options"]["num_cpus"] /= 2
    flagged = copy.deepcopy(shipped)
    app = flagged["applications"][0]
    app.update(name="sam3d_flags", route_prefix="/b")
    app["args"]["store"] = {"url": tempfile.mkdtemp()}
    app["runtime_env"] = {"env_vars": {"PYTHONPATH": str(ROOT), **a.flags}}
    lines = [f"# A: serve_config.local.yaml (min_step_s 0); B: the same with {a.flags} on its replicas; "
             f"one Serve, alternating, median of {a.runs} per side, ms; {os.cpu_count()} CPU cores, "
             f"load average at start {os.getloadavg()[0]:.1f}", ""]
    http = new_client(300.0)
    try:
        deploy(shipped)
        deploy(flagged)
        for name in PHOTOS:
            sides = {"A": (base, []), "B": (base + "/b", [])}
            for url, _ in sides.values():
                run(url, name, http)  # warm-up
            for _ in range(a.runs):
                for url, runs in sides.values():
                    runs.append(run(url, name, http))
            for side, (_, runs) in sides.items():
                lines.append(f"{name:<10} {side}  " + "  ".join(
                    f"{k} {statistics.median(r[k] for r in runs):6.1f}" for k in runs[0]))
            print("\n".join(lines[-2:]), flush=True)
        lines.append(f"load average at the end {os.getloadavg()[0]:.1f} (other work on the same cores "
                     "inflates every figure)")
    finally:
        http.close()
        stop_local_serve()
    write_results(a.out, lines)


if __name__ == "__main__":
    main()
