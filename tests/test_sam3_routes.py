"""/v1/embed, /v1/segment and the ONNX route over the real Segmenter class (in-process, no Ray)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from deployments.segmenter import Segmenter  # noqa: E402
from deployments.segmenter.sam3.embedding_codec import decode  # noqa: E402
from tests.support.sam3_testing import write_tiny_checkpoint  # noqa: E402
from serve_app.routes_segment import ONNX_PHOTO_ROUTE, ONNX_ROUTE, build_segment_router  # noqa: E402
from sam3d_common.settings import LimitsSettings  # noqa: E402


class Counting:
    """The deployment instance as the router sees it, counting the calls it gets."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        async def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return await method(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def sam3(tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny"), seed=9)
    cfg = {"backend": "sam3", "sam3": {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu",
                                       "onnx_cache_dir": str(tmp_path_factory.mktemp("onnx"))}}
    return Counting(Segmenter.func_or_class(cfg))


def client_for(segmenter, limits=None) -> TestClient:
    app = FastAPI()
    app.include_router(build_segment_router(lambda: segmenter, limits))
    return TestClient(app)


@pytest.fixture(scope="module")
def client(sam3):
    return client_for(sam3)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def photo(seed=0, h=120, w=160):
    img = np.random.default_rng(seed).integers(0, 50, (h, w, 3), dtype=np.uint8)
    img[30:90, 50:110] = (220, 200, 30)
    return img


def mask_of(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) > 0


