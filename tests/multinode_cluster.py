"""A three-node Ray on one machine running the embedded graph with the production layout.

Run by tests/test_cluster_multinode.py in its own process (its own Ray, never the session's).
Prints one JSON line of observations on stdout; the test asserts on them.

Nodes: a head with no CPU (like cluster/rayservice.yaml's), a CPU worker, and a "GPU" worker
advertising two fake GPUs and `accelerator_type:H100`. Reconstructor and Segmenter ask for
`num_gpus` and `accelerator_type: H100` as serve_config.yaml does (halves, so the Segmenter
and up to three Reconstructor replicas fit). The Reconstructor autoscales with
serve_config.yaml's policy (one ongoing request per replica) and short delays: concurrent
streams add a replica, idleness removes it. Serve runs serve_config.yaml's `proxy_location`
(a proxy on every node with a replica; each worker's on its own port). Then the GPU node is
removed mid-stream and a fresh one added, as the autoscaler would replace a lost node; then
again mid-job (/v1/jobs), with a second job submitted just before, and a third GPU node added.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import ray
import yaml
from ray import serve
from ray.cluster_utils import Cluster
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

# Handles and replicas report their load to Serve's autoscaler every 10 s by default; every
# 0.5 s here, so the test sees scaling within seconds (set before Ray starts: the nodes'
# processes inherit it).
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from conftest import free_port, local_config  # noqa: E402
from photos import photo_bytes  # noqa: E402
from serve_app.client import iter_events, iter_job_events, submit_job  # noqa: E402

# Serve spreads replicas over nodes, so without a constraint a CPU replica (the Ingress
# relaying the stream) lands on the GPU node and dies with it. GPU nodes carry a label and
# serve_config.yaml's CPU deployments select nodes without it, as in cluster/.
POOL_LABEL = "sam3d.io/pool"
GPU_NODE = {"num_cpus": 1, "num_gpus": 2, "resources": {"accelerator_type:H100": 1},
            "labels": {POOL_LABEL: "gpu"}}
SERVE_CONFIG = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
PRODUCTION = SERVE_CONFIG["applications"][0]
SELECTORS = {d["name"]: d["ray_actor_options"].get("label_selector")
             for d in PRODUCTION["deployments"]}
ON_GPU = {"Reconstructor": {"num_cpus": 0.25, "num_gpus": 0.5, "accelerator_type": "H100"},
          "Segmenter": {"num_cpus": 0.25, "num_gpus": 0.5, "accelerator_type": "H100"}}
RECONSTRUCTOR = next(d for d in PRODUCTION["deployments"] if d["name"] == "Reconstructor")
# serve_config.yaml's policy (target: one ongoing request each) with delays for a test.
AUTOSCALING = {**RECONSTRUCTOR["autoscaling_config"], "min_replicas": 1, "max_replicas": 2,
               "upscale_delay_s": 0.5, "downscale_delay_s": 2.0, "look_back_period_s": 1.0}
LONG_STREAM = {"geometry_steps": 80}  # ~9 s at the test's 0.1 s per step


def test_config(store: str) -> dict:
    """serve_config.local.yaml's embedded backends with serve_config.yaml's GPU placement."""
    cfg = local_config(store, geometry_steps=30, appearance_steps=6, min_step_s=0.1)
    app = cfg["applications"][0]
    for d in app["deployments"]:
        d["ray_actor_options"] = ON_GPU.get(d["name"], {"num_cpus": 0.05})
        # The embedded ImageGenerator (backend none) is a CPU stub: placed like the CPU ones.
        selector = SELECTORS.get(d["name"]) or (d["name"] == "ImageGenerator" and SELECTORS["Ingress"])
        if selector:
            d["ray_actor_options"]["label_selector"] = selector
        d.pop("graceful_shutdown_timeout_s", None)
        if d["name"] == "Reconstructor":
            d.update(max_ongoing_requests=RECONSTRUCTOR["max_ongoing_requests"],
                     autoscaling_config=AUTOSCALING)
    return {"applications": [app]}


def placement() -> dict[str, list[str]]:
    """Deployment name → node ids of its live replicas (from the GCS actor table)."""
    out: dict[str, list[str]] = {}
    for actor in ray._private.state.actors(actor_state_name="ALIVE").values():
        cls = actor.get("ActorClassName", "")
        if cls.startswith("ServeReplica:"):
            out.setdefault(cls.rsplit(":", 1)[1], []).append(actor["Address"]["NodeID"])
    return out


def wait_running(timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        app = serve.status().applications.get("sam3d")
        if app is not None and app.status == "RUNNING":
            return time.monotonic() - start
        time.sleep(0.25)
    raise TimeoutError(f"app not RUNNING after {timeout} s: {serve.status().applications}")


def event_types(events, on_first_frame=None) -> list[str]:
    """The types of (t, event) pairs, repeats collapsed; an error event adds its code;
    `on_first_frame()` runs at the first geometry frame."""
    types: list[str] = []
    for _, event in events:
        if not types or types[-1] != event["type"]:
            types.append(event["type"])
        if event["type"] == "geometry" and on_first_frame is not None:
            on_first_frame()
            on_first_frame = None
        if event["type"] == "error":
            types.append(event.get("code", ""))
    return types


def stream(url: str, on_first_frame=None, **fields) -> list[str]:
    """The stream's event types (event_types)."""
    return event_types(iter_events(url, image=photo_bytes("coffee"), timeout=60, **fields), on_first_frame)


