"""No auth and no quotas (issue 10): API keys hashed at rest, per-key rate and stream quotas."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from serve_app.auth import ApiKeys, AuthMiddleware, Quota, digest
from serve_app.ingress import build_fastapi_app
from serve_app.local import LocalClients
from serve_app.service import GenerateService
from sam3d_common.settings import AuthSettings, ConfigError, load_settings
from sam3d_common.store import ArtifactStore

KEY, OTHER = "k-alice-0123456789", "k-bob-9876543210"


def app_with_auth(tmp_path, **auth):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# comment\nalice:{digest(KEY)}\nbob:{digest(OTHER)}\n")
    settings = load_settings({"store": {"url": str(tmp_path)},
                              "auth": {"enabled": True, "keys_file": str(keys), "keys_env": None, **auth}})
    store = ArtifactStore(str(tmp_path))
    return build_fastapi_app(GenerateService(settings, LocalClients(settings, store), store))


def test_auth_missing_or_wrong_key_is_401(tmp_path):
    client = TestClient(app_with_auth(tmp_path))
    for headers in ({}, {"authorization": "Bearer nope"}, {"x-api-key": KEY + "x"}, {"authorization": f"Basic {KEY}"}):
        resp = client.post("/v1/generate", json={"prompt": "cup"}, headers=headers)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
        assert resp.headers["www-authenticate"] == "Bearer"


def test_auth_valid_key_passes_in_either_header(tmp_path):
    client = TestClient(app_with_auth(tmp_path))
    for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": OTHER}):
        resp = client.post("/v1/generate", json={}, headers=headers)
        assert resp.status_code == 422  # past auth: the route's own answer


def test_auth_leaves_health_viewer_protocol_and_artifacts_open(tmp_path):
    client = TestClient(app_with_auth(tmp_path))
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/protocol").status_code == 200
    assert client.get("/v1/artifacts/" + "0" * 32 + "/model.glb").status_code == 404
    assert client.post("/v1/streams/abc/keyframe").status_code == 401


def test_auth_keys_are_stored_hashed_and_checked_in_full():
    keys = ApiKeys.parse(f"alice:{digest(KEY)}", "test")
    assert keys.identify(KEY) == "alice"
    assert keys.identify(KEY[:-1]) is None and keys.identify("") is None
    assert KEY not in repr(keys._entries)


@pytest.mark.parametrize("text", ["alice", "alice:1234", f"alice:{'g' * 64}"])
def test_auth_malformed_key_store_fails_at_start(text):
    with pytest.raises(ConfigError, match="name:sha256-hex"):
        ApiKeys.parse(text, "keys.txt")


def test_auth_enabled_without_keys_fails_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("SAM3D_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="no API key"):
        ApiKeys.load(AuthSettings(enabled=True))
    monkeypatch.setenv("SAM3D_API_KEYS", f"alice:{digest(KEY)},bob:{digest(OTHER)}")
    assert ApiKeys.load(AuthSettings(enabled=True)).identify(OTHER) == "bob"


def test_quota_requests_per_minute_is_429_with_retry_after(tmp_path):
    client = TestClient(app_with_auth(tmp_path, requests_per_minute=2))
    alice, bob = {"x-api-key": KEY}, {"x-api-key": OTHER}
    assert [client.post("/v1/generate", json={}, headers=alice).status_code for _ in range(2)] == [422, 422]
    resp = client.post("/v1/generate", json={}, headers=alice)
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["retry-after"]) <= 30
    assert client.post("/v1/generate", json={}, headers=bob).status_code == 422  # per key


def test_quota_bucket_refills_over_time():
    now = [0.0]
    quota = Quota(per_minute=60, streams=1, clock=lambda: now[0])
    assert all(quota.take_request("a") == 0 for _ in range(60))
    assert quota.take_request("a") == pytest.approx(1.0)
    now[0] += 2.0
    assert quota.take_request("a") == 0 and quota.take_request("a") == 0
    assert quota.take_request("a") > 0


async def test_quota_concurrent_streams_is_429_and_freed_when_a_stream_ends():
    release = asyncio.Event()

    async def slow_stream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await release.wait()
        await send({"type": "http.response.body", "body": b"done"})

    app = AuthMiddleware(slow_stream, ApiKeys.parse(f"alice:{digest(KEY)}", "t"), Quota(100, streams=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        first = asyncio.create_task(client.post("/v1/generate", headers={"x-api-key": KEY}))
        await asyncio.sleep(0.05)
        second = await client.post("/v1/generate", headers={"x-api-key": KEY})
        assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_streams"
        assert second.headers["retry-after"] == "5"
        release.set()
        assert (await first).status_code == 200
        release.clear()
        third = asyncio.create_task(client.post("/v1/generate", headers={"x-api-key": KEY}))
        await asyncio.sleep(0.05)
        release.set()
        assert (await third).status_code == 200


def test_auth_on_in_the_production_config_and_off_locally():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    args = {name: yaml.safe_load((root / name).read_text())["applications"][0]["args"]
            for name in ("serve_config.yaml", "serve_config.local.yaml")}
    assert load_settings(args["serve_config.yaml"]).auth.enabled
    assert not load_settings(args["serve_config.local.yaml"]).auth.enabled
