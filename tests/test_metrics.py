"""Observability of issue 10: every response counted, timed and given an x-request-id; stream
outcomes by error code and stage latencies recorded (in-memory outside Ray)."""
from __future__ import annotations

import pytest

from photos import photo_bytes
from sam3d_common import metrics
from test_routes import events_of, make_client


def fresh_recorder(monkeypatch) -> metrics.Recorder:
    rec = metrics.Recorder()
    monkeypatch.setattr(metrics, "_sink", rec)
    return rec


def test_metrics_count_responses_by_route_template_and_status(tmp_path, monkeypatch):
    rec = fresh_recorder(monkeypatch)
    client = make_client(tmp_path)
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/artifacts/" + "0" * 32 + "/model.glb").status_code == 404
    assert client.post("/v1/generate", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert rec.count("sam3d_http_requests_total", route="/healthz", status="200") == 1
    assert rec.count("sam3d_http_requests_total", route="/v1/artifacts/{artifact_id}/{name}", status="404") == 1
    assert rec.count("sam3d_http_requests_total", route="/v1/generate", method="POST", status="415") == 1
    assert len(rec.observed("sam3d_http_response_seconds")) == 3


def test_metrics_stream_outcome_stage_times_bytes_and_request_id(tmp_path, monkeypatch):
    rec = fresh_recorder(monkeypatch)
    client = make_client(tmp_path)
    resp = client.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))])
    evs = events_of(resp)
    assert evs[-1]["type"] == "complete"
    assert resp.headers["x-request-id"] == resp.headers["x-sam3d-request-id"] == evs[0]["request_id"]
    assert rec.count("sam3d_stream_outcomes_total", outcome="complete") == 1
    assert {dict(t)["stage"] for (n, t) in rec.observations if n == "sam3d_stage_seconds"} >= {
        "segmenter", "reconstructor", "mesh_baker"}
    assert rec.count("sam3d_http_response_bytes_total", route="/v1/generate") == len(resp.content)


def test_metrics_every_response_has_a_request_id(tmp_path, monkeypatch):
    fresh_recorder(monkeypatch)
    client = make_client(tmp_path)
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)


def test_metrics_error_events_counted_by_code(monkeypatch):
    rec = fresh_recorder(monkeypatch)
    metrics.stream_event({"type": "error", "code": "stage_timeout"})
    metrics.stream_event({"type": "geometry"})
    assert rec.count("sam3d_stream_outcomes_total", outcome="error", code="stage_timeout") == 1
    assert rec.count("sam3d_stream_outcomes_total") == 1


def test_metrics_request_id_from_serve_proxy_is_not_doubled(tmp_path, monkeypatch):
    """Serve's proxy sets x-request-id on the request and adds it to the response itself."""
    fresh_recorder(monkeypatch)
    resp = make_client(tmp_path).get("/healthz", headers={"x-request-id": "from-proxy"})
    assert "x-request-id" not in resp.headers


def test_metrics_grafana_dashboard_queries_metrics_that_exist():
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).parents[1] / "cluster" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"ray_(sam3d_[a-z_]+?)(?:_bucket)?\b", e)}
    assert used == set(metrics._SPECS)  # Ray exports each as ray_<name>


# ---- per-stage stream metrics, queue wait and GPU memory (issue 10) ------------------------------

def test_metrics_steps_frames_and_bytes_of_a_stream(tmp_path, monkeypatch):
    rec = fresh_recorder(monkeypatch)
    resp = make_client(tmp_path).post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))])
    evs = events_of(resp)
    assert evs[-1]["type"] == "complete"
    # FAST (test_routes): 3 geometry and 2 appearance steps
    assert rec.count("sam3d_steps_total", stage="geometry") == 3
    assert rec.count("sam3d_steps_total", stage="appearance") == 2
    for stage in ("geometry", "appearance"):
        (rate,) = rec.observed("sam3d_steps_per_second", stage=stage)
        assert rate > 0
    frames = sum(e["type"] in ("geometry", "appearance") for e in evs)
    assert rec.count("sam3d_frames_total", transport="sse", outcome="sent") == frames > 0
    assert rec.count("sam3d_frames_total", outcome="coalesced") == evs[-1]["coalesced_frames"]
    assert rec.count("sam3d_stream_bytes_total", transport="sse") == len(resp.content)


def test_metrics_coalesced_frames_of_a_slow_stream(monkeypatch):
    import asyncio

    from serve_app.pacing import FramePacer
    from sam3d_common.settings import StreamSettings

    rec = fresh_recorder(monkeypatch)

    async def burst():
        for k in range(1, 21):
            yield {"type": "geometry", "stage": "geometry", "step": k, "total_steps": 20}

    def binary(ev):  # named like FrameWriter.binary: the transport tag
        return ev, 1000

    async def go():
        pacer = FramePacer(burst(), StreamSettings(max_frames_per_s=4), binary)
        return [e async for e in pacer.__aiter__()], pacer

    out, pacer = asyncio.run(go())
    assert pacer.coalesced > 0 and len(out) + pacer.coalesced == 20
    assert rec.count("sam3d_frames_total", transport="binary", outcome="coalesced") == pacer.coalesced
    assert rec.count("sam3d_frames_total", transport="binary", outcome="sent") == len(out)
    assert rec.count("sam3d_stream_bytes_total", transport="binary") == 1000 * len(out)


