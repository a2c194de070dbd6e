"""Jobs under Ray Serve on the local config (SQLite beside the artifacts) when replicas die:
the Ingress replica killed mid-job (the job goes on in the JobManager; its events resume
through the replacement), then the JobManager replica killed mid-job (the replacement serves
the job's status and log from the store and fails it as `interrupted` once the dead
manager's lease is over; nothing of it is served)."""
from __future__ import annotations

import time

import httpx
import pytest
import ray

from conftest import deploy_config, undeploy
from serve_app.protocol import FRAME_EVENTS
from test_fault_kill import replica_actors
from test_jobs import BODY, read_events
from test_stream_robustness import long_app_config

pytestmark = pytest.mark.serve
LEASE_S = 2.0


@pytest.fixture(scope="module")
def jobs_app(ray_serve, tmp_path_factory):
    cfg = long_app_config(str(tmp_path_factory.mktemp("jobs_restart")), "jobsrestart", "/jobsrestart", slots=2)
    cfg["applications"][0]["args"]["jobs"] = {"owner_lease_s": LEASE_S, "poll_s": 0.1}
    deploy_config(cfg)
    yield ray_serve + "/jobsrestart"
    undeploy("jobsrestart")


def kill(deployment: str) -> None:
    (name,) = replica_actors("jobsrestart", deployment)
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def status_when_back(http, base: str, job_id: str, until, timeout: float = 120) -> dict:
    """The job's status once a (replacement) replica answers and the state is in `until`."""
    end, last = time.monotonic() + timeout, None
    while time.monotonic() < end:
        try:
            r = http.get(f"{base}/v1/jobs/{job_id}")
            last = r.status_code, r.text[:300]
            if r.status_code == 200 and r.json()["state"] in until:
                return r.json()
        except httpx.HTTPError as exc:  # the proxy has no replica for a moment
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"job {job_id}: {last}")


def test_jobs_survive_ingress_and_job_manager_replica_restarts(jobs_app):
    base = jobs_app
    with httpx.Client(timeout=120) as http:
        # 1. The Ingress replica dies mid-job: the job goes on; resume through the replacement.
        r = http.post(f"{base}/v1/jobs", json=BODY)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        first, ids = read_events(http, base, job_id, stop=lambda e: e["type"] == "geometry")
        kill("Ingress")
        final = status_when_back(http, base, job_id, ("succeeded", "failed", "cancelled"))
        assert final["state"] == "succeeded", final
        resumed, ids2 = read_events(http, base, job_id, last_id=ids[-1])
        assert resumed[-1]["type"] == "complete" and sum(bool(e.get("key_frame")) for e in resumed) == 1
        assert ids2 == sorted(set(ids2)) and ids2[0] >= ids[-1]
        full, _ = read_events(http, base, job_id)
        assert [e["seq"] for e in full if e["type"] not in FRAME_EVENTS] == \
            sorted(e["seq"] for e in first + resumed if e["type"] not in FRAME_EVENTS)
        assert http.get(base + final["artifacts"]["model.glb"]["url"]).status_code == 200

        # 2. The JobManager replica dies mid-job: the record and log survive in the store.
        job_id = http.post(f"{base}/v1/jobs", json=BODY).json()["job_id"]
        first, ids = read_events(http, base, job_id, stop=lambda e: e["type"] == "geometry")
        kill("JobManager")
        final = status_when_back(http, base, job_id, ("failed", "succeeded", "cancelled"))
        assert final["state"] == "failed" and final["error"]["code"] == "interrupted", final
        assert "seed 3" in final["error"]["message"] and final["artifacts"] == {}
        resumed, ids2 = read_events(http, base, job_id, last_id=ids[-1])
        assert resumed[-1]["type"] == "error" and resumed[-1]["code"] == "interrupted"
        assert ids2 == sorted(set(ids2)) and all(i > ids[-1] for i in ids2[1:])
        assert http.get(f"{base}/v1/artifacts/{job_id}/mask.png").status_code == 404
        # The replacement runs new jobs.
        job_id = http.post(f"{base}/v1/jobs", json={**BODY, "geometry_steps": 3, "appearance_steps": 2}).json()["job_id"]
        assert status_when_back(http, base, job_id, ("succeeded", "failed"))["state"] == "succeeded"