def test_embed_round_trip_and_cached_segmenting(client, sam3):
    image = photo(1)
    backend = sam3.inner.backend
    before = backend.images_encoded
    r = client.post("/v1/embed", files={"image": ("p.png", png(image), "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    eid = r.headers["x-embedding-id"]
    header, tensors = decode(r.content)
    assert header["embedding_id"] == eid and header["original_size"] == [120, 160]
    assert r.headers["x-image-size"] == "120,160" and r.headers["x-input-size"] == "224"
    assert r.headers["x-embedding-cached"] == "0" and r.headers["x-embedding-profile"] == "compact"
    shapes = dict(kv.split("=") for kv in r.headers["x-embedding-shapes"].split(";"))
    for name, arr in tensors.items():
        assert "x".join(map(str, arr.shape)) == shapes[name]
    # The quantised payload is close to what the replica holds.
    held = backend.cached(eid).click_features()
    for name, arr in tensors.items():
        assert np.corrcoef(arr.ravel(), held[name].ravel())[0, 1] > 0.98

    prompts = [
        {"points": [{"x": 80, "y": 60, "label": 1}]},
        {"points": [{"x": 80, "y": 60}, {"x": 5, "y": 5, "label": 0}], "box": [40, 20, 120, 100]},
        {"box": [40, 20, 120, 100]},
        {"label": "yellow square"},
    ]
    for prompt in prompts:
        r = client.post("/v1/segment", json={"embedding_id": eid, **prompt})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["embedding_id"] == eid and body["image_size"] == [120, 160] and body["backend"] == "sam3"
        mask = mask_of(body["mask_png_b64"])
        assert mask.shape == (120, 160) and body["area"] == int(mask.sum())
        for inst in body["instances"]:
            assert mask_of(inst["mask_png_b64"]).shape == (120, 160) and 0 <= inst["score"] <= 1
    # The same image sent again (segment with pixels, embed again) finds the cached embedding.
    r = client.post("/v1/segment", json={"image_b64": base64.b64encode(png(image)).decode(), "box": [40, 20, 120, 100]})
    assert r.status_code == 200 and r.json()["embedding_id"] == eid
    r = client.post("/v1/embed", json={"image_b64": base64.b64encode(png(image)).decode()})
    assert r.headers["x-embedding-cached"] == "1"
    assert backend.images_encoded == before + 1  # one encoder run for everything above


def test_embed_json_and_exact_profile(client, sam3):
    image = photo(2)
    r = client.post(
        "/v1/embed?profile=fp32",
        json={"image_b64": base64.b64encode(png(image)).decode()},
        headers={"Accept": "application/json"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["profile"] == "fp32" and body["encodings"] == {n: "f32" for n in body["shapes"]}
    payload = base64.b64decode(body["payload_b64"])
    assert len(payload) == body["bytes"]
    _, tensors = decode(payload)
    held = sam3.inner.backend.cached(body["embedding_id"]).click_features()
    for name in held:
        np.testing.assert_array_equal(tensors[name], held[name])


def test_large_photos_are_scaled_and_masks_come_back_at_the_sent_size(sam3):
    client = client_for(sam3, LimitsSettings(max_image_side=80))
    image = photo(3)  # 160 wide → encoded at 80x60
    r = client.post("/v1/segment", json={"image_b64": base64.b64encode(png(image)).decode(),
                                         "points": [{"x": 150, "y": 110}]})
    assert r.status_code == 200, r.text
    assert mask_of(r.json()["mask_png_b64"]).shape == (120, 160)
    eid = r.json()["embedding_id"]
    assert sam3.inner.backend.cached(eid).original_size == (60, 80)
    # Clicks are checked once, against the photo as sent (not the 80x60 it is encoded at)...
    r = client.post("/v1/segment", json={"image_b64": base64.b64encode(png(image)).decode(),
                                         "points": [{"x": 170, "y": 10}]})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "click (170, 10) lies outside the 160x120 image"
    # ...and against a cached embedding by the segmenter, which alone knows its image's size.
    r = client.post("/v1/segment", json={"embedding_id": eid, "points": [{"x": 90, "y": 10}]})
    assert r.status_code == 422 and r.json()["error"]["message"] == "click (90, 10) lies outside the 80x60 image"


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"embedding_id": "0" * 32, "points": [{"x": 1, "y": 1}]}, 404, "embedding_not_found"),
        ({"points": [{"x": 1, "y": 1}]}, 422, "bad_input"),
        ({"image_b64": "***", "label": "cup"}, 422, "bad_input"),
        ({"embedding_id": "x", "points": [{"x": 1, "y": 1, "label": 7}]}, 422, "bad_input"),
        # The shared PointPrompt type: negative coordinates fail in the schema, before any lookup.
        ({"embedding_id": "0" * 32, "points": [{"x": -1, "y": 1}]}, 422, "bad_input"),
        ({"embedding_id": "x", "unknown": 1}, 422, "bad_input"),
        ({"embedding_id": "x", "box": [1, 2]}, 422, "bad_input"),
    ],
)
def test_segment_errors(client, body, status, code):
    r = client.post("/v1/segment", json=body)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert "Traceback" not in r.text


def test_segment_prompt_errors_name_the_problem(client):
    image = base64.b64encode(png(photo(4))).decode()
    r = client.post("/v1/segment", json={"image_b64": image, "points": [{"x": 500, "y": 5}]})
    assert r.status_code == 422 and "outside" in r.json()["error"]["message"]
    r = client.post("/v1/segment", json={"image_b64": image})
    assert r.status_code == 422 and "label, a click or a box" in r.json()["error"]["message"]


def test_embed_errors(client):
    assert client.post("/v1/embed", content=b"{not json").json()["error"]["code"] == "bad_input"
    r = client.post("/v1/embed", json={"image_b64": base64.b64encode(b"not an image").decode()})
    assert r.status_code == 422 and "readable image" in r.json()["error"]["message"]
    r = client.post("/v1/embed", files={"other": ("p.png", png(photo()), "image/png")})
    assert r.status_code == 422 and "`image`" in r.json()["error"]["message"]
    r = client.post("/v1/embed?profile=tiny", files={"image": ("p.png", png(photo()), "image/png")})
    assert r.status_code == 422 and "profile" in r.json()["error"]["message"]


def test_onnx_route_exports_once_and_serves_a_runnable_model(client, sam3):
    import onnxruntime as ort

    r = client.get(ONNX_ROUTE)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    photo = client.get(ONNX_PHOTO_ROUTE)
    assert photo.status_code == 200 and photo.headers["etag"] != r.headers["etag"]
    photo_session = ort.InferenceSession(photo.content, providers=["CPUExecutionProvider"])
    # The photo graph turns the encoder's features into the click graph's inputs (then the prompts).
    assert [i.name for i in photo_session.get_inputs()] == ["image_embed", "high_res_feats_0", "high_res_feats_1"]
    assert [i.name for i in session.get_inputs()] == [o.name for o in photo_session.get_outputs()] + ["point_coords", "point_labels"]
    again = client.get(ONNX_ROUTE, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    # Revalidated on every load, so a browser never pairs graphs of two exports.
    assert "no-cache" in r.headers["cache-control"] and "max-age" not in r.headers["cache-control"]
    assert client.get(ONNX_ROUTE).content == r.content
    assert client.get(ONNX_PHOTO_ROUTE).content == photo.content
    assert sam3.calls["click_decoder_onnx"] == 2  # once per graph


def test_grabcut_backend_gives_501_for_sam3_routes_and_still_segments_images():
    client = client_for(Segmenter.func_or_class({}))
    image = photo(5)
    r = client.post("/v1/embed", files={"image": ("p.png", png(image), "image/png")})
    assert r.status_code == 501 and r.json()["error"]["code"] == "not_configured"
    assert "sam3" in r.json()["error"]["message"]
    r = client.post("/v1/segment", json={"embedding_id": "abc", "points": [{"x": 80, "y": 60}]})
    assert r.status_code == 501
    assert client.get(ONNX_ROUTE).status_code == 501
    r = client.post("/v1/segment", json={"image_b64": base64.b64encode(png(image)).decode(), "box": [45, 25, 115, 95]})
    assert r.status_code == 200 and r.json()["backend"] == "grabcut" and r.json()["embedding_id"] is None
