"""Disk findings of issue 10: artifacts expire, the store keeps to a size cap, a failed or
abandoned request leaves nothing served, and artifacts are not cached publicly for a year."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from sam3d_common.errors import BadInput
from photos import photo_bytes
from serve_app.local import LocalClients
from serve_app.schemas import GenerateRequest
from serve_app.prepare import prepare_job
from serve_app.run import start_run
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactNotFound, ArtifactStore, Retention
from test_routes import FAST, events_of, make_client


def aid(i: int) -> str:
    return f"{i:032x}"


def put_aged(store: ArtifactStore, root, i: int, age_s: float, size: int = 1000) -> None:
    store.put(aid(i), "model.glb", b"x" * size)
    t = time.time() - age_s
    os.utime(root / aid(i) / "model.glb", (t, t))


def test_retention_sweep_deletes_expired_artifacts(tmp_path):
    store = ArtifactStore(str(tmp_path))
    put_aged(store, tmp_path, 1, age_s=7200)
    put_aged(store, tmp_path, 2, age_s=10)
    (tmp_path / "not-an-artifact").mkdir()
    result = store.sweep(ttl_s=3600, max_total_bytes=None)
    assert (result.removed, result.freed_bytes, result.kept_bytes) == (1, 1000, 1000)
    assert not (tmp_path / aid(1) / "model.glb").is_file() and (tmp_path / aid(2) / "model.glb").is_file()
    assert (tmp_path / "not-an-artifact").is_dir()


def test_retention_size_cap_deletes_the_oldest_first(tmp_path):
    store = ArtifactStore(str(tmp_path))
    for i, age in enumerate([300, 100, 200, 50]):
        put_aged(store, tmp_path, i, age_s=age)
    result = store.sweep(ttl_s=None, max_total_bytes=2500)
    assert result.removed == 2 and result.kept_bytes == 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == [aid(1), aid(3)]


def test_retention_expired_artifact_is_not_served_before_the_sweep(tmp_path):
    store = ArtifactStore(str(tmp_path), ttl_s=3600)
    put_aged(store, tmp_path, 1, age_s=7200)
    put_aged(store, tmp_path, 2, age_s=10)
    with pytest.raises(ArtifactNotFound):
        store.get(aid(1), "model.glb")
    assert store.get(aid(2), "model.glb") == b"x" * 1000


async def test_retention_tick_sweeps_at_most_every_interval(tmp_path):
    store = ArtifactStore(str(tmp_path))
    now = [0.0]
    retention = Retention(store, ttl_s=3600, max_total_bytes=None, every_s=60, clock=lambda: now[0])
    put_aged(store, tmp_path, 1, age_s=7200)
    assert (await retention.tick()).removed == 1
    put_aged(store, tmp_path, 2, age_s=7200)
    now[0] = 30
    assert retention.tick() is None and (tmp_path / aid(2) / "model.glb").is_file()
    now[0] = 61
    assert (await retention.tick()).removed == 1
    assert Retention(store, None, None, 60).tick() is None  # retention off


def test_retention_failed_request_leaves_no_artifact_served(tmp_path):
    class Failing(LocalClients):
        async def bake(self, *args, **kwargs):
            raise BadInput("the reconstruction is empty; nothing to mesh")

    client = make_client(tmp_path, Failing)
    evs = events_of(client.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))]))
    assert evs[-1]["type"] == "error"
    mask_url = next(e["mask_url"] for e in evs if e.get("mask_url"))
    for _ in range(50):  # the delete runs in a thread
        if client.get(mask_url).status_code == 404:
            break
        time.sleep(0.05)
    assert client.get(mask_url).status_code == 404
    assert not (tmp_path / evs[0]["request_id"]).exists()


async def test_retention_abandoned_stream_leaves_no_artifact(tmp_path):
    settings = load_settings({**FAST, "store": {"url": str(tmp_path)}})
    store = ArtifactStore(str(tmp_path))
    service = GenerateService(settings, LocalClients(settings, store), store)
    job = await prepare_job(service, GenerateRequest(), image_bytes=photo_bytes("coffee"))
    stream = await start_run(service, job)
    first = await stream.events.__anext__()
    assert (tmp_path / first["request_id"] / "mask.png").is_file()
    await stream.close()  # the client left mid-stream
    for _ in range(50):
        if not (tmp_path / first["request_id"] / "mask.png").is_file():
            break
        await asyncio.sleep(0.05)
    assert not (tmp_path / first["request_id"] / "mask.png").is_file()


def test_retention_artifacts_are_cached_privately(tmp_path):
    client = make_client(tmp_path)
    ArtifactStore(str(tmp_path)).put(aid(7), "mask.png", b"\x89PNG")
    resp = client.get(f"/v1/artifacts/{aid(7)}/mask.png")
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == "private, max-age=86400"
