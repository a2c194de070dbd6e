"""What encoding the voxel frames costs the event loop that relays a replica's streams: `--streams`
streams at once in one loop, each the product's FramePacer and FrameWriter (compact encoding, SSE)
over a source yielding a 64³ frame (about 22,000 voxels, colours re-drawn) every 0.1 s, while a
probe sleeps 5 ms at a time and records how late it wakes: the wait any other request on that loop
sees (after a warm-up stream of two frames, which takes the lazy imports and the thread pool's start). Each code tree given runs the same load in a process of its own (this checkout, and with
--before a checkout of an earlier revision), so the figures are side by side in one run.

    python -m bench.bench_pacer_loop --before /tmp/prev --json-out bench/results/pacer_loop_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

def child(streams: int, frames: int) -> dict:
    import asyncio
    import time

    import numpy as np

    from sam3d_common.frames import VoxelFrame
    from sam3d_common.settings import StreamSettings
    from serve_app.pacing import FramePacer
    from serve_app.wire import FrameWriter

    g = 64
    x, y, z = np.mgrid[:g, :g, :g]
    r = np.sqrt((x - 32) ** 2 + (y - 32) ** 2 + (z - 32) ** 2)
    rng = np.random.default_rng(0)
    shapes = [np.argwhere((r < 20 + 2 * np.sin(0.3 * i)) & (r > 14)).astype(np.uint16) for i in range(frames)]
    colours = [rng.integers(0, 256, (len(c), 3), dtype=np.uint8) for c in shapes]

    async def source(n=frames):
        for i in range(n):
            await asyncio.sleep(0.1)
            yield {"type": "geometry", "stage": "geometry", "step": i + 1, "total_steps": frames,
                   "_frame": VoxelFrame(g, shapes[i], colours[i])}
        yield {"type": "complete", "stage": "store", "step": 1, "total_steps": 1}

    async def stream(sent: list, n=frames):
        writer = FrameWriter("compact", StreamSettings())
        async for data in FramePacer(source(n), StreamSettings(max_bytes_per_s=10_000_000), writer.sse):
            sent.append(len(data))

    async def main():
        await stream([], 2)  # warm-up: lazy imports (metrics, codec) and the thread pool, not measured
        lags, sent, done = [], [], asyncio.Event()

        async def probe():
            while not done.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(1000 * (time.perf_counter() - t - 0.005))

        prober = asyncio.create_task(probe())
        t0 = time.perf_counter()
        await asyncio.gather(*(stream(sent) for _ in range(streams)))
        wall = time.perf_counter() - t0
        done.set()
        await prober
        return lags, sent, wall

    lags, sent, wall = asyncio.run(main())
    pct = lambda q: round(float(np.percentile(lags, q)), 2)  # noqa: E731
    return {"streams": streams, "frames_per_stream": frames, "events_sent": len(sent),
            "mb_sent": round(sum(sent) / 1e6, 2), "wall_s": round(wall, 2),
            "probe_late_p50_ms": pct(50), "probe_late_p99_ms": pct(99), "probe_late_max_ms": round(max(lags), 2),
            "probes": len(lags), "probe_late_top5_ms": [round(v, 1) for v in sorted(lags)[-5:]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="a checkout of an earlier revision, measured the same way after this one")
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--json-out")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.streams, args.frames)))
        return
    report = {"cpu_count": os.cpu_count(), "runs": []}
    from bench.code_trees import code_trees, revision  # not at the top: the child runs on another tree's packages

    for tree in code_trees(args.before):
        # This file run as a script, with the tree's packages on the path: the tree needs no copy of the bench.
        out = subprocess.run([sys.executable, __file__, "--child", "--streams",
                              str(args.streams), "--frames", str(args.frames)], cwd=tree,
                             env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True, check=True)
        report["runs"].append({"tree": tree, "revision": revision(tree),
                               **json.loads(out.stdout.strip().splitlines()[-1])})
        print(json.dumps(report["runs"][-1]), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
