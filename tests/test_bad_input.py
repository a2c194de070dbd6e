"""No 500s on bad input (issue 10): every malformed request the probe found gets a 4xx with a
JSON reason, before any stage is called."""
from __future__ import annotations

import base64
import os

import pytest
from fastapi.testclient import TestClient

from photos import photo_bytes
from serve_app.ingress import build_fastapi_app
from serve_app.local import LocalClients
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore

PHOTO = base64.b64encode(photo_bytes("coffee")).decode()
JSON = {"content-type": "application/json"}


class NoSegmenter:
    """A segmenter that fails the test if a bad request ever reaches it."""

    def __getattr__(self, name):
        async def called(*args, **kwargs):
            raise AssertionError(f"bad input reached segmenter.{name}")
        return called


class NoClients(LocalClients):
    async def segment(self, *args, **kwargs):
        raise AssertionError("bad input reached the segmenter stage")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    settings = load_settings({"store": {"url": str(tmp)}})
    store = ArtifactStore(str(tmp))
    app = build_fastapi_app(GenerateService(settings, NoClients(settings, store), store), NoSegmenter())
    return TestClient(app, raise_server_exceptions=False)


def multipart(body: bytes, boundary: str = "abc") -> dict:
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


def part(name: str, value: bytes, boundary: str = "abc", filename: str | None = None) -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"


def json_body(text: bytes) -> dict:
    return {"content": text, "headers": JSON}


BIG_INT = b"9" * 5001
FIELDS = b"".join(part(f"f{i}", b"1") for i in range(2000)) + b"--abc--\r\n"

