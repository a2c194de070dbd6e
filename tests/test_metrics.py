"""Observability of issue 10: every response counted, timed and given an x-request-id; stream
outcomes by error code and stage latencies recorded (in-memory outside Ray)."""
from __future__ import annotations

from photos import photo_bytes
from serve_app import metrics
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
