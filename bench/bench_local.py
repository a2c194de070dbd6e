"""Photo → GLB on the local (embedded) config, through Serve over HTTP, like a user.

Runs each photo several times and prints the median time to the first frame, to
`complete`, and to the GLB on disk, for the local config as shipped (steps paced with
min_step_s so a viewer can watch) and with pacing off (pure compute), side by side.

    python bench/bench_local.py [--runs 5] [--out bench/results/local.txt]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from conftest import deploy_config, free_port, local_config  # noqa: E402
from photos import ROCKET_BOX, photo_bytes  # noqa: E402
from serve_app.client import iter_events  # noqa: E402

PHOTOS = {"coffee": {}, "chelsea": {}, "astronaut": {}, "rocket": {"box_prompts": [ROCKET_BOX]}}


def one_run(base: str, name: str) -> dict:
    t0 = time.monotonic()
    first = complete = None
    frames = 0
    for arrival, ev in iter_events(base, image=photo_bytes(name), **PHOTOS[name]):
        if ev["type"] in ("geometry", "appearance"):
            frames += 1
            first = first or arrival
        elif ev["type"] == "complete":
            complete = ev
            t_complete = arrival
        elif ev["type"] == "error":
            raise RuntimeError(ev["message"])
    glb = httpx.get(base + complete["model_glb_url"]).content
    t_glb = time.monotonic()
    return {"first_frame": first - t0, "complete": t_complete - t0, "glb": t_glb - t0,
            "frames": frames, "glb_bytes": len(glb), "timings": complete["timings"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/local.txt")
    a = ap.parse_args()
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    lines = [f"# photo → GLB on serve_config.local.yaml, {os.cpu_count()} CPU cores, "
             f"median of {a.runs} runs (after one warm-up run per photo)", ""]
    results = {}
    try:
        for label, pace in (("as shipped (min_step_s 0.1)", None), ("pacing off (min_step_s 0)", 0.0)):
            store = tempfile.mkdtemp()
            cfg = local_config(store) if pace is None else local_config(store, min_step_s=pace)
            deploy_config(cfg)
            for name in PHOTOS:
                one_run(base, name)  # warm-up
                runs = [one_run(base, name) for _ in range(a.runs)]
                med = {k: statistics.median(r[k] for r in runs) for k in ("first_frame", "complete", "glb")}
                stages = {k: statistics.median(r["timings"][k] for r in runs) for k in runs[0]["timings"]}
                results[(label, name)] = med
                lines.append(f"{label:<30} {name:<10} first frame {med['first_frame']:.2f} s   "
                             f"complete {med['complete']:.2f} s   GLB on disk {med['glb']:.2f} s   "
                             f"frames {runs[0]['frames']}   GLB {runs[0]['glb_bytes']:,} B   stages "
                             + " ".join(f"{k}={v:.2f}" for k, v in stages.items()))
                print(lines[-1], flush=True)
        lines.append("")
        for name in PHOTOS:
            shipped = results[("as shipped (min_step_s 0.1)", name)]["glb"]
            raw = results[("pacing off (min_step_s 0)", name)]["glb"]
            lines.append(f"{name:<10} pacing costs {shipped / raw:.2f}x the unpaced photo→GLB time")
        print("\n".join(lines[-len(PHOTOS):]))
    finally:
        serve.shutdown()
        ray.shutdown()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