CASES = {
    # multipart edge cases
    "multipart_without_boundary": ("POST", "/v1/generate", {"content": b"abc", "headers": {"content-type": "multipart/form-data"}}, 400),
    "multipart_wrong_boundary": ("POST", "/v1/generate", multipart(part("prompt", b"cup", "xyz") + b"--xyz--\r\n"), 400),
    "multipart_part_without_disposition": ("POST", "/v1/generate", multipart(b"--abc\r\nX-Other: 1\r\n\r\nv\r\n--abc--\r\n"), 400),
    "multipart_random_bytes": ("POST", "/v1/generate", multipart(os.urandom(5000)), 400),
    "multipart_2000_fields": ("POST", "/v1/generate", multipart(FIELDS), 400),
    "multipart_2MB_text_field": ("POST", "/v1/generate", multipart(part("prompt", b"x" * 2_000_000) + b"--abc--\r\n"), 400),
    "multipart_huge_integer_seed": ("POST", "/v1/generate", multipart(part("image", photo_bytes("coffee"), filename="a.jpg") + part("seed", BIG_INT) + b"--abc--\r\n"), 422),
    "multipart_infinite_click": ("POST", "/v1/generate", multipart(part("image", photo_bytes("coffee"), filename="a.jpg") + part("point_prompts", b'[{"x": Infinity, "y": 1}]') + b"--abc--\r\n"), 400),
    "embed_multipart_random_bytes": ("POST", "/v1/embed", multipart(os.urandom(5000)), 400),
    # JSON limits
    "json_nested_10000_deep": ("POST", "/v1/generate", json_body(b"[" * 10000 + b"]" * 10000), 400),
    "json_object_nested_10000_deep": ("POST", "/v1/generate", json_body(b'{"a":' * 10000 + b"1" + b"}" * 10000), 400),
    "json_nested_20_deep_in_a_field": ("POST", "/v1/generate", json_body(b'{"prompt": ' + b"[" * 20 + b"]" * 20 + b"}"), 400),
    "json_huge_integer_seed": ("POST", "/v1/generate", json_body(b'{"seed": ' + BIG_INT + b"}"), 400),
    "segment_huge_integer_max_instances": ("POST", "/v1/segment", json_body(b'{"embedding_id": "x", "max_instances": ' + BIG_INT + b"}"), 400),
    "embed_huge_integer": ("POST", "/v1/embed", json_body(b'{"image_b64": ' + BIG_INT + b"}"), 400),
    "embed_nested_10000_deep": ("POST", "/v1/embed", json_body(b"[" * 10000 + b"]" * 10000), 400),
    "json_not_an_object": ("POST", "/v1/generate", json_body(b"[1, 2]"), 422),
    "json_broken": ("POST", "/v1/generate", json_body(b"{nope"), 400),
    "json_not_utf8": ("POST", "/v1/generate", json_body(b'{"prompt": "\xff\xfe"}'), 400),
    # numbers that are not what they claim
    "box_1e308": ("POST", "/v1/generate", {"json": {"image_b64": PHOTO, "box_prompts": [{"x_min": 0, "y_min": 0, "x_max": 1e308, "y_max": 5}]}}, 422),
    "box_infinity": ("POST", "/v1/generate", json_body(b'{"box_prompts": [{"x_min": 0, "y_min": 0, "x_max": Infinity, "y_max": 5}]}'), 400),
    "click_nan": ("POST", "/v1/generate", json_body(b'{"point_prompts": [{"x": NaN, "y": 1}]}'), 400),
    "number_overflowing_to_infinity": ("POST", "/v1/generate", json_body(b'{"point_prompts": [{"x": 1e999, "y": 1}]}'), 400),
    "seed_true": ("POST", "/v1/generate", {"json": {"image_b64": PHOTO, "seed": True}}, 422),
    "label_true": ("POST", "/v1/generate", {"json": {"image_b64": PHOTO, "point_prompts": [{"x": 1, "y": 1, "label": True}]}}, 422),
    "steps_false": ("POST", "/v1/generate", {"json": {"image_b64": PHOTO, "geometry_steps": False}}, 422),
    "segment_label_true": ("POST", "/v1/segment", {"json": {"embedding_id": "x", "points": [{"x": 1, "y": 1, "label": True}]}}, 422),
    "segment_box_infinity": ("POST", "/v1/segment", json_body(b'{"embedding_id": "x", "box": [0, 0, Infinity, 1]}'), 400),
    "segment_max_instances_true": ("POST", "/v1/segment", {"json": {"embedding_id": "x", "max_instances": True}}, 422),
    # content types
    "content_type_jsonx": ("POST", "/v1/generate", {"content": b'{"prompt": "cup"}', "headers": {"content-type": "application/jsonx"}}, 415),
    "content_type_text": ("POST", "/v1/generate", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
    "content_type_missing": ("POST", "/v1/generate", {"content": b'{"prompt": "cup"}'}, 415),
    "segment_content_type_jsonx": ("POST", "/v1/segment", {"content": b'{"embedding_id": "x"}', "headers": {"content-type": "application/jsonx"}}, 415),
    "embed_content_type_text": ("POST", "/v1/embed", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
    # names
    "static_256_character_name": ("GET", "/static/" + "a" * 256 + ".js", {}, 404),
    "static_256_character_plain_name": ("GET", "/static/" + "a" * 256, {}, 404),
    "artifact_long_name": ("GET", "/v1/artifacts/" + "0" * 32 + "/" + "a" * 256 + ".glb", {}, 400),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_4xx_with_a_reason(client, case):
    method, path, kwargs, status = CASES[case]
    resp = client.request(method, path, **kwargs)
    assert resp.status_code == status, resp.text[:300]
    error = resp.json()["error"]
    assert error["code"] in ("bad_input", "not_found", "bad_artifact_ref") and error["message"]
    assert "Traceback" not in resp.text


def test_json_body_over_the_size_limit_is_413(tmp_path):
    settings = load_settings({"store": {"url": str(tmp_path)}, "limits": {"max_json_bytes": 10_000}})
    store = ArtifactStore(str(tmp_path))
    client = TestClient(build_fastapi_app(GenerateService(settings, NoClients(settings, store), store)))
    for route in ("/v1/generate", "/v1/jobs"):  # the jobs route reads the same body the same way
        resp = client.post(route, json={"prompt": "x" * 100_000})
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "bad_input", route


def test_multipart_fields_still_parse_as_before(client):
    """The limits leave a normal form alone: a click in range, a seed as text."""
    body = (part("image", photo_bytes("coffee"), filename="a.jpg") + part("seed", b"7")
            + part("point_prompts", b'[{"x": 1e9, "y": 1}]') + b"--abc--\r\n")
    resp = client.post("/v1/generate", **multipart(body))
    assert resp.status_code == 422 and "point_prompts.0.x" in resp.json()["error"]["message"]
