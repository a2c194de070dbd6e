"""One owner closes a stream (serve_app/stream_owner.py): its steps on their own, and over the
ASGI app in process (no Ray) a client that leaves mid-stream, or a stream that completes,
releases everything the stream held through that one close."""
import asyncio
import base64
import json
import threading

import pytest
from fastapi.testclient import TestClient

from photos import photo_bytes
from serve_app.ingress import build_fastapi_app
from serve_app.local import LocalClients
from serve_app.service import GenerateService
from serve_app.stream_owner import StreamOwner
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore
from test_routes import FAST, events_of

LONG = {**FAST, "reconstructor": {"grid_size": 32, "inflation": {
    "geometry_steps": 200, "appearance_steps": 200, "min_step_s": 0.02}}}


async def test_close_runs_every_step_once_newest_first_even_past_a_failure():
    ran = []
    stream = StreamOwner("r")

    async def pipeline():
        ran.append("pipeline")

    def failing():
        ran.append("failing")
        raise RuntimeError("boom")

    stream.on_close(pipeline)
    stream.on_close(failing)
    stream.on_close(lambda: ran.append("writer"))
    with pytest.raises(RuntimeError, match="boom"):
        await stream.close()
    assert ran == ["writer", "failing", "pipeline"]
    await stream.close()  # a second close does nothing
    assert ran == ["writer", "failing", "pipeline"] and stream.closed
    with pytest.raises(RuntimeError, match="already closed"):
        stream.on_close(lambda: None)


class Watched(LocalClients):
    """The local backends, with the reconstructor's stream watched: steps it yielded and
    whether it was closed (what frees a GPU replica under Serve)."""

    def __init__(self, settings, store):
        super().__init__(settings, store)
        self.steps = 0
        self.closed = threading.Event()

    def reconstruct(self, image, mask, options):
        inner = super().reconstruct(image, mask, options)
        owner = self

        async def watched():
            try:
                async for item in inner:
                    owner.steps += 1
                    yield item
            finally:
                await inner.aclose()
                owner.closed.set()
        return watched()


def _app(tmp_path, settings=LONG):
    settings = load_settings({**settings, "store": {"url": str(tmp_path)}})
    store = ArtifactStore(str(tmp_path))
    clients = Watched(settings, store)
    return build_fastapi_app(GenerateService(settings, clients, store)), clients


async def _post_until_disconnect(app, leave_after: bytes):
    """POST /v1/generate through the ASGI app; the client goes away once `leave_after` arrived.
    → (status, request id, body received)."""
    body = json.dumps({"image_b64": base64.b64encode(photo_bytes("coffee")).decode()}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/generate", "raw_path": b"/v1/generate",
             "query_string": b"", "root_path": "", "server": ("test", 80), "client": ("test", 1),
             "headers": [(b"content-type", b"application/json"), (b"host", b"test")]}
    gone = asyncio.Event()
    sent_body = False
    got = {"status": None, "headers": {}, "body": b""}

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            got["status"] = message["status"]
            got["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            got["body"] += message.get("body", b"")
            if leave_after in got["body"]:
                gone.set()

    await asyncio.wait_for(app(scope, receive, send), 30)
    return got["status"], got["headers"].get("x-sam3d-request-id"), got["body"]


async def test_a_client_that_leaves_stops_the_run_through_the_owner(tmp_path):
    app, clients = _app(tmp_path)
    status, rid, body = await _post_until_disconnect(app, b"event: geometry")
    assert status == 200 and b"event: complete" not in body
    # The app call has returned: the owner's close has run, the reconstructor's stream with it.
    assert clients.closed.is_set()
    steps_at_close = clients.steps
    assert steps_at_close < 400  # it was stopped, not run to its end
    await asyncio.sleep(0.2)
    assert clients.steps == steps_at_close  # nothing runs on for nobody
    for _ in range(50):  # the failed run's artifacts are deleted in a thread
        if not (tmp_path / rid).exists():
            break
        await asyncio.sleep(0.05)
    assert not (tmp_path / rid).exists()
    # The stream's writer left the key-frame registry with it.
    with TestClient(app) as client:
        assert client.post(f"/v1/streams/{rid}/keyframe").status_code == 404


def test_a_complete_stream_keeps_its_artifacts_and_leaves_the_registry(tmp_path):
    app, clients = _app(tmp_path, FAST)
    client = TestClient(app)
    resp = client.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))],
                       headers={"accept": "application/octet-stream"})
    assert resp.status_code == 200 and clients.closed.is_set()
    assert resp.headers["content-type"] == "application/octet-stream"
    rid = resp.headers["x-sam3d-request-id"]
    assert (tmp_path / rid / "model.glb").is_file()
    assert client.post(f"/v1/streams/{rid}/keyframe").status_code == 404
    evs = events_of(client.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))]))
    assert evs[-1]["type"] == "complete"
    assert (tmp_path / evs[-1]["request_id"] / "model.glb").is_file()
