"""Fault tests on the local config (issue 10): a Reconstructor replica killed mid-stream. The
client gets an `error` event with a code and a retry hint (never a cut-off 200), the next
request succeeds on the replacement replica, and the failed request's artifacts are not served."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
import ray

from conftest import deploy_config, undeploy
from photos import photo_bytes
from serve_app.client import iter_events
from test_stream_robustness import long_app_config

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def fault_app(ray_serve, tmp_path_factory):
    deploy_config(long_app_config(str(tmp_path_factory.mktemp("fault_store")), "fault", "/fault"))
    yield ray_serve + "/fault"
    undeploy("fault")  # its replicas would otherwise load the rest of the session


def replica_actors(app: str, deployment: str) -> list[str]:
    """Names of the deployment's live replica actors (Serve names them app#deployment#id)."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)]


def test_reconstructor_killed_mid_stream_is_an_error_event_then_service_recovers(fault_app):
    (name,) = replica_actors("fault", "Reconstructor")
    events: list[dict] = []
    first_frame = threading.Event()

    def read():
        for _, ev in iter_events(fault_app, image=photo_bytes("coffee"), timeout=120):
            events.append(ev)
            if ev["type"] == "geometry":
                first_frame.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first_frame.wait(60), events[-3:]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    reader.join(60)
    assert not reader.is_alive()
    last = events[-1]
    assert last["type"] == "error", [e["type"] for e in events][-5:]
    assert last["code"] == "stage_unavailable" and last["retry_after_s"] > 0
    request_id = events[0]["request_id"]
    gone = httpx.get(f"{fault_app}/v1/artifacts/{request_id}/mask.png", timeout=10)
    assert gone.status_code == 404  # the failed request's mask is not served

    deadline = time.monotonic() + 90  # Serve replaces the replica
    while time.monotonic() < deadline and not replica_actors("fault", "Reconstructor"):
        time.sleep(1)
    done = None
    while time.monotonic() < deadline and done is None:
        try:
            evs = [ev for _, ev in iter_events(fault_app, image=photo_bytes("rocket"), timeout=120)]
            done = evs[-1]
        except Exception:  # noqa: BLE001 - 503 while the replacement starts
            time.sleep(2)
    assert done is not None and done["type"] == "complete", done


@pytest.fixture(scope="module")
def ingress_fault_app(ray_serve, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("ingress_fault_store"))
    deploy_config(long_app_config(store, "ingressfault", "/ingressfault", slots=2))
    yield ray_serve + "/ingressfault"
    undeploy("ingressfault")


def test_ingress_killed_mid_stream_stops_the_reconstruction(ingress_fault_app):
    from ray import serve

    stats = serve.get_deployment_handle("Reconstructor", app_name="ingressfault").stats
    before = stats.remote().result()
    events: list[dict] = []
    first_frame = threading.Event()

    def read():
        try:
            for _, ev in iter_events(ingress_fault_app, image=photo_bytes("coffee"), timeout=120):
                events.append(ev)
                if ev["type"] == "geometry":
                    first_frame.set()
        except Exception:  # noqa: BLE001 - the connection is cut with the ingress
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first_frame.wait(60), events[-3:]
    (ingress,) = replica_actors("ingressfault", "Ingress")
    ray.kill(ray.get_actor(ingress, namespace="serve"), no_restart=True)
    reader.join(30)
    deadline = time.monotonic() + 30
    after = stats.remote().result()
    while after["active"] and time.monotonic() < deadline:
        time.sleep(0.2)
        after = stats.remote().result()
    assert after["active"] == 0, after  # the orphaned stream stopped
    steps = after["steps_run"] - before["steps_run"]
    time.sleep(1.0)
    assert stats.remote().result()["steps_run"] - before["steps_run"] == steps  # nothing runs on
    assert steps < 300  # far short of the 150 + 150 steps the stream would have run
