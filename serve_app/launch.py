"""Starting the graph on this machine, and reaching it from Python.

`sam3d-serve [config.yaml]` (or `python -m serve_app.launch`) does what `serve run` does for
a config file, then prints one line with the viewer's and the docs' URLs once every deployment
is running; errors are one line, without a traceback.

`app_handle()` returns the DeploymentHandle of the running app, wherever that is: in this
process (Ray already initialised), in a Ray instance running on this machine (started by
`sam3d-serve` or `serve run`, found by its GCS process, never through the cluster-address file
that `ray start` leaves behind, which may be stale and point elsewhere), or else started here
from the local config. A fresh `ray.init()` would instead start a second, empty Ray.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

APP = "sam3d"
ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = ROOT / "serve_config.local.yaml"
SERVE_NAMESPACE = "serve"


def _runtime_env() -> dict:
    """Replicas import serve_app and deployments from the same folder as this process."""
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


class LaunchError(Exception):
    """A reason to print on one line."""


def read_config(path: str | Path) -> dict:
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise LaunchError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise LaunchError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or not cfg.get("applications"):
        raise LaunchError(f"{path} has no `applications` list (a Serve config file is expected)")
    return cfg


def deploy(cfg: dict, timeout_s: float = 300.0) -> None:
    """Deploy a Serve config dict the way `serve run` does and wait until every app runs."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    try:
        schema = ServeDeploySchema.model_validate({"applications": cfg["applications"]})
    except Exception as exc:  # pydantic's error names the bad key
        raise LaunchError(f"invalid Serve config: {_one_line(exc)}") from None
    _get_global_client().deploy_apps(schema, _blocking=False)
    names = [app["name"] for app in cfg["applications"]]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = serve.status().applications
        states = {n: apps[n] for n in names if n in apps}
        failed = [(n, s) for n, s in states.items() if s.status in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            name, state = failed[0]
            raise LaunchError(f"application {name!r} failed to start: {_one_line(state.message)}")
        if len(states) == len(names) and all(s.status == "RUNNING" for s in states.values()):
            return
        time.sleep(0.25)
    raise LaunchError(f"the applications were not running after {timeout_s:g} s")


def urls(cfg: dict) -> tuple[str, str]:
    http = cfg.get("http_options") or {}
    host, port = http.get("host", "127.0.0.1"), http.get("port", 8000)
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    prefix = (cfg["applications"][0].get("route_prefix") or "/").rstrip("/")
    base = f"http://{host}:{port}{prefix}"
    return base + "/", base + "/docs"


def _one_line(exc: object) -> str:
    """The last meaningful line of a message (Serve's failure messages end in the reason)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def local_gcs_address() -> str | None:
    """RAY_ADDRESS if set, else the GCS of the one Ray instance running on this machine."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from ray._private.services import find_gcs_addresses

    found = sorted(set(find_gcs_addresses()))
    if len(found) > 1:
        raise LaunchError(f"several Ray instances run on this machine ({', '.join(found)}); "
                          "set RAY_ADDRESS to the one that runs the app")
    return found[0] if found else None


def app_handle(name: str = APP, config: str | Path = LOCAL_CONFIG):
    """The running app's DeploymentHandle; starts the config in this process if none runs."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        address = local_gcs_address()
        if address is not None:
            # A local `ray.init()` turns on token auth and keeps the token in ~/.ray/auth_token;
            # a process that connects must say it uses it, or the GCS turns it away.
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available)

            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
            ray.init(address=address, namespace=SERVE_NAMESPACE, log_to_driver=False)
            if name in serve.status().applications:
                return serve.get_app_handle(name)
            ray.shutdown()
            raise LaunchError(f"the Ray instance at {address} runs no application {name!r}; "
                              f"start it with `sam3d-serve {config}`")
        # "local": start a new instance; never read the cluster-address file of `ray start`.
        ray.init(address="local", namespace=SERVE_NAMESPACE, include_dashboard=False,
                 log_to_driver=False, runtime_env=_runtime_env())
    if name not in serve.status().applications:
        cfg = read_config(config)
        serve.start(proxy_location="Disabled")  # the handle needs no HTTP port (8000 may be taken)
        deploy({"applications": [a for a in cfg["applications"] if a["name"] == name]})
    return serve.get_app_handle(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sam3d-serve", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=str(LOCAL_CONFIG),
                    help="Serve config file (default: serve_config.local.yaml, the embedded graph)")
    a = ap.parse_args(argv)
    started = False  # shut down only the Ray this call started (never a caller's)
    try:
        cfg = read_config(a.config)
        import ray
        from ray import serve

        print(f"starting {a.config} (about 20 s on 2 cores)...", flush=True)
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", namespace=SERVE_NAMESPACE,
                 include_dashboard=False, log_to_driver=True, runtime_env=_runtime_env())
        started = True
        http = dict(cfg.get("http_options") or {})
        try:
            serve.start(http_options=http, proxy_location=cfg.get("proxy_location", "HeadOnly"))
        except Exception as exc:  # noqa: BLE001 - e.g. the port is taken
            raise LaunchError(f"Serve could not start: {_one_line(exc)}") from None
        deploy(cfg)
        viewer, docs = urls(cfg)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # every further Ctrl-C only sets the event
            signal.signal(sig, lambda *_: stop.set())
        print(f"sam3d-serve ready: viewer {viewer}  API docs {docs}  (Ctrl-C stops)", flush=True)
        stop.wait()
        print("stopping", file=sys.stderr, flush=True)
        return 0
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while starting
        print("stopping", file=sys.stderr)
        return 0
    finally:
        if started:
            _shutdown()


def _shutdown() -> None:
    """Stop Serve and Ray quietly: Ctrl-C reaches Ray's calls too, and must not end in a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    from ray import serve

    for step in (serve.shutdown, ray.shutdown):
        try:
            step()
        except BaseException:  # noqa: BLE001 - already stopping; nothing left to report
            pass


if __name__ == "__main__":
    sys.exit(main())
