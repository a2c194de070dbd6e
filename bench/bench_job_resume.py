"""Resume cost of a job's event stream: bytes and time from a reconnect to an up-to-date
picture (missed non-frame events + one key frame) vs replaying the stream from the start
up to the same event, side by side, for both frame encodings.

The app runs in this process under uvicorn (no Ray) on a loopback port, with the embedded
backends at the local config's grid (64³) and more steps, so the job is long enough to
drop in on. One reader follows the job from the start (the replay reference: every frame
it was sent, pacing off); a second connects mid-appearance with `Last-Event-ID: 0`, once to
the replica whose JobManager runs the job (key frame from its memory) and once to a second
replica over the same SQLite job store (key frame read from the store, as after a restart
or through another manager).

    python -m bench.bench_job_resume [--out bench/results/job_resume.txt]
"""
from __future__ import annotations

import argparse
import base64
import tempfile
import threading
import time
from pathlib import Path


import httpx  # noqa: E402
import uvicorn  # noqa: E402

from tests.conftest import free_port  # noqa: E402
from tests.photos import photo_bytes  # noqa: E402
from serve_app.ingress import build_fastapi_app  # noqa: E402
from serve_app.jobs import JobManager  # noqa: E402
from serve_app.local import LocalClients  # noqa: E402
from serve_app.protocol import SSEParser  # noqa: E402
from serve_app.service import GenerateService  # noqa: E402
from sam3d_common.settings import load_settings  # noqa: E402
from sam3d_common.store import ArtifactStore  # noqa: E402

SETTINGS = {
    "reconstructor": {"grid_size": 64, "inflation": {"geometry_steps": 30, "appearance_steps": 30,
                                                     "min_step_s": 0.05}},
    "stream": {"max_frames_per_s": 1000, "max_bytes_per_s": 1_000_000_000},
}


def serve_in_thread(folder: str) -> tuple[str, uvicorn.Server]:
    settings = load_settings({**SETTINGS, "store": {"url": folder}})
    store = ArtifactStore(folder)
    service = GenerateService(settings, LocalClients(settings, store), store)
    app = build_fastapi_app(service, jobs=JobManager(service.clients, store, settings))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", srv


def read(client: httpx.Client, url: str, headers: dict, until_key: bool = False) -> list[tuple[float, int, dict]]:
    """(arrival time, bytes received so far, event) for each event of the stream."""
    out, total, parser = [], 0, SSEParser()
    with client.stream("GET", url, headers=headers) as r:
        for chunk in r.iter_bytes():
            total += len(chunk)
            now = time.monotonic()
            for ev in parser.feed(chunk):
                out.append((now, total, ev))
                if until_key and ev.get("key_frame"):
                    return out
    return out


def one(base: str, other: str, encoding: str) -> list[dict]:
    body = {"image_b64": base64.b64encode(photo_bytes("coffee")).decode(), "encoding": encoding, "seed": 1}
    with httpx.Client(timeout=120) as c:
        job_id = c.post(f"{base}/v1/jobs", json=body).json()["job_id"]
        url = f"{base}/v1/jobs/{job_id}/events"
        ref: dict = {}
        t = threading.Thread(target=lambda: ref.update(events=read(httpx.Client(timeout=120), url, {})))
        t.start()
        while c.get(f"{base}/v1/jobs/{job_id}").json()["stage"] != "appearance":
            time.sleep(0.05)
        time.sleep(0.5)  # well into the appearance stage
        resumes = []
        for via, host in (("manager", base), ("store", other)):
            t0 = time.monotonic()
            resumed = read(c, url.replace(base, host), {"Last-Event-ID": "0"}, until_key=True)
            resumes.append((via, t0, resumed))
        t.join()
    full = ref["events"]
    rows = []
    for via, t0, resumed in resumes:
        t_key, bytes_key, key = resumed[-1]
        upto = next(total for _, total, ev in full if ev["seq"] == key["seq"])
        frames_upto = sum(1 for _, _, ev in full if ev["seq"] <= key["seq"] and ev["type"] in ("geometry", "appearance"))
        rows.append({"encoding": encoding, "via": via, "key_seq": key["seq"], "replayed_events": len(resumed) - 1,
                     "resume_bytes": bytes_key, "resume_ms": round((t_key - t0) * 1000, 1),
                     "replay_bytes": upto, "replay_frames": frames_upto, "full_stream_bytes": full[-1][1]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    folder = tempfile.mkdtemp()
    (base, srv), (other, srv2) = serve_in_thread(folder), serve_in_thread(folder)
    rows = [row for enc in ("compact", "full") for row in one(base, other, enc)]
    srv.should_exit = srv2.should_exit = True
    lines = ["Resume of a job's SSE stream mid-appearance (64³ grid, 30+30 steps, coffee photo):",
             "bytes/time from reconnect (Last-Event-ID: 0) to an up-to-date picture vs replaying",
             "the stream from the start to the same event. via manager: the replica running the job;",
             "via store: another replica over the same SQLite store (key frame as stored, <= 0.5 s old).", ""]
    head = (f"{'encoding':<9} {'via':<7} {'key seq':>7} {'missed events':>13} {'resume bytes':>12} {'resume ms':>9} "
            f"{'replay bytes':>12} {'replay frames':>13} {'bytes ratio':>11}")
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['encoding']:<9} {r['via']:<7} {r['key_seq']:>7} {r['replayed_events']:>13} {r['resume_bytes']:>12,} "
                     f"{r['resume_ms']:>9} {r['replay_bytes']:>12,} {r['replay_frames']:>13} "
                     f"{r['replay_bytes'] / r['resume_bytes']:>10.1f}x")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
