"""What the ingress's per-image CPU work costs the other requests of its replica: POST /v1/segment with a
1080p JPEG and a click, `--clients` at once, while a probe sends a tiny GET every 10 ms to the same
server; the probe's latency is what any other stream relayed by that event loop waits.

The server is the product's segment router (serve_app/routes_segment.py) over the real
SegmenterHandleAdapter, whose handle answers at once with a mask of the image's size (an infinitely
fast SAM 3 replica: only the ingress's own work is left), in uvicorn, in a process of its own. Each
code tree given runs the same load in turn (this checkout, and with --before a checkout of an earlier
revision, e.g. `git worktree add /tmp/prev <rev>`), so the figures are side by side in one run.
Loopback only (127.0.0.1), a bounded number of requests.

    python -m bench.bench_ingress_loop --before /tmp/prev --json-out bench/results/ingress_loop_cpu.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

def server(port: int) -> None:
    """The child: the segment router over an instant handle, plus GET /probe, on 127.0.0.1:port."""
    import numpy as np
    import uvicorn
    from fastapi import FastAPI

    from deployments.segmenter.base import SegmentResult
    from serve_app.routes_segment import SegmenterHandleAdapter, build_segment_router

    class Instant:
        def __init__(self, name):
            self.name = name

        def remote(self, image, prompt):
            async def answer():
                mask = np.zeros(image.shape[:2], bool)
                mask[image.shape[0] // 4: image.shape[0] // 2, image.shape[1] // 3: image.shape[1] // 2] = True
                result = SegmentResult(mask=mask, score=0.9, backend="sam3")
                result.embedding_id = "0" * 32  # what SAM 3 reports (a field of newer trees only)
                return result
            return answer()

    class Handle:
        segment = Instant("segment")

        def options(self, **_):
            return self

    app = FastAPI()
    app.include_router(build_segment_router(lambda: SegmenterHandleAdapter(Handle())))

    @app.get("/probe")
    async def probe():
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_b64() -> str:
    import base64

    import numpy as np
    from PIL import Image
    from skimage import data, transform

    image = (transform.resize(data.astronaut(), (1080, 1920)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def measure(tree: str, args, body: bytes) -> dict:
    """Start the tree's server, then: the probe alone (idle), then the probe under the segment load."""
    import httpx
    import numpy as np

    port = free_port()
    env = {**os.environ, "PYTHONPATH": tree}
    # This file run as a script, with the tree's packages on the path: the tree needs no copy of the bench.
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], cwd=tree, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                if httpx.get(url + "/probe", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)

        def probes(stop: threading.Event, out: list, limit: int) -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set() and len(out) < limit:
                    t = time.perf_counter()
                    c.get(url + "/probe")
                    out.append(1000 * (time.perf_counter() - t))
                    time.sleep(0.01)

        idle: list[float] = []
        probes(threading.Event(), idle, 100)
        stop, loaded, seg_ms = threading.Event(), [], []
        prober = threading.Thread(target=probes, args=(stop, loaded, 100_000))
        prober.start()

        def client(_):
            with httpx.Client(timeout=60, headers={"content-type": "application/json"}) as c:
                for _ in range(args.requests // args.clients):
                    t = time.perf_counter()
                    r = c.post(url + "/v1/segment", content=body)
                    assert r.status_code == 200, r.text[:200]
                    seg_ms.append(1000 * (time.perf_counter() - t))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
        stop.set()
        prober.join()
    finally:
        proc.terminate()
        proc.wait(10)

    def pct(xs, q):
        return round(float(np.percentile(xs, q)), 2)

    return {"tree": tree, "segment_requests": len(seg_ms), "segments_per_s": round(len(seg_ms) / wall, 2),
            "segment_p50_ms": pct(seg_ms, 50), "segment_p90_ms": pct(seg_ms, 90),
            "probe_idle_p50_ms": pct(idle, 50), "probe_idle_p99_ms": pct(idle, 99),
            "probe_loaded_p50_ms": pct(loaded, 50), "probe_loaded_p99_ms": pct(loaded, 99),
            "probe_loaded_max_ms": round(max(loaded), 2), "probes_loaded": len(loaded)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="a checkout of an earlier revision, measured the same way after this one")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--json-out")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return server(args.serve)
    body = json.dumps({"image_b64": photo_b64(), "points": [{"x": 900, "y": 300, "label": 1}]}).encode()
    report = {"photo": "astronaut resized to 1920x1080, JPEG q90", "clients": args.clients,
              "cpu_count": os.cpu_count(), "runs": []}
    from bench.code_trees import code_trees, revision  # not at the top: the child runs on another tree's packages

    for tree in code_trees(args.before):
        report["runs"].append({"revision": revision(tree), **measure(tree, args, body)})
        print(json.dumps(report["runs"][-1]), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
