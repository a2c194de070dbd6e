"""Front-door headers of issue 10: CORS only for configured origins, security headers always."""
from __future__ import annotations

from fastapi.testclient import TestClient

from serve_app.auth import digest
from serve_app.ingress import build_fastapi_app
from serve_app.local import LocalClients
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore


def client_for(tmp_path, **args) -> TestClient:
    settings = load_settings({"store": {"url": str(tmp_path)}, **args})
    store = ArtifactStore(str(tmp_path))
    return TestClient(build_fastapi_app(GenerateService(settings, LocalClients(settings, store), store)))


def test_headers_security_headers_on_every_response(tmp_path):
    client = client_for(tmp_path)
    for resp in (client.get("/healthz"), client.get("/v1/artifacts/x/y"), client.post("/v1/generate", json={})):
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["referrer-policy"] == "no-referrer"
        assert resp.headers["x-frame-options"] == "DENY"


def test_headers_no_cors_unless_configured(tmp_path):
    resp = client_for(tmp_path).get("/healthz", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in resp.headers


def test_headers_cors_allow_list_with_auth(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM3D_API_KEYS", f"web:{digest('k')}")
    client = client_for(tmp_path, cors_allow_origins=["https://app.example"], auth={"enabled": True})
    pre = client.options("/v1/generate", headers={"origin": "https://app.example",
                                                  "access-control-request-method": "POST",
                                                  "access-control-request-headers": "authorization"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
    denied = client.post("/v1/generate", json={}, headers={"origin": "https://app.example"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"
    other = client.get("/healthz", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
