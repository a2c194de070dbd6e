"""Slow 503s (issue 10): past `limits.max_active_streams` a stream request is refused at once."""
from __future__ import annotations

import asyncio
import time

import httpx

from serve_app.admission import StreamAdmission
from test_routes import make_client


async def test_admission_refuses_at_once_and_frees_the_slot():
    release = asyncio.Event()

    async def stream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/v1/generate":
            await release.wait()
        await send({"type": "http.response.body", "body": b"done"})

    app = StreamAdmission(stream, limit=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        running = [asyncio.create_task(client.post("/v1/generate")) for _ in range(2)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        refused = await client.post("/v1/generate")
        assert time.monotonic() - t0 < 0.5
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "busy"
        assert (await client.get("/healthz")).status_code == 200  # other routes are not limited
        release.set()
        assert [(await r).status_code for r in running] == [200, 200]
        assert app.active == 0
        release.clear()
        again = asyncio.create_task(client.post("/v1/generate"))
        await asyncio.sleep(0.05)
        release.set()
        assert (await again).status_code == 200


def test_admission_is_off_unless_configured(tmp_path):
    app = make_client(tmp_path).app
    assert not any(m.cls is StreamAdmission for m in app.user_middleware)


def test_admission_local_config_matches_the_reconstructor_capacity():
    from pathlib import Path

    import yaml

    from sam3d_common.settings import load_settings

    app = yaml.safe_load((Path(__file__).resolve().parents[1] / "serve_config.local.yaml").read_text())["applications"][0]
    recon = next(d for d in app["deployments"] if d["name"] == "Reconstructor")
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    assert ingress.get("num_replicas", 1) == 1
    limit = load_settings(app["args"]).limits.max_active_streams
    assert limit == recon["max_ongoing_requests"] + recon["max_queued_requests"]
