"""The HTTP routes over in-process backends (no Ray): parsing, validation and error events."""
import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sam3d_common.errors import BadInput
from photos import photo_bytes, png
from serve_app.ingress import build_fastapi_app
from serve_app.local import LocalClients
from serve_app.protocol import parse_sse
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore

FAST = {"reconstructor": {"grid_size": 32, "inflation": {"geometry_steps": 3, "appearance_steps": 2}},
        "segmenter": {"grabcut": {"max_side": 160, "iterations": 2}}}


def make_client(tmp_path, clients_cls=LocalClients):
    settings = load_settings({**FAST, "store": {"url": str(tmp_path)}})
    store = ArtifactStore(str(tmp_path))
    return TestClient(build_fastapi_app(GenerateService(settings, clients_cls(settings, store), store)))


@pytest.fixture
def client(tmp_path):
    return make_client(tmp_path)


def events_of(resp):
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    return parse_sse(resp.text)


def test_json_with_base64_image_and_click(client):
    body = {"image_b64": base64.b64encode(photo_bytes("coffee")).decode(),
            "point_prompts": [{"x": 250, "y": 200, "label": 1}], "seed": 7}
    evs = events_of(client.post("/v1/generate", json=body))
    assert [e["type"] for e in evs][-1] == "complete"
    rid = evs[0]["request_id"]
    assert client.get(f"/v1/artifacts/{rid}/model.glb").status_code == 200


def test_data_url_and_multipart_with_mask(client):
    url = "data:image/jpeg;base64," + base64.b64encode(photo_bytes("rocket")).decode()
    assert events_of(client.post("/v1/generate", json={"image_url": url}))[-1]["type"] == "complete"
    mask = np.zeros((400, 600), np.uint8)
    mask[60:340, 120:430] = 255
    r = client.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee"))),
                                           ("mask", ("m.png", png(mask)))],
                    data={"stream_geometry_every": "2"})
    evs = events_of(r)
    found = next(e for e in evs if e["type"] == "loading" and e["step"] == 1 and e["stage"] == "segmenter")
    assert found["mask_fraction"] == pytest.approx(mask.astype(bool).mean(), abs=0.08)


@pytest.mark.parametrize("body,needle", [
    ({"image_b64": "!!!"}, "base64"),
    ({"image_b64": "aGVsbG8=", "image_url": "http://x/y.png"}, "one of"),
    ({"prompt": "cup", "colour": "red"}, "colour"),
    ({"image_url": "file:///etc/passwd"}, "http(s)"),
    ({"image_b64": base64.b64encode(photo_bytes("coffee")).decode(),
      "point_prompts": [{"x": 900, "y": 10}]}, "outside"),
    ({"image_b64": base64.b64encode(photo_bytes("coffee")).decode(),
      "box_prompts": [{"x_min": 10, "y_min": 10, "x_max": 5, "y_max": 20}]}, "x_max > x_min"),
    ({"image_b64": base64.b64encode(photo_bytes("coffee")).decode(), "encoding": "morse"}, "encoding"),
    ({"prompt": "cup", "face_budget": 10}, "face_budget"),
    ({"prompt": "cup", "geometry_steps": 0}, "geometry_steps"),
    ({"prompt": "a car", "point_prompts": [{"x": 1, "y": 1}]}, "photo"),
])
def test_bad_json_is_422_with_reason(client, body, needle):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"]


def test_wrong_content_type_and_broken_json(client):
    assert client.post("/v1/generate", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    r = client.post("/v1/generate", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_failure_mid_stream_becomes_an_error_event(tmp_path):
    class Failing(LocalClients):
        async def bake(self, recon, artifact_id, options=None):
            raise BadInput("the reconstruction is empty; nothing to mesh")

    c = make_client(tmp_path, Failing)
    evs = events_of(c.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))]))
    assert evs[-1]["type"] == "error" and evs[-1]["code"] == "bad_input"
    assert "nothing to mesh" in evs[-1]["message"]
    assert evs[-1]["seq"] == evs[-2]["seq"] + 1


