"""A three-node Ray on one machine running the embedded graph with the production layout.

Run by tests/test_cluster_multinode.py in its own process (its own Ray, never the session's).
Prints one JSON line of observations on stdout; the test asserts on them.

Nodes: a head with no CPU (like cluster/rayservice.yaml's), a CPU worker, and a "GPU" worker
advertising two fake GPUs and `accelerator_type:H100`. Reconstructor and Segmenter ask for
`num_gpus` and `accelerator_type: H100` as serve_config.yaml does (halves, so the Segmenter
and up to three Reconstructor replicas fit). The Reconstructor autoscales with
serve_config.yaml's policy (one ongoing request per replica) and short delays: concurrent
streams add a replica, idleness removes it. Then the GPU node is removed mid-stream and a
fresh one added, as the autoscaler would replace a lost node.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

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
from serve_app.client import iter_events  # noqa: E402

# Serve spreads replicas over nodes, so without a constraint a CPU replica (the Ingress
# relaying the stream) lands on the GPU node and dies with it. GPU nodes carry a label and
# serve_config.yaml's CPU deployments select nodes without it, as in cluster/.
POOL_LABEL = "sam3d.io/pool"
GPU_NODE = {"num_cpus": 1, "num_gpus": 2, "resources": {"accelerator_type:H100": 1},
            "labels": {POOL_LABEL: "gpu"}}
PRODUCTION = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]
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


def stream(url: str, on_first_frame=None, **fields) -> list[str]:
    """The stream's event types, repeats collapsed; an error event adds its code."""
    types: list[str] = []
    for _, event in iter_events(url, image=photo_bytes("coffee"), timeout=60, **fields):
        if not types or types[-1] != event["type"]:
            types.append(event["type"])
        if event["type"] == "geometry" and on_first_frame is not None:
            on_first_frame()
            on_first_frame = None
        if event["type"] == "error":
            types.append(event.get("code", ""))
    return types


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


def run(cluster: Cluster, obs: dict) -> dict:
    t0 = time.monotonic()
    cpu_node = cluster.add_node(num_cpus=2)
    gpu_node = cluster.add_node(**GPU_NODE)
    cluster.wait_for_nodes()
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as store:
        schema = ServeDeploySchema.model_validate(test_config(store))
        _get_global_client().deploy_apps(schema, _blocking=False)
        obs["deploy_s"] = round(wait_running(60), 1)
        obs["nodes"] = {"head": cluster.head_node.node_id, "cpu": cpu_node.node_id,
                        "gpu": gpu_node.node_id}
        obs["placement"] = placement()
        obs["first"] = stream(url)
        autoscale(url, obs)

        # Mid-stream: the GPU node goes away under the running reconstruction.
        removed = threading.Event()

        def remove_gpu_node():
            threading.Thread(target=lambda: (cluster.remove_node(gpu_node, allow_graceful=False),
                                             removed.set()), daemon=True).start()

        obs["interrupted"] = stream(url, on_first_frame=remove_gpu_node)
        removed.wait(30)
        # A replacement node, as the autoscaler would start one.
        new_gpu = cluster.add_node(**GPU_NODE)
        obs["new_gpu"] = new_gpu.node_id
        obs["after"] = stream(url)
        obs["placement_after"] = placement()
    obs["total_s"] = round(time.monotonic() - t0 + obs["start_s"], 1)
    return obs


if __name__ == "__main__":
    sys.exit(main())
