"""Jobs that outlive a connection (POST /v1/jobs and friends), over real HTTP on loopback.

The app runs under uvicorn in a thread so that closing a stream is a real disconnect;
the embedded backends run with a small grid and a few paced steps.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from conftest import free_port
from photos import photo_bytes
from redis_server import jobs_store_args, redis_server  # noqa: F401 - fixtures
from serve_app.client import FrameDecoder
from serve_app.ingress import build_fastapi_app
from serve_app.inputs import decode_image
from serve_app.job_store import SqliteJobStore
from serve_app.jobs import JobManager, JobNotFound
from serve_app.schemas import GenerateRequest
from serve_app.local import LocalClients
from serve_app.protocol import (BINARY_MEDIA_TYPE, FRAME_EVENTS, BinaryStreamReader, RecordKind,
                                SSEParser, StreamDecoder, split_frame_payload)
from serve_app.prepare import prepare_job
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore

SETTINGS = {
    "reconstructor": {"grid_size": 32, "inflation": {"geometry_steps": 6, "appearance_steps": 4,
                                                     "min_step_s": 0.08}},
    "segmenter": {"grabcut": {"max_side": 160, "iterations": 2}},
    "stream": {"max_frames_per_s": 1000, "max_bytes_per_s": 100_000_000},
    "jobs": {"max_running": 1, "max_queued": 2},
}
ORDER = ["queued", "running", "succeeded", "failed", "cancelled"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, the JobManager) of the app served on a loopback port."""
    folder = str(tmp_path_factory.mktemp("jobs"))
    settings = load_settings({**SETTINGS, "store": {"url": folder}})
    store = ArtifactStore(folder)
    service = GenerateService(settings, LocalClients(settings, store), store)
    manager = JobManager(service.clients, store, settings)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(build_fastapi_app(service, jobs=manager), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", manager
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def http():
    with httpx.Client(timeout=30) as c:
        yield c


BODY = {"image_b64": base64.b64encode(photo_bytes("coffee")).decode(), "seed": 3}


def submit(http, base, body=BODY) -> dict:
    r = http.post(f"{base}/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def wait(http, base, job_id, until=("succeeded", "failed", "cancelled"), timeout=60.0,
         key="state") -> list[dict]:
    """Poll the job until its `key` (state, or stage) is in `until`; returns every status seen."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = http.get(f"{base}/v1/jobs/{job_id}").json()
        seen.append(st)
        if st[key] in until:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} stayed {seen[-1]['state']}")


def read_events(http, base, job_id, *, last_id=None, stop=None, query=False):
    """Events of the job's SSE stream (with the SSE ids), closing it when `stop(event)` is true."""
    headers, params = {}, {}
    if last_id is not None:
        if query:
            params["last_event_id"] = str(last_id)
        else:
            headers["Last-Event-ID"] = str(last_id)
    out, ids = [], []
    with http.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=headers, params=params) as r:
        assert r.status_code == 200, r.read()
        parser, buf = SSEParser(), b""
        for chunk in r.iter_bytes():
            buf += chunk
            *blocks, rest = buf.split(b"\n\n")
            buf = rest
            for block in blocks:
                ids += [int(line[4:]) for line in block.decode().split("\n") if line.startswith("id: ")]
                out += parser.feed(block + b"\n\n")
            if stop is not None and out and stop(out[-1]):
                break
    return out, ids


