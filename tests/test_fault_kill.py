"""Fault tests on the local config (issue 10): a replica of each kind killed mid-request.

Reconstructor and MeshBaker (during the stream): the client gets an `error` event with a code
and a retry hint (never a cut-off 200). Segmenter (before the stream's headers): a 503 with
Retry-After. Ingress: the orphaned reconstruction stops. Each time the next request succeeds
on the replacement replica and nothing of the failed request is served."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import ray

from conftest import deploy_config, local_config, undeploy
from photos import photo_bytes
from serve_app.client import GenerateError, iter_events
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


# ---- Segmenter and MeshBaker replicas killed mid-request -----------------------------------------

def replica_pid(app: str, deployment: str) -> int:
    """The process id of the deployment's one live replica (from the GCS actor table)."""
    pids = [a["Pid"] for a in ray._private.state.actors(actor_state_name="ALIVE").values()
            if a.get("Name", "").startswith(f"SERVE_REPLICA::{app}#{deployment}#")]
    assert len(pids) == 1, pids
    return pids[0]


def wait_busy(pid: int, cpu_s: float, timeout: float = 60) -> None:
    """Until the process has spent `cpu_s` more CPU seconds than now: it is running the request."""
    import psutil

    proc = psutil.Process(pid)
    start, deadline = sum(proc.cpu_times()[:2]), time.monotonic() + timeout
    while sum(proc.cpu_times()[:2]) - start < cpu_s:
        assert time.monotonic() < deadline, f"pid {pid} never got busy"
        time.sleep(0.05)


def folders(store: str) -> set[str]:
    return {p.name for p in Path(store).iterdir() if p.is_dir()}


def stage_app_config(store: str, name: str, **args) -> dict:
    """The local config with a slow stage (`args` merged into the app's args): GrabCut at full
    size for 20 iterations (~5 s) or a 192³ grid whose bake takes ~5 s."""
    cfg = local_config(store, geometry_steps=2, appearance_steps=1, min_step_s=0)
    app = cfg["applications"][0]
    app["name"], app["route_prefix"] = name, f"/{name}"
    for key, value in args.items():
        app["args"][key] = {**app["args"].get(key, {}), **value}
    app["args"]["stream"] = {"max_bytes_per_s": 100_000_000}  # 192³ frames are large
    for d in app["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0.01}
    return cfg


def generate_until_complete(url: str, timeout: float = 120) -> dict:
    """The last event of the first request that is not refused while a replica restarts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return [ev for _, ev in iter_events(url, image=photo_bytes("rocket"), timeout=120)][-1]
        except GenerateError as exc:
            assert exc.status == 503 and time.monotonic() < deadline, exc  # replacement starting
            time.sleep(2)


@pytest.fixture(scope="module")
def segmenter_fault_app(ray_serve, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("segmenter_fault_store"))
    deploy_config(stage_app_config(store, "segkill", segmenter={"grabcut": {
        "iterations": 20, "max_side": 640, "max_blocks": 16_777_216, "stable_fraction": 0, "time_budget_s": 60}}))
    yield ray_serve + "/segkill", store
    undeploy("segkill")


def test_segmenter_killed_mid_request_is_503_with_retry_after_then_service_recovers(segmenter_fault_app):
    url, store = segmenter_fault_app
    pid = replica_pid("segkill", "Segmenter")
    before = folders(store)
    answer: list[httpx.Response] = []
    request = threading.Thread(target=lambda: answer.append(httpx.post(
        f"{url}/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))], timeout=120)))
    request.start()
    wait_busy(pid, 0.5)  # GrabCut is running this request
    ray.kill(ray.get_actor(replica_actors("segkill", "Segmenter")[0], namespace="serve"), no_restart=True)
    request.join(60)
    (resp,) = answer
    # Before the stream's headers: a 503 with a reason and a retry hint, never a bare 500.
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["retry-after"]) > 0
    assert resp.json()["error"]["code"] == "stage_unavailable"
    assert folders(store) == before  # nothing of the failed request is stored
    assert generate_until_complete(url)["type"] == "complete"


@pytest.fixture(scope="module")
def baker_fault_app(ray_serve, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("baker_fault_store"))
    deploy_config(stage_app_config(store, "bakekill", reconstructor={"grid_size": 192},
                                   mesh_baker={"smooth_sigma": 3}))
    yield ray_serve + "/bakekill", store
    undeploy("bakekill")


def test_mesh_baker_killed_mid_request_is_an_error_event_and_no_artifact_stays(baker_fault_app):
    url, store = baker_fault_app
    pid = replica_pid("bakekill", "MeshBaker")
    events: list[dict] = []
    meshing = threading.Event()

    def read():
        for _, ev in iter_events(url, image=photo_bytes("coffee"), timeout=120):
            events.append(ev)
            if ev["stage"] == "mesh_baker":
                meshing.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert meshing.wait(90), events[-3:]
    wait_busy(pid, 0.3)  # the bake is running
    ray.kill(ray.get_actor(replica_actors("bakekill", "MeshBaker")[0], namespace="serve"), no_restart=True)
    reader.join(60)
    assert not reader.is_alive()
    last = events[-1]
    assert last["type"] == "error", [e["type"] for e in events][-5:]
    assert last["code"] == "stage_unavailable" and last["retry_after_s"] > 0
    rid = events[0]["request_id"]
    for name in ("mask.png", "model.glb", "splat.ply"):
        assert httpx.get(f"{url}/v1/artifacts/{rid}/{name}", timeout=10).status_code == 404, name
    deadline = time.monotonic() + 10  # the folder goes in a thread as the stream ends
    while rid in folders(store) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rid not in folders(store)
    assert generate_until_complete(url)["type"] == "complete"