def autoscale(url: str, obs: dict) -> None:
    """Three concurrent long streams on one Reconstructor replica (one request each): Serve adds
    a second replica (max_replicas 2); once idle, it removes it again. The third stream keeps
    the load up until the second replica has started, however slowly this machine starts it."""
    t0 = time.monotonic()
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(stream(url, **LONG_STREAM)))
               for _ in range(3)]
    for t in threads:
        t.start()
    peak, peak_nodes = 1, []
    while any(t.is_alive() for t in threads):
        nodes = placement().get("Reconstructor", [])
        if len(nodes) > peak:
            peak, peak_nodes = len(nodes), nodes
            obs["scaled_up_s"] = round(time.monotonic() - t0, 1)
        time.sleep(0.25)
    for t in threads:
        t.join()
    obs["autoscale_streams"] = [r[-1] for r in results]
    obs["autoscale_peak"], obs["autoscale_peak_nodes"] = peak, sorted(set(peak_nodes))
    t1 = time.monotonic()
    while len(placement().get("Reconstructor", [])) > 1 and time.monotonic() - t1 < 30:
        time.sleep(0.25)
    obs["scaled_down_s"] = round(time.monotonic() - t1, 1)
    obs["replicas_idle"] = len(placement().get("Reconstructor", []))
    obs["autoscale_s"] = round(time.monotonic() - t0, 1)


def main() -> int:
    t0 = time.monotonic()
    obs: dict = {}
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    obs["start_s"] = round(time.monotonic() - t0, 1)
    try:
        print(json.dumps(run(cluster, obs)))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    return 0


def add_node(cluster: Cluster, ports: dict, **args):
    """A worker node whose Serve proxy listens on a port of its own: the nodes share one
    address here, so serve_config.yaml's single port (`http_options.port`) would collide."""
    port = free_port()
    node = cluster.add_node(env_vars={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(port)}, **args)
    ports[node.node_id] = port
    return node


def proxies(ports: dict, want: set[str], timeout: float = 30) -> dict[str, dict]:
    """Node id → its Serve proxy's status and the answer of GET /v1/capabilities through its
    port (the proxy relays to an Ingress replica), once every node in `want` has a proxy."""
    end = time.monotonic() + timeout
    while True:
        status = {n: str(getattr(s, "value", s)) for n, s in serve.status().proxies.items()}
        if want <= {n for n, s in status.items() if s == "HEALTHY"} or time.monotonic() > end:
            break
        time.sleep(0.25)
    out = {}
    for node_id, state in status.items():
        code = None
        if node_id in ports and state == "HEALTHY":
            try:
                with httpx.Client(timeout=30) as http:
                    code = http.get(f"http://127.0.0.1:{ports[node_id]}/v1/capabilities").status_code
            except httpx.TransportError as exc:
                code = type(exc).__name__
        out[node_id] = {"status": state, "capabilities": code}
    return out


def job_events(url: str, job_id: str, on_first_frame=None) -> list[str]:
    """A job's event types through GET /v1/jobs/{id}/events (event_types)."""
    return event_types(iter_job_events(url, job_id, timeout=120), on_first_frame)


def job_status(url: str, job_id: str) -> dict:
    """GET /v1/jobs/{id}: its HTTP status, the job's state and its error code (None if none)."""
    with httpx.Client(timeout=30) as http:
        resp = http.get(f"{url}/v1/jobs/{job_id}")
    body = resp.json()
    return {"http": resp.status_code, "state": body.get("state"), "error": (body.get("error") or {}).get("code")}


