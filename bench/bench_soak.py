"""Soak: N photo→GLB requests, then what each process and the artifact store hold.

Serve run (default): the local config's graph under Ray Serve on this machine, retention on
(TTL 1 h, 5 MiB cap, a sweep at most every 0.5 s); two clients send N requests in all. It
reports the RSS of every Serve replica's process (and of Serve's controller and proxy), found
by the actor pids in Ray's GCS actor table, after a warm-up and after the N requests, and the
store's size before and after.

`--local` adds the earlier in-process run (the graph without Ray, serve_app.local): retention
off and on side by side, one process standing in for every replica.

    python -m bench.bench_soak [--requests 200] [--local] [--out bench/results/soak.txt]
"""
from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import psutil  # noqa: E402
import yaml  # noqa: E402

from tests.photos import photo_bytes  # noqa: E402
from serve_app.client import GenerateError, iter_events  # noqa: E402

SMALL = {"reconstructor": {"grid_size": 32, "inflation": {"geometry_steps": 3, "appearance_steps": 2}},
         "segmenter": {"grabcut": {"max_side": 160, "iterations": 2}}}
CAP = 5 * 1024 * 1024
RETENTION = {"ttl_s": 3600, "max_total_bytes": CAP, "sweep_every_s": 0.5}
WARM_UP = 6
CLIENTS = 2


def store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def folders(root: Path) -> int:
    return sum(1 for p in root.iterdir() if p.is_dir())


# ---- under Ray Serve ------------------------------------------------------------------------------

def serve_processes() -> dict[str, int]:
    """Process label (deployment#replica, controller, proxy) → pid, from the GCS actor table."""
    import ray

    out = {}
    for actor in ray._private.state.actors(actor_state_name="ALIVE").values():
        name = actor.get("Name") or ""
        if name.startswith("SERVE_REPLICA::"):
            _, deployment, replica = name.split("::", 1)[1].split("#")
            out[f"{deployment}#{replica}"] = actor["Pid"]
        elif name == "SERVE_CONTROLLER_ACTOR":
            out["(controller)"] = actor["Pid"]
        elif name.startswith("SERVE_PROXY_ACTOR"):
            out["(proxy)"] = actor["Pid"]
    return out


def rss_mb(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for label, pid in pids.items():
        try:
            out[label] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            out[label] = float("nan")
    return out


def one_request(url: str, photo: bytes) -> str:
    try:
        return [ev for _, ev in iter_events(url, image=photo, timeout=300)][-1]["type"]
    except GenerateError as exc:
        return f"http {exc.status} {exc.code}"


def soak_serve(n: int) -> tuple[dict, list[str]]:
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    root = Path(tempfile.mkdtemp(prefix="soak-serve-"))
    cfg = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    app = cfg["applications"][0]
    app["args"].update(SMALL)
    app["args"]["store"] = {"url": str(root), **RETENTION}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}),
                                         _blocking=True)
        url, photo = f"http://127.0.0.1:{port}", photo_bytes("coffee")
        outcomes: list[str] = [one_request(url, photo) for _ in range(WARM_UP)]
        pids = serve_processes()
        rss0, size0, folders0 = rss_mb(pids), store_bytes(root), folders(root)
        todo, lock = list(range(n)), threading.Lock()

        def client():
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                outcome = one_request(url, photo)
                with lock:
                    outcomes.append(outcome)

        t0 = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        time.sleep(1.5)  # the last sweep
        rss1 = rss_mb(pids)
        result = {"requests": n, "complete": outcomes[WARM_UP:].count("complete"), "seconds": seconds,
                  "store_before": size0, "store_after": store_bytes(root), "folders_before": folders0,
                  "folders_after": folders(root), "rss_before": rss0, "rss_after": rss1,
                  "other_outcomes": sorted({o for o in outcomes if o != "complete"})}
    finally:
        serve.shutdown()
        ray.shutdown()
    lines = [f"serve: {n} photo requests from {CLIENTS} clients through Ray Serve (serve_config.local.yaml, "
             f"grid 32, 3+2 steps), retention on (TTL 1 h, cap 5 MiB, sweep every 0.5 s), after {WARM_UP} "
             "warm-up requests",
             f"complete {result['complete']}/{n} in {seconds:.1f} s"
             + (f"; other outcomes: {result['other_outcomes']}" if result["other_outcomes"] else ""),
             f"store bytes before {size0}, after {result['store_after']} "
             f"(folders {folders0} -> {result['folders_after']})",
             f"{'process':<34}{'pid':>8}{'RSS before MB':>15}{'RSS after MB':>14}{'growth MB':>11}"]
    for label in sorted(pids):
        lines.append(f"{label:<34}{pids[label]:>8}{rss0[label]:>15.1f}{rss1[label]:>14.1f}"
                     f"{rss1[label] - rss0[label]:>11.1f}")
    lines.append(f"{'all of them':<34}{'':>8}{sum(rss0.values()):>15.1f}{sum(rss1.values()):>14.1f}"
                 f"{sum(rss1.values()) - sum(rss0.values()):>11.1f}")
    return result, lines