def test_metrics_errors_by_stage_and_code(tmp_path, monkeypatch):
    from sam3d_common.errors import BadInput, StageUnavailable
    from serve_app.local import LocalClients

    class FailingBake(LocalClients):
        async def bake(self, recon, artifact_id, options=None):
            raise BadInput("the reconstruction is empty; nothing to mesh")

    class DeadSegmenter(LocalClients):
        async def segment(self, image, prompt):
            raise StageUnavailable("a stage's replica stopped while serving this request")

    rec = fresh_recorder(monkeypatch)
    photo = [("image", ("c.png", photo_bytes("coffee")))]
    evs = events_of(make_client(tmp_path, FailingBake).post("/v1/generate", files=photo))
    assert evs[-1]["code"] == "bad_input"
    assert rec.count("sam3d_stage_errors_total", stage="mesh_baker", code="bad_input") == 1
    resp = make_client(tmp_path, DeadSegmenter).post("/v1/generate", files=photo)
    assert resp.status_code == 503 and resp.headers["retry-after"]  # before the stream
    assert rec.count("sam3d_stage_errors_total", stage="segmenter", code="stage_unavailable") == 1
    assert rec.count("sam3d_stage_errors_total") == 2


def test_metrics_queue_wait_recorded_by_each_stage_replica(tmp_path, monkeypatch):
    import asyncio
    import time

    from deployments.mesh_baker import MeshBaker
    from deployments.reconstructor import Reconstruction, ReconstructOptions, Reconstructor
    from deployments.segmenter import Segmenter, SegmentPrompt
    from photos import photo_array

    rec = fresh_recorder(monkeypatch)
    small = {"grid_size": 16, "inflation": {"geometry_steps": 1, "appearance_steps": 1}}
    seg = Segmenter.func_or_class({"grabcut": {"max_side": 128, "iterations": 1}})
    recon = Reconstructor.func_or_class(small)
    baker = MeshBaker.func_or_class({}, {"url": str(tmp_path)})
    image = photo_array("coffee")

    async def go():
        mask = (await seg.segment(image, SegmentPrompt(), sent_at=time.time() - 0.5)).mask
        final = [x async for x in recon.stream(image, mask, ReconstructOptions(), sent_at=time.time() - 1.0)
                 if isinstance(x, Reconstruction)][0]
        await baker.bake(final, "0" * 32, sent_at=time.time() - 2.0)
        await baker.bake(final, "1" * 32)  # an unstamped call (a caller that does not stamp)

    asyncio.run(go())
    waits = {stage: rec.observed("sam3d_queue_wait_seconds", stage=stage)
             for stage in ("segmenter", "reconstructor", "mesh_baker")}
    assert [len(w) for w in waits.values()] == [1, 1, 1]
    assert 0.5 <= waits["segmenter"][0] < 5 and 1.0 <= waits["reconstructor"][0] < 6
    assert 2.0 <= waits["mesh_baker"][0] < 7


def test_metrics_gpu_memory_only_where_torch_has_cuda(monkeypatch):
    import sys
    import types

    rec = fresh_recorder(monkeypatch)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert metrics.gpu_memory("Reconstructor") == 0  # a CPU replica: torch not even imported
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 2,
        memory_allocated=lambda i: 1000 * (i + 1), memory_reserved=lambda i: 4000 * (i + 1)))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert metrics.gpu_memory("Reconstructor") == 2
    got = {(dict(t)["device"], dict(t)["kind"]): v
           for t, v in rec.gauge("sam3d_gpu_memory_bytes", deployment="Reconstructor").items()}
    assert got == {("0", "allocated"): 1000, ("0", "reserved"): 4000,
                   ("1", "allocated"): 2000, ("1", "reserved"): 8000}
    fake.cuda.is_available = lambda: False
    rec2 = fresh_recorder(monkeypatch)
    assert metrics.gpu_memory("Segmenter") == 0 and not rec2.gauges


def test_metrics_gpu_memory_set_by_the_health_check(monkeypatch):
    """The GPU deployments refresh the gauges from Serve's periodic health check."""
    import sys
    import types

    from deployments.reconstructor import Reconstructor
    from deployments.segmenter import Segmenter

    rec = fresh_recorder(monkeypatch)
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 1,
        memory_allocated=lambda i: 123, memory_reserved=lambda i: 456))
    monkeypatch.setitem(sys.modules, "torch", fake)
    for cls in (Reconstructor, Segmenter):
        replica = cls.func_or_class({})
        rec.gauges.clear()
        replica.check_health()
        assert set(rec.gauge("sam3d_gpu_memory_bytes", deployment=cls.name).values()) == {123, 456}


@pytest.mark.gpu
def test_metrics_gpu_memory_reads_the_real_device(monkeypatch):
    import torch

    rec = fresh_recorder(monkeypatch)
    x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda:0")
    assert metrics.gpu_memory("Reconstructor") >= 1
    got = {dict(t)["kind"]: v for t, v in rec.gauge("sam3d_gpu_memory_bytes", device="0").items()}
    assert got["allocated"] >= x.numel() and got["reserved"] >= got["allocated"]


@pytest.mark.serve
def test_metrics_every_metric_records_through_rays_api(ray_serve):
    """What replicas use: each metric made and recorded with Ray's metrics API, all its tags set."""
    sink = metrics._RayMetrics()
    for name, (_, _, tags) in metrics._SPECS.items():
        sink.record(name, 1.0, {t: "x" for t in tags})
