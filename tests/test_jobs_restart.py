"""Jobs outlive the process that runs them (issue 13), over HTTP, against SQLite and a real Redis.

Each server is tests/jobs_server.py — the HTTP app with the embedded backends and its own
JobManager, as one replica runs it — in a child process. A replica is killed with SIGKILL
mid-job (no cleanup code runs); another one started on the same store serves the job's
status and events, and fails the job as `interrupted` once the dead manager's heartbeat is
older than `jobs.owner_lease_s`. Two replicas at once share their jobs through the store.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from redis_server import jobs_store_args, redis_server  # noqa: F401 - fixtures
from serve_app.client import FrameDecoder
from serve_app.protocol import FRAME_EVENTS
from test_jobs import BODY, read_events, submit, wait

ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 1.0
SETTINGS = {
    "reconstructor": {"grid_size": 32, "inflation": {"geometry_steps": 30, "appearance_steps": 10,
                                                     "min_step_s": 0.1}},
    "segmenter": {"grabcut": {"max_side": 160, "iterations": 2}},
    "stream": {"max_frames_per_s": 1000, "max_bytes_per_s": 100_000_000},
    "jobs": {"owner_lease_s": LEASE_S, "frame_store_every_s": 0.3, "poll_s": 0.1},
}


@pytest.fixture
def replicas(jobs_store_args, tmp_path):
    """start() → (base URL, process) of a new replica over the same artifacts and job store."""
    jobs = {**SETTINGS["jobs"], **jobs_store_args}
    settings = json.dumps({**SETTINGS, "jobs": jobs})
    procs = []

    def start():
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "jobs_server.py"), str(tmp_path), settings],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append(proc)
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"jobs_server.py did not start:\n{proc.stderr.read()[-3000:]}")
        return json.loads(line)["url"], proc

    start.store_dir = tmp_path
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(20)


def last_picture(events: list[dict]):
    decoder, picture = FrameDecoder(), None
    for ev in events:
        if ev["type"] in FRAME_EVENTS:
            picture = decoder.decode(ev)
    return picture


def test_killed_replica_job_is_interrupted_and_its_log_served_by_the_next(replicas):
    a, proc_a = replicas()
    with httpx.Client(timeout=30) as http:
        job_id = submit(http, a)["job_id"]
        first, ids_a = read_events(http, a, job_id, stop=lambda e: e["type"] == "geometry" and e["step"] >= 3)
        assert first[-1]["type"] == "geometry"
        mask_url = f"/v1/artifacts/{job_id}/mask.png"  # written at the segmenter stage, before the kill
        proc_a.send_signal(signal.SIGKILL)
        proc_a.wait(10)

        b, _ = replicas()
        # The state is read from the store at once; the job stays `running` until the dead
        # manager's lease is over, then fails with a clear code and how to reproduce it.
        assert http.get(f"{b}/v1/jobs/{job_id}").json()["state"] in ("running", "failed")
        seen = wait(http, b, job_id, timeout=LEASE_S * 10 + 10)
        final = seen[-1]
        assert final["state"] == "failed" and final["error"]["code"] == "interrupted"
        assert "seed 3" in final["error"]["message"] and final["artifacts"] == {}
        assert "running" in final["error"]["message"]

        # Resume where the dead replica's stream stopped: a key frame of the stored picture,
        # then the error; no id is missing or repeated across the two connections.
        resumed, ids_b = read_events(http, b, job_id, last_id=ids_a[-1])
        assert resumed[-1]["type"] == "error" and resumed[-1]["code"] == "interrupted"
        # (The key frame's id is the resume point itself when the stored picture is older.)
        assert ids_b[0] >= ids_a[-1] and all(i > ids_a[-1] for i in ids_b[1:]) and ids_b == sorted(set(ids_b))
        keys = [e for e in resumed if e.get("key_frame")]
        assert len(keys) == 1 and keys[0]["type"] == "geometry"
        full, _ = read_events(http, b, job_id)
        assert [e["seq"] for e in full if e["type"] not in FRAME_EVENTS] == \
            sorted(e["seq"] for e in first + resumed if e["type"] not in FRAME_EVENTS)
        # Nothing of the interrupted job is served, and its folder is gone.
        r = http.get(b + mask_url)
        assert r.status_code == 404 and "no artifact" in r.json()["error"]["message"]
        assert not (replicas.store_dir / job_id).exists()


def test_two_replicas_share_jobs_through_the_store(replicas):
    a, _ = replicas()
    b, _ = replicas()
    with httpx.Client(timeout=60) as http:
        job_id = submit(http, a, {**BODY, "geometry_steps": 8, "appearance_steps": 4})["job_id"]
        # Replica B follows a job that A runs (from the store), from the start and after a drop.
        on_b, ids = read_events(http, b, job_id)
        on_a, _ = read_events(http, a, job_id)
        assert on_b[-1]["type"] == "complete" and ids == sorted(set(ids))
        assert [e["seq"] for e in on_b if e["type"] not in FRAME_EVENTS] == \
            [e["seq"] for e in on_a if e["type"] not in FRAME_EVENTS]
        np.testing.assert_array_equal(last_picture(on_a)[0], last_picture(on_b)[0])
        final = wait(http, b, job_id)[-1]
        assert final["state"] == "succeeded"
        for art in final["artifacts"].values():
            assert http.get(b + art["url"]).status_code == 200
        # Cancelling through B a job that A runs: A stops it within its maintenance round.
        other = submit(http, a, {**BODY, "geometry_steps": 100})["job_id"]
        read_events(http, a, other, stop=lambda e: e["type"] == "geometry")
        assert http.delete(f"{b}/v1/jobs/{other}").json()["state"] == "cancelled"
        events, _ = read_events(http, a, other)  # A's live stream of it ends, with the error
        assert events[-1]["type"] == "error" and events[-1]["code"] == "cancelled"
        time.sleep(LEASE_S)
        st = http.get(f"{a}/v1/jobs/{other}").json()
        assert st["state"] == "cancelled" and st["error"]["code"] == "cancelled"
