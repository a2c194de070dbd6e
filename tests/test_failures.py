"""Failures without a reason (issue 10): a replica that dies mid-request is a 503 with
Retry-After before the stream, and an `error` event with code `stage_unavailable` during it."""
from __future__ import annotations

import pytest
from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors

from sam3d_common.errors import StageUnavailable, as_stage_error
from photos import photo_bytes
from serve_app.local import LocalClients
from test_routes import events_of, make_client


@pytest.mark.parametrize("exc", [
    ray_errors.ActorDiedError(), ray_errors.ActorUnavailableError("gone", None),
    ray_errors.RayActorError(), ray_errors.WorkerCrashedError(),
    serve_errors.DeploymentUnavailableError("Segmenter"),
])
def test_failures_replica_death_maps_to_stage_unavailable(exc):
    err = as_stage_error(exc)
    assert isinstance(err, StageUnavailable) and err.status == 503 and err.code == "stage_unavailable"


def test_failures_wrapped_replica_death_is_found():
    try:
        try:
            raise ray_errors.ActorDiedError()
        except Exception as inner:
            raise RuntimeError("while calling the segmenter") from inner
    except RuntimeError as outer:
        assert isinstance(as_stage_error(outer), StageUnavailable)


def test_failures_segmenter_death_before_the_stream_is_503_with_retry_after(tmp_path):
    class SegmenterDied(LocalClients):
        async def segment(self, *args, **kwargs):
            raise ray_errors.ActorDiedError()

    resp = make_client(tmp_path, SegmenterDied).post(
        "/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))])
    assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
    assert resp.json()["error"]["code"] == "stage_unavailable"


def test_failures_baker_death_mid_stream_is_an_error_event_with_a_code(tmp_path):
    class BakerDied(LocalClients):
        async def bake(self, *args, **kwargs):
            raise ray_errors.ActorDiedError()

    evs = events_of(make_client(tmp_path, BakerDied).post(
        "/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))]))
    assert evs[-1]["type"] == "error" and evs[-1]["code"] == "stage_unavailable"
    assert "retry" in evs[-1]["message"] and evs[-1]["retry_after_s"] == 5
