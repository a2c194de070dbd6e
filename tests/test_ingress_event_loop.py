"""The ingress's event loop relays every stream of its replica, so the per-image CPU work of a request
(base64 and image decoding, scaling, the content hash that routes a SAM 3 request, the masks' PNG
encoding: each several ms for a 1080p photo) runs in worker threads, never on the loop."""
from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.segmenter import Segmenter
from deployments.segmenter.base import Point, SegmentPrompt
from deployments.segmenter.sam3.encoder import image_id
from photos import photo_bytes, png
from serve_app import inputs, routes_segment
from serve_app.ingress import build_fastapi_app
from serve_app.local import LocalClients
from serve_app.protocol import parse_sse
from serve_app.routes_segment import SegmenterHandleAdapter, build_segment_router
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore

FAST = {"reconstructor": {"grid_size": 32, "inflation": {"geometry_steps": 2, "appearance_steps": 1}},
        "segmenter": {"grabcut": {"max_side": 160, "iterations": 1}}}


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, bool]]:
    """Each watched function, wherever the routes look it up, records (name, ran on an event loop)."""
    seen: list[tuple[str, bool]] = []

    def watch(module, name):
        inner = getattr(module, name)

        def wrapper(*args, **kwargs):
            seen.append((name, _on_loop()))
            return inner(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for name in ("decode_image", "decode_mask", "b64_bytes", "fit_image"):
        watch(inputs, name)  # prepare.py's lookups (inputs.<name>)
    for name in ("decode_image", "b64_bytes", "png_bytes", "image_id"):
        watch(routes_segment, name)  # the segment routes' own imports
    return seen


def test_generate_decodes_and_scales_the_photo_and_mask_off_the_loop(tmp_path, calls):
    settings = load_settings({**FAST, "store": {"url": str(tmp_path)}})
    store = ArtifactStore(str(tmp_path))
    client = TestClient(build_fastapi_app(GenerateService(settings, LocalClients(settings, store), store)))
    mask = np.zeros((400, 600), np.uint8)
    mask[60:340, 120:430] = 255
    body = {"image_b64": base64.b64encode(photo_bytes("coffee")).decode(),
            "mask_b64": [base64.b64encode(png(mask)).decode()]}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200 and parse_sse(r.text)[-1]["type"] == "complete"
    assert {"decode_image", "decode_mask", "b64_bytes", "fit_image"} <= {name for name, _ in calls}
    assert not [name for name, on_loop in calls if on_loop]


def test_segment_route_decodes_and_encodes_masks_off_the_loop(calls):
    app = FastAPI()
    segmenter = Segmenter.func_or_class({"backend": "grabcut", "grabcut": {"max_side": 160, "iterations": 1}})
    app.include_router(build_segment_router(lambda: segmenter))
    r = TestClient(app).post("/v1/segment", json={"image_b64": base64.b64encode(photo_bytes("coffee")).decode(),
                                                  "points": [{"x": 250, "y": 200, "label": 1}]})
    assert r.status_code == 200, r.text
    assert r.json()["embedding_id"] is None  # GrabCut makes no embedding
    assert {"decode_image", "b64_bytes", "png_bytes"} <= {name for name, _ in calls}
    assert not [name for name, on_loop in calls if on_loop]


class _Method:
    """A handle method whose remote() answers its own name at once."""

    def __init__(self, name):
        self.name = name

    def remote(self, *args):
        async def answer():
            return self.name
        return answer()


class _Handle:
    """A DeploymentHandle as the adapter uses it: options(multiplexed_model_id=...), then .method.remote()."""

    def __init__(self):
        self.keys: list[str] = []
        self.embed, self.segment = _Method("embed"), _Method("segment")

    def options(self, multiplexed_model_id: str):
        self.keys.append(multiplexed_model_id)
        return self


def test_handle_adapter_hashes_the_routing_key_off_the_loop(calls):
    """The adapter routes by the image's content id (the replica that holds its embedding): that hash runs
    in a worker thread."""
    image = np.random.default_rng(0).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    handle = _Handle()
    adapter = SegmenterHandleAdapter(handle)

    async def both():
        return await adapter.embed(image), await adapter.segment(image, SegmentPrompt(points=[Point(5, 5, 1)]))

    assert asyncio.run(both()) == ("embed", "segment")
    assert handle.keys == [image_id(image)] * 2
    assert [c for c in calls if c[0] == "image_id"] == [("image_id", False)] * 2
