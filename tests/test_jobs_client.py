"""The Python client's job modes against the jobs API: resuming a dropped events stream
(a transport that cuts it, like a lost Wi-Fi link) and the CLI's --detach / --attach."""
from __future__ import annotations

import httpx

from photos import photo_bytes
from serve_app.client import iter_job_events, main as client_main, submit_job
from serve_app.protocol import FRAME_EVENTS
from test_jobs import read_events, server  # noqa: F401 - `server` is the module's fixture


class _Cut(httpx.SyncByteStream):
    """A response body that breaks off after `limit` bytes, like a dropped Wi-Fi link."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit = inner, limit

    def __iter__(self):
        sent = 0
        for chunk in self.inner:
            yield chunk[: self.limit - sent]
            sent += len(chunk)
            if sent >= self.limit:
                raise httpx.ReadError("connection dropped (test)")

    def close(self):
        self.inner.close()


class DroppingTransport(httpx.HTTPTransport):
    """Cuts the first `drops` events streams after a few kilobytes."""

    def __init__(self, drops: int, limit: int):
        super().__init__()
        self.drops, self.limit, self.requests = drops, limit, []

    def handle_request(self, request):
        resp = super().handle_request(request)
        if request.url.path.endswith("/events"):
            self.requests.append(request.headers.get("last-event-id"))
            if self.drops > 0:
                self.drops -= 1
                resp.stream = _Cut(resp.stream, self.limit)
        return resp


def test_client_resumes_a_dropped_job_stream(server):
    base, _ = server
    transport = DroppingTransport(drops=2, limit=1500)
    with httpx.Client(transport=transport, timeout=30) as c:
        job_id = submit_job(base, client=c, image=photo_bytes("coffee"), seed=5)["job_id"]
        events = [ev for _, ev in iter_job_events(base, job_id, client=c, retry_wait_s=0.05)]
    assert len(transport.requests) == 3 and transport.requests[0] == "-1"
    assert int(transport.requests[2]) > int(transport.requests[1]) >= 0
    assert events[-1]["type"] == "complete"
    plain = [e["seq"] for e in events if e["type"] not in FRAME_EVENTS]
    assert plain == sorted(set(plain))  # no non-frame event lost or repeated
    assert plain == [e["seq"] for e in read_events(httpx.Client(), base, job_id)[0]
                     if e["type"] not in FRAME_EVENTS]


def test_client_cli_detach_then_attach(server, tmp_path, capsys):
    base, _ = server
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(photo_bytes("coffee"))
    assert client_main(["--url", base, "--image", str(photo), "--detach"]) == 0
    job_id = capsys.readouterr().out.strip()
    out = tmp_path / "model.glb"
    assert client_main(["--url", base, "--attach", job_id, "--out", str(out), "--quiet"]) == 0
    assert out.read_bytes()[:4] == b"glTF"
    # No seed was given: the job pinned one, so its manifest says how to reproduce it.
    assert isinstance(httpx.get(f"{base}/v1/jobs/{job_id}").json()["manifest"]["seed"], int)
