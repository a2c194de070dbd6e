"""OpenAPI findings of issue 10: the document resolves (no `#/$defs/...` left dangling), the
constraints are JSON Schema keywords, and each route declares every status it answers."""
from __future__ import annotations

import jsonschema
import pytest

from test_bad_input import CASES, NoClients, NoSegmenter, client  # noqa: F401 - fixture
from serve_app.ingress import build_fastapi_app
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore

EXPECTED = {
    ("post", "/v1/generate"): {200, 400, 401, 413, 415, 422, 429, 500, 501, 503, 504},
    ("post", "/v1/embed"): {200, 400, 401, 413, 415, 422, 429, 500, 501, 503, 504},
    ("post", "/v1/segment"): {200, 400, 401, 404, 413, 415, 422, 429, 500, 501, 503, 504},
    ("get", "/v1/models/sam3-click-decoder.onnx"): {200, 304, 500, 501, 503, 504},
    ("get", "/v1/models/sam3-click-decoder.photo.onnx"): {200, 304, 500, 501, 503, 504},
    ("post", "/v1/streams/{request_id}/keyframe"): {202, 401, 404, 422, 429},
    ("get", "/v1/artifacts/{artifact_id}/{name}"): {200, 400, 404, 422},
    ("get", "/v1/protocol"): {200},
    ("get", "/v1/capabilities"): {200, 401, 429},
    ("post", "/v1/jobs"): {202, 400, 401, 413, 415, 422, 429, 500, 501, 503, 504},
    ("get", "/v1/jobs/{job_id}"): {200, 401, 404, 422, 429},
    ("delete", "/v1/jobs/{job_id}"): {200, 401, 404, 422, 429},
    ("get", "/v1/jobs/{job_id}/events"): {200, 400, 401, 404, 422, 429},
    ("get", "/healthz"): {200},
}


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    settings = load_settings({"store": {"url": str(tmp)}})
    store = ArtifactStore(str(tmp))
    return build_fastapi_app(GenerateService(settings, NoClients(settings, store), store), NoSegmenter()).openapi()


def walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def resolve(doc: dict, pointer: str):
    assert pointer.startswith("#/"), pointer
    node = doc
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_openapi_every_ref_resolves(doc):
    refs = [(path, v) for path, k, v in walk(doc) if k == "$ref"]
    assert refs, "the document should use references"
    for path, pointer in refs:
        resolve(doc, pointer)  # KeyError names the dangling reference
    assert "$defs" not in str(doc)


def test_openapi_constraints_are_json_schema_keywords(doc):
    """pydantic writes `ge`/`le` verbatim when a constraint sits after a validator; no tool reads them."""
    bad = [path for path, k, _ in walk(doc["components"])
           if k in ("ge", "le", "gt", "lt") and (not path or path[-1] != "properties")]
    assert bad == []
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_openapi_request_bodies_validate_through_the_document(doc):
    body = doc["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**body, "components": doc["components"]})
    validator.validate({"image_url": "https://example.com/a.png", "seed": 7,
                        "point_prompts": [{"x": 1, "y": 2, "label": 1}],
                        "box_prompts": [{"x_min": 0, "y_min": 0, "x_max": 5, "y_max": 5}]})
    for bad in ({"seed": True}, {"point_prompts": [{"x": 1, "y": 2, "label": True}]},
                {"box_prompts": [{"x_min": 0, "y_min": 0, "x_max": 1e308, "y_max": 5}]}, {"nope": 1}):
        assert not validator.is_valid(bad), bad
    seg = doc["paths"]["/v1/segment"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**seg, "components": doc["components"]}).validate(
        {"embedding_id": "x", "points": [{"x": 1, "y": 1}]})


def test_openapi_declares_every_status_each_route_answers(doc):
    declared = {(m, p): {int(s) for s in op["responses"]} for p, ops in doc["paths"].items() for m, op in ops.items()}
    assert declared == EXPECTED
    for (method, path), statuses in declared.items():
        for status in statuses:
            if status >= 400:
                content = doc["paths"][path][method]["responses"][str(status)]["content"]
                assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def _route(path: str) -> tuple[str, ...]:
    for (_, template) in EXPECTED:
        a, b = template.split("/"), path.split("?")[0].split("/")
        if len(a) == len(b) and all(x == y or x.startswith("{") for x, y in zip(a, b)):
            return template
    return ()


@pytest.mark.parametrize("case", [c for c in CASES if not CASES[c][1].startswith("/static/")])
def test_openapi_bad_input_statuses_are_declared(doc, client, case):  # noqa: F811
    method, path, kwargs, _ = CASES[case]
    status = client.request(method, path, **kwargs).status_code
    assert str(status) in doc["paths"][_route(path)][method.lower()]["responses"]
