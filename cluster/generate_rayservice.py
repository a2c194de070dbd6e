"""Write cluster/rayservice.yaml: a KubeRay RayService that embeds serve_config.yaml verbatim.

The manifest is generated, never edited by hand, so the Serve config on Kubernetes cannot drift
from `serve_config.yaml`: `spec.serveConfigV2` is that file's text, byte for byte.
tests/test_cluster_manifests.py fails when the committed manifest differs from this output.

    python cluster/generate_rayservice.py          # rewrite cluster/rayservice.yaml
    python cluster/generate_rayservice.py --check  # exit 1 when the committed file is stale

Layout (cluster/README.md explains the choices):
- head: CPU only, `num-cpus: 0` so no replica lands on it; it runs the GCS, the dashboard
  (KubeRay talks to it) and the in-tree autoscaler sidecar.
- `cpu` workers: Ingress, PromptEnhancer, MeshBaker (everything without `num_gpus`).
- `gpu-h100` / `gpu-h200` workers, one GPU per pod, `minReplicas: 0`: Segmenter (half a card),
  Reconstructor (a whole card) and ImageGenerator, placed by Ray on `num_gpus` and
  `accelerator_type` from serve_config.yaml; the autoscaler adds pods on pending demand.
- GCS fault tolerance on an external Redis; weights on a read-only PVC at /models (the
  `local_dir` / `checkpoint_dir` paths in serve_config.yaml); HF_TOKEN from a Secret.
- Probes: the ones KubeRay injects for a RayService (raylet health, plus the Serve proxy's
  `/-/healthz` for readiness on workers), written out so they are reviewed with the rest.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.yaml"
OUTPUT = ROOT / "cluster" / "rayservice.yaml"

RAY_VERSION = "2.60.0"  # pyproject.toml pins ray[serve]==2.60.0
NAMESPACE = "sam3d"
# Images built from cluster/Dockerfile.gpu (`--target cpu` and the default `gpu` target).
IMAGE_CPU = "registry.example.com/sam3d-serve:0.1.0-cpu"
IMAGE_GPU = "registry.example.com/sam3d-serve:0.1.0-cu126"
MODELS_PVC = "sam3d-models"  # ReadOnlyMany volume holding /models/{sam3,sam-3d-objects,sdxl-turbo}
REDIS_ADDRESS = f"redis.{NAMESPACE}.svc.cluster.local:6379"

DASHBOARD_AGENT_PORT = 52365  # KubeRay's default agent port; the health endpoints live there
POOL_LABEL = "sam3d.io/pool"  # Ray node label; CPU replicas stay off nodes labelled gpu
SERVE_PORT = 8000             # http_options.port in serve_config.yaml
# GPU feature discovery's `nvidia.com/gpu.product` labels (check: kubectl get nodes -L nvidia.com/gpu.product).
GPU_PRODUCTS = {"h100": "NVIDIA-H100-80GB-HBM3", "h200": "NVIDIA-H200"}


def _wget(port: int, path: str, timeout_s: int) -> str:
    return f"wget --tries 1 -T {timeout_s} -q -O- http://localhost:{port}/{path} | grep success"


def _probe(command: str, *, timeout_s: int, failure_threshold: int, initial_delay_s: int) -> dict:
    return {
        "exec": {"command": ["bash", "-c", command]},
        "initialDelaySeconds": initial_delay_s,
        "periodSeconds": 5,
        "timeoutSeconds": timeout_s,
        "successThreshold": 1,
        "failureThreshold": failure_threshold,
    }


def _head_probes() -> dict:
    check = " && ".join([_wget(DASHBOARD_AGENT_PORT, "api/local_raylet_healthz", 5),
                         _wget(8265, "api/gcs_healthz", 5)])
    return {
        "readinessProbe": _probe(check, timeout_s=5, failure_threshold=10, initial_delay_s=10),
        "livenessProbe": _probe(check, timeout_s=5, failure_threshold=120, initial_delay_s=30),
    }


def _worker_probes() -> dict:
    raylet = _wget(DASHBOARD_AGENT_PORT, "api/local_raylet_healthz", 2)
    proxy = _wget(SERVE_PORT, "-/healthz", 2)
    return {
        # A worker serves traffic only while its Serve proxy answers: one failure takes it
        # out of the Serve Service (KubeRay's ServeReadinessProbeFailureThreshold).
        "readinessProbe": _probe(f"{raylet} && {proxy}", timeout_s=2, failure_threshold=1,
                                 initial_delay_s=10),
        # Liveness follows the raylet only: a node without replicas has no proxy and is healthy.
        "livenessProbe": _probe(raylet, timeout_s=2, failure_threshold=120, initial_delay_s=30),
    }


def _secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}


def _container(name: str, image: str, cpu: int, memory: str, *, gpus: int = 0,
               env: list[dict] | None = None, mounts: list[dict] | None = None,
               probes: dict, ports: list[dict] | None = None) -> dict:
    resources = {"cpu": str(cpu), "memory": memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    container = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # Ray stops cleanly first; Serve drains streams for graceful_shutdown_timeout_s (300 s).
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
        **probes,
    }
    if ports:
        container["ports"] = ports
    if env:
        container["env"] = env
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _pod(container: dict, *, volumes: list[dict] | None = None, node_selector: dict | None = None,
         tolerations: list[dict] | None = None) -> dict:
    spec: dict = {"containers": [container],
                  # Longer than the 300 s graceful shutdown of Ingress and Reconstructor.
                  "terminationGracePeriodSeconds": 330}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    if volumes:
        spec["volumes"] = volumes
    return {"spec": spec}


def _gpu_group(product: str) -> dict:
    label = GPU_PRODUCTS[product]
    start_params = {}
    if product == "h200":
        # Ray labels an H200 node `accelerator_type:H200`; serve_config.yaml asks for H100-class
        # cards, and an H200 runs the same replicas (141 GB, same Hopper kernels).
        start_params["resources"] = '"{\\"accelerator_type:H100\\": 1}"'
    container = _container(
        "ray-worker", IMAGE_GPU, cpu=16, memory="128Gi", gpus=1,
        env=[_secret_env("HF_TOKEN", "sam3d-hf", "token"),
             {"name": "HF_HOME", "value": "/models/.hf"},
             {"name": "HF_HUB_OFFLINE", "value": "1"}],
        mounts=[{"name": "models", "mountPath": "/models", "readOnly": True},
                {"name": "dshm", "mountPath": "/dev/shm"}],
        probes=_worker_probes())
    pod = _pod(
        container,
        volumes=[{"name": "models",
                  "persistentVolumeClaim": {"claimName": MODELS_PVC, "readOnly": True}},
                 {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}}],
        node_selector={"nvidia.com/gpu.product": label},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    return {"groupName": f"gpu-{product}", "replicas": 0, "minReplicas": 0, "maxReplicas": 16,
            # serve_config.yaml's CPU deployments select `sam3d.io/pool != gpu`.
            "labels": {POOL_LABEL: "gpu"},
            "rayStartParams": start_params, "template": pod}


def build_manifest(serve_config_text: str) -> dict:
    head = _container(
        "ray-head", IMAGE_CPU, cpu=4, memory="16Gi", probes=_head_probes(),
        ports=[{"containerPort": 6379, "name": "gcs-server"},
               {"containerPort": 8265, "name": "dashboard"},
               {"containerPort": 10001, "name": "client"},
               {"containerPort": SERVE_PORT, "name": "serve"}])
    cpu_worker = _container(
        "ray-worker", IMAGE_CPU, cpu=16, memory="32Gi", probes=_worker_probes(),
        env=[_secret_env("OPENAI_API_KEY", "sam3d-llm", "api-key"),
             _secret_env("SAM3D_JOBS_REDIS_PASSWORD", "sam3d-redis", "password")])
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "sam3d", "namespace": NAMESPACE},
        "spec": {
            "serveConfigV2": serve_config_text,
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 600},
                "gcsFaultToleranceOptions": {
                    "redisAddress": REDIS_ADDRESS,
                    "redisPassword": {"valueFrom": {"secretKeyRef": {
                        "name": "sam3d-redis", "key": "password"}}},
                },
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": _pod(head),
                },
                "workerGroupSpecs": [
                    {"groupName": "cpu", "replicas": 2, "minReplicas": 2, "maxReplicas": 8,
                     "labels": {POOL_LABEL: "cpu"}, "rayStartParams": {}, "template": _pod(cpu_worker)},
                    _gpu_group("h100"),
                    _gpu_group("h200"),
                ],
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the embedded Serve config reads like the file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = ("# Generated by cluster/generate_rayservice.py from serve_config.yaml: do not edit.\n"
          "# kubectl apply -n sam3d -f cluster/rayservice.yaml  (secrets and the PVC: cluster/README.md)\n")


def render() -> str:
    manifest = build_manifest(SERVE_CONFIG.read_text())
    return HEADER + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100,
                              allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python cluster/generate_rayservice.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
