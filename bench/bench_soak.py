"""Soak: N photo→GLB requests through the HTTP app in one process (the graph without Ray,
serve_app.local), retention off and on side by side; prints the store's size and the process's
RSS before and after, and how many requests completed.

One process stands in for every replica here, so RSS is the whole graph's; the per-replica
figures need the Serve run (not written yet).

    python -m bench.bench_soak [--requests 200] [--out bench/results/soak.txt]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


import psutil  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from tests.photos import photo_bytes  # noqa: E402
from serve_app.ingress import build_fastapi_app  # noqa: E402
from serve_app.local import LocalClients  # noqa: E402
from serve_app.protocol import parse_sse  # noqa: E402
from serve_app.service import GenerateService  # noqa: E402
from sam3d_common.settings import load_settings  # noqa: E402
from sam3d_common.store import ArtifactStore  # noqa: E402

SMALL = {"reconstructor": {"grid_size": 32, "inflation": {"geometry_steps": 3, "appearance_steps": 2}},
         "segmenter": {"grabcut": {"max_side": 160, "iterations": 2}}}
CAP = 5 * 1024 * 1024


def store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def soak(n: int, retention: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    store_cfg = {"url": str(root), "ttl_s": None, "max_total_bytes": None}
    if retention:
        store_cfg.update(ttl_s=3600, max_total_bytes=CAP, sweep_every_s=0.5)
    settings = load_settings({**SMALL, "store": store_cfg})
    store = ArtifactStore(str(root), ttl_s=settings.store.ttl_s)
    client = TestClient(build_fastapi_app(GenerateService(settings, LocalClients(settings, store), store)))
    proc = psutil.Process()
    photo = photo_bytes("coffee")
    rss0, size0, t0, complete = proc.memory_info().rss, store_bytes(root), time.monotonic(), 0
    for _ in range(n):
        resp = client.post("/v1/generate", files=[("image", ("c.png", photo))])
        complete += resp.status_code == 200 and parse_sse(resp.text)[-1]["type"] == "complete"
    time.sleep(1.0)  # let the last sweep finish
    return {"retention": "on (cap 5 MiB)" if retention else "off", "requests": n, "complete": complete,
            "seconds": time.monotonic() - t0, "store_before": size0, "store_after": store_bytes(root),
            "folders_after": sum(1 for p in root.iterdir() if p.is_dir()),
            "rss_before_mb": rss0 / 2**20, "rss_after_mb": proc.memory_info().rss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [soak(args.requests, retention=False), soak(args.requests, retention=True)]
    lines = [f"soak: {args.requests} photo requests in one process (grid 32, 3+2 steps), retention off vs on",
             f"{'retention':<16}{'complete':>9}{'s':>8}{'store before':>14}{'store after':>13}"
             f"{'folders':>9}{'RSS before MB':>15}{'RSS after MB':>14}"]
    for r in rows:
        lines.append(f"{r['retention']:<16}{r['complete']:>9}{r['seconds']:>8.1f}{r['store_before']:>14}"
                     f"{r['store_after']:>13}{r['folders_after']:>9}{r['rss_before_mb']:>15.1f}{r['rss_after_mb']:>14.1f}")
    off, on = rows
    lines.append(f"store after, on/off: {on['store_after'] / max(1, off['store_after']):.2f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