# ---- in one process -------------------------------------------------------------------------------

def soak_local(n: int, retention: bool) -> dict:
    from fastapi.testclient import TestClient

    from serve_app.ingress import build_fastapi_app
    from serve_app.local import LocalClients
    from serve_app.protocol import parse_sse
    from serve_app.service import GenerateService
    from sam3d_common.settings import load_settings
    from sam3d_common.store import ArtifactStore

    root = Path(tempfile.mkdtemp(prefix="soak-"))
    store_cfg = {"url": str(root), "ttl_s": None, "max_total_bytes": None}
    if retention:
        store_cfg.update(RETENTION)
    settings = load_settings({**SMALL, "store": store_cfg})
    store = ArtifactStore(str(root), ttl_s=settings.store.ttl_s)
    client = TestClient(build_fastapi_app(GenerateService(settings, LocalClients(settings, store), store)))
    proc = psutil.Process()
    photo = photo_bytes("coffee")
    rss0, size0, t0, complete = proc.memory_info().rss, store_bytes(root), time.monotonic(), 0
    for _ in range(n):
        resp = client.post("/v1/generate", files=[("image", ("c.png", photo))])
        complete += resp.status_code == 200 and parse_sse(resp.text)[-1]["type"] == "complete"
    time.sleep(1.0)  # let the last sweep finish
    return {"retention": "on (cap 5 MiB)" if retention else "off", "requests": n, "complete": complete,
            "seconds": time.monotonic() - t0, "store_before": size0, "store_after": store_bytes(root),
            "folders_after": folders(root),
            "rss_before_mb": rss0 / 2**20, "rss_after_mb": proc.memory_info().rss / 2**20}


def local_lines(n: int) -> list[str]:
    rows = [soak_local(n, retention=False), soak_local(n, retention=True)]
    lines = [f"local: {n} photo requests in one process (grid 32, 3+2 steps), retention off vs on",
             f"{'retention':<16}{'complete':>9}{'s':>8}{'store before':>14}{'store after':>13}"
             f"{'folders':>9}{'RSS before MB':>15}{'RSS after MB':>14}"]
    for r in rows:
        lines.append(f"{r['retention']:<16}{r['complete']:>9}{r['seconds']:>8.1f}{r['store_before']:>14}"
                     f"{r['store_after']:>13}{r['folders_after']:>9}{r['rss_before_mb']:>15.1f}{r['rss_after_mb']:>14.1f}")
    off, on = rows
    lines.append(f"store after, on/off: {on['store_after'] / max(1, off['store_after']):.2f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--local", action="store_true", help="also the in-process run, retention off vs on")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    _, lines = soak_serve(args.requests)
    if args.local:
        lines += [""] + local_lines(args.requests)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