def remover(cluster: Cluster, node, done: threading.Event):
    """A callback that removes `node` abruptly (as a lost machine) in the background."""
    def remove():
        threading.Thread(target=lambda: (cluster.remove_node(node, allow_graceful=False), done.set()),
                         daemon=True).start()
    return remove


def run(cluster: Cluster, obs: dict) -> dict:
    t0 = time.monotonic()
    ports: dict[str, int] = {cluster.head_node.node_id: free_port()}
    cpu_node = add_node(cluster, ports, num_cpus=2)
    gpu_node = add_node(cluster, ports, **GPU_NODE)
    cluster.wait_for_nodes()
    # serve_config.yaml's proxy_location: one proxy on every node (that has a replica).
    serve.start(proxy_location=SERVE_CONFIG["proxy_location"],
                http_options={"host": "127.0.0.1", "port": ports[cluster.head_node.node_id]})
    url = f"http://127.0.0.1:{ports[cluster.head_node.node_id]}"
    cpu_url = f"http://127.0.0.1:{ports[cpu_node.node_id]}"
    with tempfile.TemporaryDirectory() as store:
        schema = ServeDeploySchema.model_validate(test_config(store))
        _get_global_client().deploy_apps(schema, _blocking=False)
        obs["deploy_s"] = round(wait_running(60), 1)
        obs["nodes"] = {"head": cluster.head_node.node_id, "cpu": cpu_node.node_id,
                        "gpu": gpu_node.node_id}
        obs["placement"] = placement()
        obs["proxies"] = proxies(ports, set(obs["nodes"].values()))
        # Through the GPU node's proxy: it relays to an Ingress replica on the CPU node.
        obs["first"] = stream(f"http://127.0.0.1:{ports[gpu_node.node_id]}")
        autoscale(url, obs)

        # Mid-stream: the GPU node goes away under the running reconstruction.
        removed = threading.Event()
        obs["interrupted"] = stream(url, on_first_frame=remover(cluster, gpu_node, removed))
        removed.wait(30)
        # A replacement node, as the autoscaler would start one.
        new_gpu = add_node(cluster, ports, **GPU_NODE)
        obs["new_gpu"] = new_gpu.node_id
        obs["after"] = stream(url)
        obs["placement_after"] = placement()
        jobs_lost_node(cluster, ports, new_gpu, url, cpu_url, obs)
    obs["total_s"] = round(time.monotonic() - t0 + obs["start_s"], 1)
    return obs


def jobs_lost_node(cluster: Cluster, ports: dict, gpu_node, url: str, cpu_url: str, obs: dict) -> None:
    """Jobs (/v1/jobs) when the GPU node goes away: one running on it, one submitted just
    before. Neither may be lost: each ends (failed with a code, or done once a node returns)
    and its status stays readable. Then a new node joins and a new job succeeds through it."""
    t0 = time.monotonic()
    photo = photo_bytes("coffee")
    running = submit_job(cpu_url, image=photo, **LONG_STREAM)["job_id"]
    removed = threading.Event()
    later: list[str] = []
    remove = remover(cluster, gpu_node, removed)

    def submit_then_remove():
        later.append(submit_job(cpu_url, image=photo)["job_id"])
        with httpx.Client(timeout=30) as http:  # where that job is when the node goes
            obs["job_queued_at_kill"] = {k: http.get(f"{cpu_url}/v1/jobs/{later[0]}").json().get(k)
                                         for k in ("state", "stage", "progress")}
        remove()

    obs["job_interrupted"] = job_events(cpu_url, running, on_first_frame=submit_then_remove)
    removed.wait(30)
    obs["job_interrupted_status"] = job_status(url, running)
    # Read again from the start, as a client that reconnects would.
    obs["job_interrupted_replay"] = job_events(url, running)
    newest = add_node(cluster, ports, **GPU_NODE)
    obs["job_queued"] = job_events(cpu_url, later[0])
    obs["job_queued_status"] = job_status(url, later[0])
    # The new node gets a proxy once a replica lands there; a job submitted through it succeeds.
    obs["newest_gpu"] = newest.node_id
    obs["proxies_after"] = proxies(ports, {newest.node_id})
    newest_url = f"http://127.0.0.1:{ports[newest.node_id]}"
    fresh = submit_job(newest_url, image=photo)["job_id"]
    obs["job_after"] = job_events(newest_url, fresh)
    obs["job_after_status"] = job_status(url, fresh)
    obs["jobs_s"] = round(time.monotonic() - t0, 1)


if __name__ == "__main__":
    sys.exit(main())
