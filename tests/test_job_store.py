"""The jobs store (serve_app/job_store.py): the same checks against SQLite and a real redis-server.

Redis runs as a child process on a loopback port (tests/redis_server.py); these cases are
skipped, with the reason, only where the `redis-server` binary is missing.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest

from redis_server import redis_server  # noqa: F401 - a fixture
from serve_app.job_store import (CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, SqliteJobStore,
                                 StoreConfigError, open_job_store, pack_frame, unpack_frame)
from serve_app.protocol import VoxelFrame


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """A factory of stores over one backing (each call: another connection, as another process)."""
    if request.param == "sqlite":
        path = str(tmp_path / "jobs.sqlite3")
        return lambda: SqliteJobStore(path)
    url = request.getfixturevalue("redis_server").url
    prefix = f"test:{uuid.uuid4().hex}:"  # tests share the server, never keys
    return lambda: open_job_store(url, "/unused", prefix=prefix, ttl_s=30)


def jid(i: int) -> str:
    return f"{i:032x}"


def record(i: int, created: float, state: str = QUEUED, owner: str = "a") -> dict:
    return {"job_id": jid(i), "state": state, "owner": owner, "created": created, "progress": 0.0,
            "last_seq": -1, "encoding": "compact", "seed": 7, "artifacts": {}, "inputs": {"prompt": None},
            "fields": {"seed": 7}}


def event(seq: int, kind: str = "loading", stage: str = "segmenter", **extra) -> dict:
    return {"type": kind, "stage": stage, "seq": seq, "progress": seq / 100, "step": 0, "total_steps": 0, **extra}


def frame(seq: int, n: int, colors: bool = True) -> dict:
    rng = np.random.default_rng(seq)
    vox = VoxelFrame(64, rng.integers(0, 64, (n, 3)), rng.integers(0, 256, (n, 3)) if colors else None)
    return {**event(seq, "appearance", "appearance", step=seq, total_steps=99), "_frame": vox}


def run(coro):
    return asyncio.run(coro)


def test_frame_packing_roundtrip():
    for colors in (True, False):
        f = frame(3, 5000, colors)["_frame"]
        back = unpack_frame(pack_frame(f))
        assert back.grid_size == 64 and back.count == 5000
        np.testing.assert_array_equal(back.coords, f.coords)
        assert (back.colors is None) == (not colors)
        if colors:
            np.testing.assert_array_equal(back.colors, f.colors)
    empty = unpack_frame(pack_frame(VoxelFrame(8, np.zeros((0, 3)))))
    assert empty.count == 0


def test_state_only_moves_as_expected(make_store):
    async def scenario():
        s = make_store()
        await s.create(record(1, 100.0))
        assert await s.get(jid(2)) is None
        assert await s.update(jid(1), {"state": RUNNING, "started": 101.0}, expect=(QUEUED,))
        # A second manager that thinks it is still queued cannot move it.
        assert not await s.update(jid(1), {"state": CANCELLED}, expect=(QUEUED,))
        assert await s.update(jid(1), {"state": SUCCEEDED, "finished": 102.0, "artifacts": {"a.glb": {"size_bytes": 3}},
                                       "manifest": {"seed": 7}}, expect=(RUNNING,))
        assert not await s.update(jid(1), {"state": RUNNING}, expect=(QUEUED,))
        assert not await s.update(jid(9), {"state": RUNNING})  # unknown job
        rec = await s.get(jid(1))
        assert rec["state"] == SUCCEEDED and rec["started"] == 101.0 and rec["finished"] == 102.0
        assert rec["artifacts"] == {"a.glb": {"size_bytes": 3}} and rec["manifest"] == {"seed": 7}
        assert rec["seed"] == 7 and rec["fields"] == {"seed": 7} and rec["error"] is None
        await s.close()
    run(scenario())


def test_log_keeps_events_and_only_the_latest_frame_shared_across_connections(make_store):
    async def scenario():
        writer, reader = make_store(), make_store()
        await writer.create(record(1, 100.0, RUNNING))
        await writer.append_event(jid(1), event(0))
        await writer.append_event(jid(1), event(1, message="object found"))
        for seq in range(2, 7):
            await writer.set_frame(jid(1), frame(seq, 1000 + seq))
        await writer.append_event(jid(1), event(7, "mesh_preview", "mesh_baker"))
        evs, latest = await reader.events(jid(1))
        assert [e["seq"] for e in evs] == [0, 1, 7] and evs[1]["message"] == "object found"
        assert latest["seq"] == 6 and latest["type"] == "appearance" and latest["_frame"].count == 1006
        np.testing.assert_array_equal(latest["_frame"].colors, frame(6, 1006)["_frame"].colors)
        evs, _ = await reader.events(jid(1), after=1)
        assert [e["seq"] for e in evs] == [7]
        rec = await reader.get(jid(1))
        assert (rec["last_seq"], rec["stage"], rec["progress"]) == (7, "mesh_baker", 0.07)
        assert await reader.events(jid(2)) == ([], None)
        await writer.close()
        await reader.close()
    run(scenario())


def test_unfinished_jobs_and_heartbeats(make_store):
    async def scenario():
        s = make_store()
        await s.create(record(1, 100.0, owner="a"))
        await s.create(record(2, 99.0, RUNNING, owner="b"))
        await s.create(record(3, 98.0, owner="a"))
        await s.update(jid(3), {"state": FAILED, "finished": 105.0})
        assert [r["job_id"] for r in await s.unfinished()] == [jid(2), jid(1)]  # oldest first
        await s.heartbeat("a", 200.0)
        await s.heartbeat("b", 150.0)
        await s.heartbeat("a", 210.0)
        assert await s.owners() == {"a": 210.0, "b": 150.0}
        await s.close()
    run(scenario())


def test_expire_by_ttl_then_by_count_keeps_unfinished_jobs(make_store):
    async def scenario():
        s = make_store()
        now = time.time()
        for i in range(5):
            await s.create(record(i, now - 100 + i))
            await s.append_event(jid(i), event(0))
            await s.set_frame(jid(i), frame(1, 10))
        for i, age in ((0, 50), (1, 5), (2, 4)):  # 3 and 4 stay unfinished
            await s.update(jid(i), {"state": SUCCEEDED, "finished": now - age})
        assert await s.count() == 5
        assert await s.expire(now, ttl_s=10, max_jobs=100) == [jid(0)]
        assert await s.get(jid(0)) is None and await s.events(jid(0)) == ([], None)
        # max_jobs 4, room for one more: the oldest finished goes first, never an unfinished one.
        assert await s.expire(now, ttl_s=10, max_jobs=4, room=1) == [jid(1)]
        assert await s.expire(now, ttl_s=10, max_jobs=1, room=1) == [jid(2)]
        assert await s.count() == 2 and {r["job_id"] for r in await s.unfinished()} == {jid(3), jid(4)}
        await s.close()
    run(scenario())


def test_redis_keys_of_a_finished_job_carry_a_ttl(redis_server):
    import redis

    prefix = f"test:{uuid.uuid4().hex}:"

    async def scenario():
        s = open_job_store(redis_server.url, "/unused", prefix=prefix, ttl_s=30)
        await s.create(record(1, 1.0))
        await s.append_event(jid(1), event(0))
        await s.set_frame(jid(1), frame(1, 10))
        await s.update(jid(1), {"state": CANCELLED, "finished": time.time()})
        await s.close()
    run(scenario())
    r = redis.Redis.from_url(redis_server.url)
    for kind in ("job", "ev", "frame"):
        assert 60 < r.ttl(f"{prefix}{kind}:{jid(1)}") <= 90, kind
    r.close()


def test_store_urls(tmp_path):
    assert isinstance(open_job_store(None, str(tmp_path)), SqliteJobStore)
    assert (tmp_path / "jobs.sqlite3").exists()
    assert open_job_store(f"sqlite:///{tmp_path}/other.db", "s3://bucket/x").path == f"{tmp_path}/other.db"
    with pytest.raises(StoreConfigError, match="redis://"):
        open_job_store(None, "s3://bucket/artifacts")
    with pytest.raises(StoreConfigError, match="sqlite:///"):
        open_job_store("postgres://db", str(tmp_path))


def test_build_app_needs_a_jobs_store_beside_a_remote_artifact_store():
    from serve_app.app import build_app
    from sam3d_common.settings import ConfigError

    with pytest.raises(ConfigError, match="args.jobs.store_url"):
        build_app({"store": {"url": "s3://bucket/artifacts"}})
    build_app({"store": {"url": "s3://bucket/artifacts"}, "jobs": {"store_url": "redis://127.0.0.1:6379/1"}})