def test_job_runs_forward_to_success_with_artifacts_and_manifest(server, http):
    base, _ = server
    job = submit(http, base)
    assert job["state"] in ("queued", "running") and len(job["job_id"]) == 32
    assert job["events_url"] == f"/v1/jobs/{job['job_id']}/events"
    seen = wait(http, base, job["job_id"])
    states = [ORDER.index(s["state"]) for s in seen]
    assert states == sorted(states)  # never backwards
    final = seen[-1]
    assert final["state"] == "succeeded" and final["progress"] == 1.0 and final["error"] is None
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress)
    assert {"model.glb", "splat.ply", "manifest.json"} <= final["artifacts"].keys()
    for name, art in final["artifacts"].items():
        r = http.get(base + art["url"])
        assert r.status_code == 200 and len(r.content) == art["size_bytes"], name
    manifest = http.get(base + final["artifacts"]["manifest.json"]["url"]).json()
    assert manifest == final["manifest"]
    assert manifest["seed"] == 3 and manifest["settings"]["image_source"] == "image_b64"
    assert len(manifest["inputs"]["image"]["sha256"]) == 64 and manifest["inputs"]["image"]["shape"][2] == 3
    assert manifest["versions"]["backends"]["reconstructor"] == "inflation"
    assert {"segmenter", "reconstructor", "mesh_baker"} <= manifest["timings"]["stages"].keys()
    # The whole log afterwards: events in seq order, one key frame, ending with `complete`.
    events, ids = read_events(http, base, job["job_id"])
    assert events[-1]["type"] == "complete"
    assert [e for e in events if e.get("key_frame")] == [e for e in events if e["type"] in FRAME_EVENTS]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_resume_gives_missed_events_then_a_key_frame_of_the_live_voxels(server, http):
    base, manager = server
    job_id = submit(http, base)["job_id"]
    reference = {}

    def watch():  # an uninterrupted stream from the start, read in parallel
        with httpx.Client(timeout=60) as c:
            reference["events"], _ = read_events(c, base, job_id)

    t = threading.Thread(target=watch)
    t.start()
    first, _ = read_events(http, base, job_id, stop=lambda e: e["stage"] == "segmenter")
    last_id = first[-1]["seq"]
    # The job goes on without this client, past the segmenter's result into the frames.
    wait(http, base, job_id, until=("geometry", "appearance", "mesh_baker", "store"), key="stage")
    resumed, ids = read_events(http, base, job_id, last_id=last_id, query=True)
    t.join(60)
    full = reference["events"]
    assert full[-1]["type"] == "complete" and resumed[-1]["type"] == "complete"

    keys = [i for i, e in enumerate(resumed) if e.get("key_frame")]
    assert len(keys) == 1 and len(keys) < len(resumed)
    key = resumed[keys[0]]
    replay = resumed[:keys[0]]
    # Before the key frame: only missed non-frame events, none already seen.
    assert replay and all(e["type"] not in FRAME_EVENTS and e["seq"] > last_id for e in replay)
    # Every non-frame event of the job arrives exactly once across the two connections.
    got = [e["seq"] for e in first + resumed if e["type"] not in FRAME_EVENTS]
    assert sorted(got) == [e["seq"] for e in full if e["type"] not in FRAME_EVENTS]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] > last_id - 1
    # The key frame is a full frame equal to the live state at its seq.
    live = FrameDecoder()
    by_seq = {e["seq"]: live.decode(e) for e in full if e["type"] in FRAME_EVENTS}
    coords, colors = FrameDecoder().decode(key)
    if key["seq"] in by_seq:
        np.testing.assert_array_equal(coords, by_seq[key["seq"]][0])
        np.testing.assert_array_equal(colors, by_seq[key["seq"]][1])
    else:  # the reference reader fell behind and that frame was coalesced away (by design)
        assert any(e.get("coalesced_frames") for e in full if e["type"] == "complete") or \
            min(by_seq) < key["seq"] < max(by_seq)
    # Frames after the key frame decode on top of it to the same final picture.
    dec = FrameDecoder()
    last = [dec.decode(e) for e in resumed if e["type"] in FRAME_EVENTS][-1]
    np.testing.assert_array_equal(last[0], list(by_seq.values())[-1][0])
    # The store keeps the latest frame (and only that one) once the job has ended.
    _, stored = asyncio.run(SqliteJobStore(manager.store.path).events(job_id))
    assert stored["seq"] == max(by_seq)
    np.testing.assert_array_equal(stored["_frame"].coords, by_seq[max(by_seq)][0])


def test_artifacts_appear_only_when_the_job_has_succeeded(server, http):
    base, manager = server
    job_id = submit(http, base)["job_id"]
    # mask.png is written at the segmenter stage; while the job runs it is not served.
    read_events(http, base, job_id, stop=lambda e: e["type"] == "geometry")
    assert manager.artifacts.fs.exists(f"{manager.artifacts.root}/{job_id}/mask.png")
    r = http.get(f"{base}/v1/artifacts/{job_id}/mask.png")
    assert r.status_code == 404 and "when it has succeeded" in r.json()["error"]["message"]
    final = wait(http, base, job_id)[-1]
    assert final["state"] == "succeeded"
    assert {"model.glb", "splat.ply", "manifest.json"} <= set(final["artifacts"])
    for name in ("mask.png", "model.glb", "splat.ply", "manifest.json"):
        assert http.get(f"{base}/v1/artifacts/{job_id}/{name}").status_code == 200, name


def test_closing_the_events_stream_does_not_cancel(server, http):
    base, _ = server
    job_id = submit(http, base)["job_id"]
    events, _ = read_events(http, base, job_id, stop=lambda e: e["type"] == "geometry")
    assert events[-1]["type"] == "geometry"
    assert http.get(f"{base}/v1/jobs/{job_id}").json()["state"] == "running"
    assert wait(http, base, job_id)[-1]["state"] == "succeeded"


