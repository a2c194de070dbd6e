"""Photo → GLB on the local (embedded) config, through Serve over HTTP, like a user.

Runs each photo several times and prints the median time to the first frame, to
`complete`, and to the GLB on disk, for the local config as shipped (steps paced with
min_step_s so a viewer can watch) and with pacing off (pure compute), side by side; the
frames a client received and those the stream coalesced; the same request through the
in-process pipeline (no Serve, no HTTP), run alternately with the HTTP runs, as a ratio of
medians and the range of per-pair ratios; and the IoU of the returned mask.png with
the mask of the former segmenter (cv2.grabCut, 5 iterations at 384 px). Requests go out
through serve_app.client's iter_events, as the Python client sends them (a connection per
request); the GLB and the mask are fetched on one kept-alive connection.

    python -m bench.bench_local [--runs 5] [--out bench/results/local.txt]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import asyncio  # noqa: E402
import io  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from tests.support.grabcut_reference import former_grabcut, iou  # noqa: E402
from tests.conftest import deploy_config, free_port, local_config  # noqa: E402
from tests.photos import ROCKET_BOX, photo_array, photo_bytes  # noqa: E402
from deployments.segmenter.base import Box, SegmentPrompt  # noqa: E402
from serve_app.client import iter_events, new_client  # noqa: E402
from serve_app.local import LocalClients  # noqa: E402
from serve_app.schemas import GenerateRequest  # noqa: E402
from serve_app.service import GenerateService  # noqa: E402
from sam3d_common.settings import load_settings  # noqa: E402
from sam3d_common.store import ArtifactStore  # noqa: E402
from serve_app.prepare import prepare_job  # noqa: E402
from serve_app.run import start_run  # noqa: E402
from serve_app.wire import encode_and_pace  # noqa: E402

PHOTOS = {"coffee": {}, "chelsea": {}, "astronaut": {}, "rocket": {"box_prompts": [ROCKET_BOX]}}


def one_run(base: str, name: str, http: httpx.Client) -> dict:
    t0 = time.monotonic()
    first = complete = first_geometry = None
    frames = 0
    for arrival, ev in iter_events(base, image=photo_bytes(name), **PHOTOS[name]):
        if ev["type"] in ("geometry", "appearance"):
            frames += 1
            first = first or arrival
            if ev["type"] == "geometry":
                first_geometry = first_geometry or arrival
        elif ev["type"] == "complete":
            complete = ev
            t_complete = arrival
        elif ev["type"] == "error":
            raise RuntimeError(ev["message"])
    glb = http.get(base + complete["model_glb_url"]).content
    t_glb = time.monotonic()
    mask = np.asarray(Image.open(io.BytesIO(http.get(base + complete["mask_url"]).content))) >= 128
    return {"first_frame": first - t0, "first_geometry": first_geometry - t0,
            "complete": t_complete - t0, "glb": t_glb - t0, "frames": frames,
            "coalesced": complete.get("coalesced_frames", 0), "glb_bytes": len(glb),
            "timings": complete["timings"], "mask": mask}


def reference_mask(name: str) -> np.ndarray:
    """The mask of the segmenter as it was before issue 12: cv2.grabCut, 5 iterations at 384 px."""
    box = PHOTOS[name].get("box_prompts")
    return former_grabcut(photo_array(name), SegmentPrompt(box=Box(**box[0]) if box else None))


def in_process_glb(args: dict, name: str) -> float:
    """Photo → all artifacts stored, through the same pipeline and pacing, without Serve or HTTP."""
    settings = load_settings(args)
    store = ArtifactStore(args["store"]["url"])
    service = GenerateService(settings, LocalClients(settings, store), store)

    async def run() -> float:
        t0 = time.monotonic()
        req = GenerateRequest.model_validate(PHOTOS[name])
        job = await prepare_job(service, req, image_bytes=photo_bytes(name))
        stream = await start_run(service, job)
        try:
            async for _ in encode_and_pace(stream, job.encoding, "python", settings.stream):
                pass
        finally:
            await stream.close()
        return time.monotonic() - t0

    return asyncio.run(run())


def deploy(cfg: dict, wait_s: float = 600) -> None:
    """deploy_config, waiting past Serve's own 60 s limit: on 2 cores shared with other work a
    redeploy can take longer."""
    try:
        deploy_config(cfg)
    except TimeoutError:
        deadline = time.monotonic() + wait_s
        while serve.status().applications[cfg["applications"][0]["name"]].status != "RUNNING":
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def stop_local_serve() -> None:
    serve.shutdown()
    ray.shutdown()


def write_results(out: Path, lines: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def start_local_serve() -> str:
    """A new local Ray (address="local": never one another process left running on this
    machine) with Serve's HTTP proxy on a free loopback port; returns its base URL."""
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/local.txt")
    a = ap.parse_args()
    base = start_local_serve()
    lines = [f"# photo → GLB on serve_config.local.yaml, {os.cpu_count()} CPU cores, "
             f"median of {a.runs} runs (after one warm-up run per photo); load average at start "
             f"{os.getloadavg()[0]:.1f}", ""]
    results = {}
    http = new_client(60.0)
    refs = {name: reference_mask(name) for name in PHOTOS}
    try:
        for label, pace in (("pacing off (min_step_s 0)", 0.0), ("as shipped (min_step_s 0.1)", None)):
            store = tempfile.mkdtemp()
            cfg = local_config(store) if pace is None else local_config(store, min_step_s=pace)
            deploy(cfg)
            args = cfg["applications"][0]["args"]
            for name in PHOTOS:
                one_run(base, name, http)  # warm-up
                in_process_glb(args, name)  # warm-up
                # Interleaved, so a swing in the machine's load hits both sides of the ratio.
                runs, locals_ = [], []
                for _ in range(a.runs):
                    runs.append(one_run(base, name, http))
                    locals_.append(in_process_glb(args, name))
                keys = ("first_frame", "first_geometry", "complete", "glb", "frames", "coalesced")
                med = {k: statistics.median(r[k] for r in runs) for k in keys}
                stages = {k: statistics.median(r["timings"][k] for r in runs) for k in runs[0]["timings"]}
                local = statistics.median(locals_)
                pairs = sorted(r["complete"] / t for r, t in zip(runs, locals_))
                med["iou"] = iou(runs[0]["mask"], refs[name])
                med["http_ratio"] = med["complete"] / local
                results[(label, name)] = med
                lines.append(
                    f"{label:<28} {name:<10} first frame {med['first_frame']:.3f} s   first geometry "
                    f"{med['first_geometry']:.3f} s   complete {med['complete']:.3f} s "
                    f"({min(r['complete'] for r in runs):.3f}-{max(r['complete'] for r in runs):.3f})   "
                    f"GLB on disk {med['glb']:.3f} s   in-process {local:.3f} s "
                    f"({min(locals_):.3f}-{max(locals_):.3f}) (HTTP/in-process {med['http_ratio']:.2f}x, "
                    f"per pair {pairs[0]:.2f}-{pairs[-1]:.2f}x)   frames {med['frames']:g} (+{med['coalesced']:g} "
                    f"coalesced)   mask IoU vs 5-iteration GrabCut {med['iou']:.3f}   GLB "
                    f"{runs[0]['glb_bytes']:,} B   stages " + " ".join(f"{k}={v:.3f}" for k, v in stages.items()))
                print(lines[-1], flush=True)
        lines.append("")
        for name in PHOTOS:
            shipped = results[("as shipped (min_step_s 0.1)", name)]["glb"]
            raw = results[("pacing off (min_step_s 0)", name)]
            checks = [("first geometry", raw["first_geometry"], "≤", 0.3, "s"), ("GLB", raw["glb"], "≤", 1.0, "s"),
                      ("mask IoU", raw["iou"], "≥", 0.95, ""), ("HTTP/in-process", raw["http_ratio"], "≤", 1.05, "x")]
            verdicts = [f"{what} {got:.3f}{unit} {op} {goal:g}{unit} {'yes' if (got <= goal if op == '≤' else got >= goal) else 'NO'}"
                        for what, got, op, goal, unit in checks]
            lines.append(f"{name:<10} pacing off: " + ", ".join(verdicts) +
                         f"; pacing costs {shipped / raw['glb']:.2f}x the unpaced photo→GLB time")
        lines.append(f"load average at the end {os.getloadavg()[0]:.1f} (other work on the same cores "
                     "inflates every figure)")
        print("\n".join(lines[-len(PHOTOS) - 1:]))
    finally:
        stop_local_serve()
    write_results(a.out, lines)


if __name__ == "__main__":
    main()
