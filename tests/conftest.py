from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_serve():
    """One Ray + Serve per test session (about 10 s to start here)."""
    import ray
    from ray import serve

    port = free_port()
    # address="local": always a new instance, never one found running on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def local_config(store_dir: str, **inflation) -> dict:
    """serve_config.local.yaml as `serve run` reads it, with the store in a test folder."""
    cfg = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    args = cfg["applications"][0]["args"]
    args["store"] = {"url": store_dir}
    args["reconstructor"]["inflation"].update(inflation)
    return cfg


_DEPLOYED: dict[str, dict] = {}


def deploy_config(cfg: dict) -> None:
    """Deploy a Serve config dict the way `serve run cfg.yaml` does (schema-validated).

    A config replaces the cluster's whole set of applications, so every call deploys the
    union of the apps deployed so far in this session, the new ones winning by name.
    """
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    for app in cfg["applications"]:
        _DEPLOYED[app["name"]] = app
    schema = ServeDeploySchema.model_validate({"applications": list(_DEPLOYED.values())})
    _get_global_client().deploy_apps(schema, _blocking=True)


def undeploy(name: str) -> None:
    """Remove an app deployed by deploy_config, so later deploys do not bring it back."""
    from ray import serve

    _DEPLOYED.pop(name, None)
    serve.delete(name)


@pytest.fixture(scope="session")
def local_app(ray_serve, tmp_path_factory):
    """The local config's graph running under Serve; returns (base_url, store_dir)."""
    store = str(tmp_path_factory.mktemp("artifacts"))
    deploy_config(local_config(store, min_step_s=0.05))
    return ray_serve, store