def test_internal_error_hides_details(tmp_path):
    class Broken(LocalClients):
        async def bake(self, recon, artifact_id, options=None):
            raise RuntimeError("secret path /srv/x exploded")

    c = make_client(tmp_path, Broken)
    evs = events_of(c.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))]))
    assert evs[-1]["type"] == "error" and "secret" not in evs[-1]["message"]
    assert evs[0]["request_id"] in evs[-1]["message"]


@pytest.mark.parametrize("honor,headers,expected", [
    (False, {"x-request-timeout-seconds": "0", "x-request-disconnect-disabled": "?1"}, (None, True)),
    (True, {}, (None, True)),
    (True, {"x-request-timeout-seconds": "12.5"}, (12.5, True)),
    (True, {"x-request-timeout-seconds": "0", "x-request-disconnect-disabled": "?1"}, ("huge", False)),
    (True, {"x-request-timeout-seconds": "soon"}, (None, True)),
])
def test_client_serve_headers_only_count_when_the_operator_says_so(honor, headers, expected):
    from starlette.requests import Request

    from serve_app.ingress import client_stream_policy

    scope = {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    deadline, watch = client_stream_policy(Request(scope), honor)
    if expected[0] == "huge":
        assert deadline > 86400 * 365
    else:
        assert deadline == expected[0]
    assert watch is expected[1]


def test_per_request_steps_reach_the_reconstructor(client):
    body = {"image_b64": base64.b64encode(photo_bytes("coffee")).decode(),
            "geometry_steps": 5, "appearance_steps": 4, "face_budget": 2000}
    evs = events_of(client.post("/v1/generate", json=body))
    # Self-pacing may coalesce frames; the totals and the last step are what was asked for.
    geo = [e for e in evs if e["type"] == "geometry"]
    app = [e for e in evs if e["type"] == "appearance"]
    assert {e["total_steps"] for e in geo} == {5} and geo[-1]["step"] == 5
    assert {e["total_steps"] for e in app} == {4} and app[-1]["step"] == 4
    assert evs[-1]["type"] == "complete" and "pose" not in evs[-1]  # the embedded backend has none


@pytest.mark.parametrize("name", ["full", "seed"])
def test_full_encoding_and_its_former_name_seed(client, name):
    """`full` (6 bytes a voxel, every frame whole) is also accepted as `seed`, its former name,
    in JSON and in multipart forms."""
    photo = photo_bytes("coffee")
    evs = events_of(client.post("/v1/generate", json={"image_b64": base64.b64encode(photo).decode(),
                                                      "encoding": name}))
    frames = [e for e in evs if e["type"] in ("geometry", "appearance")]
    assert frames and {e["encoding"] for e in frames} == {"binary_uint8_xyzrgb"}
    evs = events_of(client.post("/v1/generate", files=[("image", ("c.png", photo))], data={"encoding": name}))
    assert {e["encoding"] for e in evs if e["type"] == "geometry"} == {"binary_uint8_xyzrgb"}


def test_encoding_is_one_type_with_one_default():
    from serve_app.pipeline import Job
    from serve_app.schemas import GenerateRequest

    assert GenerateRequest().encoding == Job.__dataclass_fields__["encoding"].default == "compact"
    assert GenerateRequest(encoding="seed").encoding == "full"
    schema = GenerateRequest.model_json_schema()["properties"]["encoding"]
    assert schema["enum"] == ["full", "compact"] and schema["default"] == "compact"


def test_the_request_seed_reaches_the_generator_and_the_reconstructor(tmp_path):
    """One field, Job.seed: the image generator gets it directly, the reconstructor in its options."""
    from photos import photo_array

    seen = {}

    class Seeded(LocalClients):
        async def describe_image_generator(self):
            return {"backend": "stub", "available": True}

        async def generate_image(self, prompt, seed):
            seen["generator"] = seed
            return photo_array("coffee")

        def reconstruct(self, image, mask, options):
            seen["reconstructor"] = options.seed
            return super().reconstruct(image, mask, options)

    c = make_client(tmp_path, Seeded)
    assert events_of(c.post("/v1/generate", json={"prompt": "a mug", "seed": 11}))[-1]["type"] == "complete"
    assert seen == {"generator": 11, "reconstructor": 11}