def test_cancel_stops_within_one_step_and_frees_the_slot(server, http):
    base, manager = server
    a = submit(http, base)["job_id"]
    b = submit(http, base)["job_id"]
    st = http.get(f"{base}/v1/jobs/{b}").json()
    assert st["state"] == "queued" and st["queue_position"] == 1  # one slot (max_running 1)
    wait(http, base, a, until=("running",))
    read_events(http, base, a, stop=lambda e: e["type"] == "geometry")
    steps = manager.clients.reconstructor.steps_run
    r = http.delete(f"{base}/v1/jobs/{a}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert manager.clients.reconstructor.steps_run - steps <= 1
    assert r.json()["error"]["code"] == "cancelled"
    seen = wait(http, base, b, until=("running", "succeeded"), timeout=10)
    assert seen[-1]["state"] in ("running", "succeeded")  # the freed slot went to the next job
    events, _ = read_events(http, base, a)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "cancelled"
    # Nothing of a cancelled job stays (its mask.png was written before the cancel).
    assert not manager.artifacts.fs.exists(f"{manager.artifacts.root}/{a}")
    assert http.get(f"{base}/v1/artifacts/{a}/mask.png").status_code == 404
    # A finished job stays finished.
    assert http.delete(f"{base}/v1/jobs/{a}").json()["state"] == "cancelled"
    assert wait(http, base, b)[-1]["state"] == "succeeded"


def test_full_queue_is_503_with_retry_after_and_cancelling_queued_jobs(server, http):
    base, _ = server
    ids, r = [], None
    for _ in range(5):  # one runs, two wait (max_queued 2), the next is refused
        r = http.post(f"{base}/v1/jobs", json=BODY)
        if r.status_code != 202:
            break
        ids.append(r.json()["job_id"])
    assert r.status_code == 503 and r.headers["retry-after"], r.text
    assert r.json()["error"]["code"] == "queue_full" and "queued" in r.json()["error"]["message"]
    queued = [http.get(f"{base}/v1/jobs/{j}").json() for j in ids]
    assert sorted(q["queue_position"] for q in queued if q["state"] == "queued") == [1, 2]
    for q in reversed(queued):
        # The running one may have finished meanwhile; a finished job stays as it was.
        want = ("cancelled",) if q["state"] == "queued" else ("cancelled", "succeeded")
        assert http.delete(f"{base}/v1/jobs/{q['job_id']}").json()["state"] in want
    assert all(http.get(f"{base}/v1/jobs/{j}").json()["queue_position"] is None for j in ids)


@pytest.mark.parametrize("method,path,headers,status,needle", [
    ("GET", "/v1/jobs/" + "0" * 32, {}, 404, "no job"),
    ("DELETE", "/v1/jobs/" + "0" * 32, {}, 404, "no job"),
    ("GET", "/v1/jobs/not-an-id/events", {}, 404, "no job"),
    ("GET", "/v1/jobs/" + "0" * 32 + "/events", {"Last-Event-ID": "x"}, 400, "Last-Event-ID"),
])
def test_unknown_ids_and_bad_resume_points(server, http, method, path, headers, status, needle):
    base, _ = server
    r = http.request(method, base + path, headers=headers)
    assert r.status_code == status and needle in r.json()["error"]["message"]


@pytest.mark.parametrize("body,needle", [
    ({"image_b64": "!!!"}, "base64"),
    ({"prompt": "cup", "colour": "red"}, "colour"),
    ({"image_b64": BODY["image_b64"], "encoding": "morse"}, "encoding"),
])
def test_submit_validates_like_generate(server, http, body, needle):
    base, _ = server
    r = http.post(f"{base}/v1/jobs", json=body)
    assert r.status_code == 422 and needle in r.json()["error"]["message"]


def test_generate_sse_ids_are_the_event_seqs(server, http):
    base, _ = server
    body = {**BODY, "geometry_steps": 2, "appearance_steps": 1}
    with http.stream("POST", f"{base}/v1/generate", json=body) as r:
        text = r.read().decode()
    blocks = [b for b in text.split("\n\n") if "data:" in b]
    for block in blocks:
        lines = block.split("\n")
        sse_id = next(line[4:] for line in lines if line.startswith("id: "))
        assert f'"seq":{sse_id},' in block


def test_manifest_digest_is_of_the_decoded_image(server, http):
    base, manager = server
    job_id = submit(http, base, {**BODY, "geometry_steps": 1, "appearance_steps": 1})["job_id"]
    wait(http, base, job_id)
    image, _ = decode_image(photo_bytes("coffee"), load_settings({}).limits)  # 600x400: not scaled
    assert job_id not in manager._live  # a finished job keeps digests in the store, not the photo
    digest = http.get(f"{base}/v1/jobs/{job_id}").json()["manifest"]["inputs"]["image"]["sha256"]
    assert digest == hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_binary_transport_resumes_with_a_key_frame(server, http):
    base, _ = server
    job_id = submit(http, base)["job_id"]
    wait(http, base, job_id)
    full, _ = read_events(http, base, job_id)
    r = http.get(f"{base}/v1/jobs/{job_id}/events", headers={"Accept": BINARY_MEDIA_TYPE,
                                                             "Last-Event-ID": "2"})
    assert r.status_code == 200 and r.headers["content-type"] == BINARY_MEDIA_TYPE
    reader = BinaryStreamReader()
    records = reader.feed(r.content)
    events, frames = [], []
    for kind, payload in records:
        if kind == RecordKind.FRAME:
            meta, msg = split_frame_payload(payload)
            events.append(meta)
            frames.append(StreamDecoder().decode(msg))
        else:
            events.append(json.loads(payload))
    assert [e["seq"] for e in events if e["type"] not in FRAME_EVENTS] == \
        [e["seq"] for e in full if e["type"] not in FRAME_EVENTS and e["seq"] > 2]
    assert len(frames) == 1 and [e for e in events if e["type"] in FRAME_EVENTS][0]["key_frame"]
    coords, _ = FrameDecoder().decode(next(e for e in full if e.get("key_frame")))
    np.testing.assert_array_equal(frames[0].coords, coords)


@pytest.mark.serve
def test_jobs_through_the_serve_graph(local_app):
    """The JobManager deployment behind the Ingress: a job outlives its events stream,
    resumes with Last-Event-ID and leaves its manifest in the store."""
    base, _ = local_app
    with httpx.Client(timeout=60) as http:
        job_id = submit(http, base, {**BODY, "geometry_steps": 4, "appearance_steps": 2})["job_id"]
        first, _ = read_events(http, base, job_id, stop=lambda e: e["type"] == "geometry")
        assert http.get(f"{base}/v1/jobs/{job_id}").json()["state"] in ("running", "succeeded")
        resumed, ids = read_events(http, base, job_id, last_id=first[-1]["seq"])
        assert resumed[-1]["type"] == "complete" and ids == sorted(ids)
        assert sum(bool(e.get("key_frame")) for e in resumed) == 1
        final = wait(http, base, job_id)[-1]
        assert final["state"] == "succeeded"
        manifest = http.get(base + final["artifacts"]["manifest.json"]["url"]).json()
        assert manifest["versions"]["backends"]["reconstructor"] == "inflation"
        assert http.get(f"{base}/v1/jobs/{'f' * 32}").status_code == 404


def test_finished_jobs_expire_after_ttl_and_beyond_max_jobs(tmp_path, jobs_store_args):
    settings = load_settings({**SETTINGS, "store": {"url": str(tmp_path)},
                              "jobs": {"max_running": 1, "max_queued": 4, "max_jobs": 2, "ttl_s": 4.0,
                                       **jobs_store_args}})
    store = ArtifactStore(str(tmp_path))
    service = GenerateService(settings, LocalClients(settings, store), store)
    manager = JobManager(service.clients, store, settings)
    body = GenerateRequest(**BODY, geometry_steps=1, appearance_steps=1)

    async def scenario():
        async def run_one():
            job = await prepare_job(service, body.model_copy())
            st = await manager.submit(job, {})
            async for _ in manager.events(st["job_id"]):
                pass
            return st["job_id"]

        a, b = await run_one(), await run_one()
        assert (await manager.status(a))["state"] == "succeeded"
        assert store.get(a, "model.glb")  # served once the job has succeeded
        c = await run_one()  # a third job fits: the oldest finished one (a) is forgotten
        with pytest.raises(JobNotFound):
            await manager.status(a)
        assert not (tmp_path / a).exists()  # and its artifacts with it
        assert (await manager.status(b))["state"] == (await manager.status(c))["state"] == "succeeded"
        await asyncio.sleep(4.1)  # past the TTL (long enough that b outlives c's run on a busy machine)
        for job_id in (b, c):
            with pytest.raises(JobNotFound):
                await manager.status(job_id)
        await manager._expire()  # what the maintenance round does every owner_lease_s / 3
        assert not (tmp_path / b).exists() and not (tmp_path / c).exists()
        assert await manager.store.count() == 0
        await manager.close()

    asyncio.run(scenario())
