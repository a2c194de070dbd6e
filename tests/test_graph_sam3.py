"""The whole graph with the SAM 3 segmenter (tiny random checkpoint, CPU): the ingress's
/v1/embed and /v1/segment routes, and a text label driving segmentation in /v1/generate.
No test here says anything about mask quality: the weights are random."""
from __future__ import annotations

import base64

import httpx
import pytest

pytest.importorskip("transformers")

from conftest import deploy_config, local_config  # noqa: E402
from tests.support.sam3_testing import write_tiny_checkpoint  # noqa: E402
from photos import photo_bytes  # noqa: E402
from serve_app.client import iter_events  # noqa: E402

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def sam3_graph(ray_serve, tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_graph"), seed=3)
    cfg = local_config(str(tmp_path_factory.mktemp("store")), geometry_steps=3, appearance_steps=2, min_step_s=0)
    app = cfg["applications"][0]
    app["name"], app["route_prefix"] = "sam3graph", "/sam3graph"
    app["args"]["segmenter"] = {"backend": "sam3", "sam3": {
        "local_dir": str(ckpt), "device": "cpu", "score_threshold": 0.0,
        "onnx_cache_dir": str(tmp_path_factory.mktemp("onnx"))}}
    for d in app["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0.01}
    deploy_config(cfg)
    return ray_serve + "/sam3graph"


def test_embed_then_click_reuses_the_embedding(sam3_graph):
    r = httpx.post(sam3_graph + "/v1/embed", files={"image": ("c.png", photo_bytes("coffee"))}, timeout=120)
    assert r.status_code == 200, r.text
    emb_id = r.headers.get("x-embedding-id") or r.headers.get("X-Embedding-Id")
    assert emb_id and len(r.content) > 1000
    seg = httpx.post(sam3_graph + "/v1/segment", json={
        "embedding_id": emb_id, "points": [{"x": 250, "y": 200, "label": 1}]}, timeout=120)
    assert seg.status_code == 200, seg.text
    body = seg.json()
    assert body["embedding_id"] == emb_id
    onnx = httpx.get(sam3_graph + "/v1/models/sam3-click-decoder.onnx", timeout=300)
    assert onnx.status_code == 200 and len(onnx.content) > 10_000


def test_text_label_segments_through_the_graph(sam3_graph):
    events = [ev for _, ev in iter_events(sam3_graph, image=photo_bytes("coffee"),
                                          segmentation_label="cup", timeout=300)]
    seg = next(ev for ev in events if ev["stage"] == "segmenter" and ev["step"] == 1)
    assert seg["segmenter"] == "sam3"
    assert events[-1]["type"] in ("complete", "error")
    if events[-1]["type"] == "error":
        # Random weights may find no object; the stream must then say so, with a reason.
        assert events[-1]["code"] == "bad_input"


def test_local_graph_answers_embed_with_501(local_app):
    base, _ = local_app
    r = httpx.post(base + "/v1/embed", files={"image": ("c.png", photo_bytes("coffee"))}, timeout=60)
    assert r.status_code == 501 and "sam3" in r.json()["error"]["message"].lower()
    seg = httpx.post(base + "/v1/segment", json={
        "image_b64": base64.b64encode(photo_bytes("coffee")).decode(),
        "points": [{"x": 250, "y": 200, "label": 1}]}, timeout=60)
    assert seg.status_code == 200, seg.text
