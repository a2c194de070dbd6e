"""The SAM 3 Segmenter in a real Serve replica: @serve.batch encoding, multiplexed routing by embedding id,
and the HTTP routes over DeploymentHandles (tiny random checkpoint; one Ray per test session)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import deploy_config  # noqa: E402
from deployments.segmenter.base import Box, Point, SegmentPrompt  # noqa: E402
from deployments.segmenter.sam3.embedding_codec import decode  # noqa: E402
from tests.support.sam3_testing import write_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.serve
APP = "sam3_test"


@pytest.fixture(scope="module")
def handle(ray_serve, tmp_path_factory):
    from ray import serve

    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny"), seed=13)
    args = {"backend": "sam3", "sam3": {"local_dir": str(ckpt), "device": "cpu", "score_threshold": 0.0,
                                        "onnx_cache_dir": str(tmp_path_factory.mktemp("onnx"))}}
    deploy_config({"applications": [{
        "name": APP,
        "route_prefix": "/sam3_test",
        "import_path": "deployments.segmenter:build_segmenter_app",
        "args": args,
        "deployments": [{"name": "Segmenter", "ray_actor_options": {"num_cpus": 0},
                         "user_config": {"max_batch_size": 4, "batch_wait_timeout_s": 0.5}}],
    }]})
    return serve.get_deployment_handle("Segmenter", app_name=APP)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(n)]


def test_concurrent_embeds_share_encoder_batches(handle):
    batch = images(4, seed=1)
    before = handle.describe.remote().result()
    responses = [handle.embed.remote(img) for img in batch]
    outs = [r.result() for r in responses]
    after = handle.describe.remote().result()
    assert after["images_encoded"] - before["images_encoded"] == 4
    assert after["encoder_batches"] - before["encoder_batches"] < 4  # @serve.batch grouped them
    for out in outs:
        header, tensors = decode(out["payload"])
        assert header["embedding_id"] == out["embedding_id"] and header["original_size"] == [96, 128]
        assert set(tensors) == {"image_embed", "high_res_feats_0", "high_res_feats_1"}


def test_cached_embedding_answers_prompts_without_encoding(handle):
    img = images(1, seed=2)[0]
    eid = handle.embed.remote(img).result()["embedding_id"]
    before = handle.describe.remote().result()["images_encoded"]
    routed = handle.options(multiplexed_model_id=eid)
    click = routed.segment_cached.remote(eid, SegmentPrompt(points=[Point(60, 40, 1)])).result()
    text = routed.segment_cached.remote(eid, SegmentPrompt(label="cat")).result()
    graph = handle.segment.remote(img, SegmentPrompt(box=Box(10, 10, 100, 80))).result()
    for result in (click, text, graph):
        assert result.mask.shape == (96, 128) and result.backend == "sam3"
    assert handle.describe.remote().result()["images_encoded"] == before


def test_routes_over_handles(handle):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from PIL import Image

    from serve_app.routes_segment import ONNX_ROUTE, SegmenterHandleAdapter, build_segment_router

    adapter = SegmenterHandleAdapter(handle)
    app = FastAPI()
    app.include_router(build_segment_router(lambda: adapter))
    client = TestClient(app)
    buf = io.BytesIO()
    Image.fromarray(images(1, seed=3)[0]).save(buf, format="PNG")
    r = client.post("/v1/embed", files={"image": ("p.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200
    eid = r.headers["x-embedding-id"]
    r = client.post("/v1/segment", json={"embedding_id": eid, "points": [{"x": 64, "y": 48}]})
    assert r.status_code == 200 and r.json()["embedding_id"] == eid
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["mask_png_b64"])))).shape == (96, 128)
    r = client.post("/v1/segment", json={"embedding_id": "f" * 32, "points": [{"x": 1, "y": 1}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "embedding_not_found"
    assert client.get(ONNX_ROUTE).status_code == 200
