"""Streams that survive slow, vanished and hostile clients (Serve has no flow control)."""
from __future__ import annotations

import base64
import threading
import time

import httpx
import pytest
from ray import serve

from conftest import deploy_config, local_config
from photos import photo_bytes
from raw_http import RawStream, serve_rss_mb
from serve_app.client import GenerateError, iter_events
from serve_app.protocol import parse_sse

pytestmark = pytest.mark.serve

GEO, APP = 150, 150
# The seed encoding's full frames make pacing matter most.
BODY = {"image_b64": base64.b64encode(photo_bytes("coffee")).decode(), "encoding": "seed"}


def long_app_config(store: str, name: str, prefix: str, slots: int = 1, **timeouts) -> dict:
    """A long reconstruction (300 paced steps, ~10 s) with `slots` reconstructor slots and a
    queue of one. Apps whose tests read Reconstructor.stats() need a second slot: stats is
    a request like any other and would wait behind the stream it is meant to observe."""
    cfg = local_config(store, geometry_steps=GEO, appearance_steps=APP, min_step_s=0.03)
    app = cfg["applications"][0]
    app["name"], app["route_prefix"] = name, prefix
    app["args"]["stream"] = {"max_frames_per_s": 10, "max_bytes_per_s": 200_000}
    app["args"]["timeouts"] = {"queue_s": 30, **timeouts}
    for d in app["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0.01}
        if d["name"] == "Reconstructor":
            d.update(max_ongoing_requests=slots, max_queued_requests=1)
    return cfg


@pytest.fixture(scope="module")
def long_app(ray_serve, tmp_path_factory):
    cfg = long_app_config(str(tmp_path_factory.mktemp("long")), "long", "/long", slots=2)
    one = long_app_config(str(tmp_path_factory.mktemp("one")), "one", "/one")
    # An app whose whole-request limit (4 s) is shorter than its reconstruction.
    short = long_app_config(str(tmp_path_factory.mktemp("short")), "short", "/short",
                            request_s=4, queue_s=1.5)
    cfg["applications"] += one["applications"] + short["applications"]
    deploy_config(cfg)
    return ray_serve


def stats(app="long"):
    return serve.get_deployment_handle("Reconstructor", app_name=app).stats.remote().result()


def wait_idle(app="long", timeout=30.0):
    end = time.monotonic() + timeout
    while stats(app)["active"] and time.monotonic() < end:
        time.sleep(0.05)
    return stats(app)


def test_slow_reader_keeps_memory_bounded_and_gets_final_frames(long_app):
    wait_idle()
    # One normal request first: a fresh replica's first request allocates its working set
    # (imports, OpenCV and scikit-image buffers), which is not what this test is about.
    assert list(iter_events(long_app + "/long", image=photo_bytes("coffee")))[-1][1]["type"] == "complete"
    wait_idle()
    rss_before = serve_rss_mb("long")
    peak = dict(rss_before)
    s = RawStream(long_app, "/long/v1/generate", BODY, rcvbuf=4096)
    read_while_producing = 0
    # Read about 4 KB/s while the server reconstructs, watching the proxy's and replicas' memory.
    s.read(4096)
    while stats()["active"]:
        read_while_producing += len(s.read(1024))
        for name, mb in serve_rss_mb("long").items():
            peak[name] = max(peak.get(name, 0), mb)
        time.sleep(0.25)
    s.read_all()
    s.close()
    events = parse_sse(s.body().decode())
    growth = {k: round(peak[k] - rss_before.get(k, 0), 1) for k in peak}
    geo = [e for e in events if e["type"] == "geometry"]
    app = [e for e in events if e["type"] == "appearance"]
    print(f"slow reader: read {read_while_producing} B while producing; RSS growth MB {growth}; "
          f"{len(geo) + len(app)} of {GEO + APP} frames received, coalesced "
          f"{events[-1].get('coalesced_frames')}")
    assert read_while_producing < 200_000  # the reader really was slow
    assert sum(growth.values()) < 50, growth
    assert geo[-1]["step"] == GEO and app[-1]["step"] == APP  # the last frame of each stage
    complete = events[-1]
    assert complete["type"] == "complete"
    # Every frame not received was coalesced by the pacer or never built (the reconstructor
    # builds at most one per 0.8 / max_frames_per_s, serve_app/prepare.frame_interval).
    assert 0 < complete["coalesced_frames"] <= GEO + APP - len(geo) - len(app)
    # What the server pushed stayed within its byte budget instead of GEO+APP full frames.
    frame_bytes = sum(len(e["voxel_data"]) for e in geo + app)
    full = len(geo[-1]["voxel_data"]) * (GEO + APP)
    assert frame_bytes < full / 3, (frame_bytes, full)


@pytest.mark.parametrize("headers", [{}, {"x-request-disconnect-disabled": "?1",
                                          "x-request-timeout-seconds": "0"}],
                         ids=["plain", "hostile-headers"])
def test_vanished_reader_stops_the_reconstruction(long_app, headers):
    wait_idle()
    before = stats()
    s = RawStream(long_app, "/long/v1/generate", BODY, headers=headers)
    s.read_until(b"event: geometry")
    s.close()
    at_disconnect = stats()["steps_run"]
    after = wait_idle(timeout=10)
    assert after["active"] == 0 and after["cancelled"] == before["cancelled"] + 1
    print(f"vanished reader {headers}: steps at disconnect {at_disconnect}, after {after['steps_run']}")
    assert after["steps_run"] - at_disconnect <= 1  # at most the step that was running
    time.sleep(0.5)
    assert stats()["steps_run"] == after["steps_run"]  # nothing runs on for nobody


def first_frame_seconds(base: str, path: str) -> float:
    t0 = time.monotonic()
    s = RawStream(base, path, BODY)
    s.read_until(b"event: geometry", timeout=30)
    s.close()
    return time.monotonic() - t0


def test_slot_is_free_at_once_after_a_vanished_reader(long_app):
    """On a one-slot reconstructor, a request right after an abandoned one is not queued
    behind the ~9 s of steps the abandoned stream had left."""
    baseline = first_frame_seconds(long_app, "/one/v1/generate")  # also cancels at once
    time.sleep(0.5)
    s = RawStream(long_app, "/one/v1/generate", BODY)
    s.read_until(b"event: geometry")
    s.close()
    after_vanished = first_frame_seconds(long_app, "/one/v1/generate")
    print(f"first frame: {baseline:.2f} s fresh, {after_vanished:.2f} s right after a vanished reader")
    assert after_vanished < baseline + 3.0
    time.sleep(0.5)


def test_hostile_timeout_header_does_not_lift_the_request_limit(long_app):
    t0 = time.monotonic()
    events = [ev for _, ev in iter_events(long_app + "/short", image=photo_bytes("coffee"),
                                          client=httpx.Client(timeout=60, headers={
                                              "x-request-timeout-seconds": "0",
                                              "x-request-disconnect-disabled": "?1"}))]
    assert events[-1]["type"] == "error" and events[-1]["code"] == "stage_timeout"
    assert "time limit" in events[-1]["message"]
    assert time.monotonic() - t0 < 15  # cut at the 4 s limit, not after the ~10 s stream
    time.sleep(0.5)


def test_full_queue_is_a_503_with_reason(long_app):
    running = RawStream(long_app, "/one/v1/generate", BODY)
    running.read_until(b"event: geometry")
    queued_result = {}

    def queued():
        try:
            queued_result["events"] = list(iter_events(long_app + "/one", image=photo_bytes("coffee")))
        except GenerateError as exc:
            queued_result["error"] = exc

    t = threading.Thread(target=queued)
    t.start()
    time.sleep(2.0)  # let it take the single queue place
    with pytest.raises(GenerateError) as info:
        list(iter_events(long_app + "/one", image=photo_bytes("coffee")))
    assert info.value.status == 503 and info.value.code == "busy"
    assert "retry" in info.value.message
    running.close()
    t.join(60)
    assert queued_result["events"][-1][1]["type"] == "complete"  # the queued one got its turn


def test_timed_out_in_queue_hears_its_place_then_an_error_with_retry(long_app):
    """A queued request is answered (its place in line is news), so its queue timeout comes as
    an error event, with the Retry-After a 503 would have carried."""
    running = RawStream(long_app, "/short/v1/generate", BODY)
    running.read_until(b"event: geometry")
    events = [ev for _, ev in iter_events(long_app + "/short", image=photo_bytes("coffee"))]
    assert [ev["queue_position"] for ev in events if ev.get("queue_position")][:1] == [1]
    assert events[-1]["type"] == "error" and events[-1]["code"] == "queue_timeout"
    assert events[-1]["retry_after_s"] == 5
    running.close()
    time.sleep(0.5)


def test_redeploy_drains_an_in_flight_reconstruction(long_app, tmp_path):
    """A redeploy replaces the Ingress and Reconstructor replicas; the configs'
    graceful_shutdown_timeout_s lets the stream that is running finish on the old ones."""
    cfg = long_app_config(str(tmp_path), "drain", "/drain")
    for d in cfg["applications"][0]["deployments"]:
        if d["name"] in ("Ingress", "Reconstructor"):
            d["graceful_shutdown_timeout_s"] = 60
    deploy_config(cfg)
    s = RawStream(long_app, "/drain/v1/generate", BODY, rcvbuf=1 << 20)
    s.read_until(b"event: geometry")
    # New reconstructor settings → new replicas of every deployment that takes them.
    cfg["applications"][0]["args"]["reconstructor"]["inflation"]["fill"] = 0.85
    threading.Thread(target=deploy_config, args=(cfg,), daemon=True).start()
    s.read_all(timeout=60)
    s.close()
    events = parse_sse(s.body().decode())
    assert events[-1]["type"] == "complete", events[-1]
    assert [e for e in events if e["type"] == "appearance"][-1]["step"] == APP
