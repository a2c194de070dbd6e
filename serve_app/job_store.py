"""Where jobs are kept: one interface (`JobStore`), two implementations.

- `SqliteJobStore`: a SQLite file (WAL mode), by default `jobs.sqlite3` in the artifact
  folder of the embedded config. Every process that opens the file sees the same jobs.
- `RedisJobStore` (serve_app/job_store_redis.py): production, configured by a `redis://` URL.

Per job a store keeps one record (the fields of `RECORD_FIELDS`), its non-frame events in
seq order, and only the latest voxel frame event (`frame`: the event without its voxels,
plus the voxels packed by `pack_frame`), so the log of a job is bounded whatever its number
of steps. Managers that run jobs leave a heartbeat under their owner id, so that another
manager can tell the jobs of a dead one (serve_app/jobs.py reaps them).

State changes are conditional (`update(..., expect=...)`): a state only moves forward even
when two managers race. Finished jobs expire after a TTL (`expire`), which returns the ids
removed so their artifacts can go too.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import struct
import threading
import zlib
from abc import ABC, abstractmethod
from typing import Iterable

import numpy as np

from serve_app.protocol import VoxelFrame

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
UNFINISHED = (QUEUED, RUNNING)

# One job's record. Values are JSON-able; `state` and `owner` are plain strings.
RECORD_FIELDS = ("job_id", "state", "owner", "created", "started", "finished", "stage", "progress",
                 "last_seq", "encoding", "seed", "error", "artifacts", "manifest", "inputs", "fields",
                 "cancel_requested")


class StoreConfigError(ValueError):
    """A jobs store URL that names no supported store."""


# --- voxels of the latest frame ----------------------------------------------------------------
_HEAD = struct.Struct("<HIB")  # grid size, voxel count, has colours


def pack_frame(frame: VoxelFrame) -> bytes:
    """A VoxelFrame as zlib-compressed bytes (no pickle: stores may be shared)."""
    colors = frame.colors
    raw = _HEAD.pack(frame.grid_size, frame.count, colors is not None) + frame.coords.tobytes()
    if colors is not None:
        raw += colors.tobytes()
    return zlib.compress(raw, 1)


def unpack_frame(data: bytes) -> VoxelFrame:
    raw = zlib.decompress(data)
    grid, count, has_colors = _HEAD.unpack_from(raw)
    at = _HEAD.size
    coords = np.frombuffer(raw, np.uint16, count * 3, at).reshape(-1, 3)
    colors = np.frombuffer(raw, np.uint8, count * 3, at + count * 6).reshape(-1, 3) if has_colors else None
    return VoxelFrame(grid, coords, colors)


def frame_parts(ev: dict) -> tuple[str, bytes]:
    """A frame event → (its JSON without the voxels, the packed voxels)."""
    meta = {k: v for k, v in ev.items() if k != "_frame"}
    return json.dumps(meta), pack_frame(ev["_frame"])


def frame_event(meta: str | bytes, data: bytes) -> dict:
    ev = json.loads(meta)
    ev["_frame"] = unpack_frame(data)
    return ev


# --- the interface -----------------------------------------------------------------------------
class JobStore(ABC):
    """Async methods; a record is a dict of RECORD_FIELDS. Expired jobs read as unknown."""

    @abstractmethod
    async def create(self, record: dict) -> None: ...

    @abstractmethod
    async def get(self, job_id: str) -> dict | None:
        """The record, or None if unknown or removed."""

    @abstractmethod
    async def update(self, job_id: str, fields: dict, expect: Iterable[str] | None = None) -> bool:
        """Set fields; with `expect`, only if the state is one of them. True if it was set."""

    @abstractmethod
    async def append_event(self, job_id: str, ev: dict) -> None:
        """Log a non-frame event and set the record's last_seq, stage and progress from it."""

    @abstractmethod
    async def set_frame(self, job_id: str, ev: dict) -> None:
        """Replace the job's latest frame event (with `_frame`); sets last_seq, stage, progress."""

    @abstractmethod
    async def events(self, job_id: str, after: int = -1) -> tuple[list[dict], dict | None]:
        """(non-frame events with seq > after, in order; the latest frame event or None)."""

    @abstractmethod
    async def unfinished(self) -> list[dict]:
        """Records of every queued or running job."""

    @abstractmethod
    async def heartbeat(self, owner: str, now: float) -> None: ...

    @abstractmethod
    async def owners(self) -> dict[str, float]:
        """owner id → time of its last heartbeat."""

    @abstractmethod
    async def expire(self, now: float, ttl_s: float, max_jobs: int, room: int = 0) -> list[str]:
        """Remove finished jobs older than ttl_s, then the oldest finished ones until `room`
        more fit under max_jobs. Returns the removed ids."""

    @abstractmethod
    async def count(self) -> int: ...

    async def close(self) -> None:
        return None


def open_job_store(url: str | None, artifact_url: str, *, prefix: str = "sam3d:jobs:",
                   ttl_s: float | None = None, password_env: str | None = None) -> JobStore:
    """`url` None: SQLite `jobs.sqlite3` in the artifact folder (which must then be local);
    `sqlite:///relative.db` or `sqlite:////absolute.db`; `redis://host:port/db` or `rediss://`."""
    if url is None:
        if "://" in artifact_url and not artifact_url.startswith("file://"):
            raise StoreConfigError("jobs.store_url must be set (a redis:// URL) when the artifact store "
                                   f"is not a local folder ({artifact_url})")
        folder = artifact_url.removeprefix("file://")
        return SqliteJobStore(os.path.join(folder, "jobs.sqlite3"))
    if url.startswith("sqlite:///"):
        # As SQLAlchemy spells it: sqlite:///relative/file.db, sqlite:////absolute/file.db
        return SqliteJobStore(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from serve_app.job_store_redis import RedisJobStore

        password = os.environ.get(password_env) if password_env else None
        if password_env and not password:
            raise StoreConfigError(f"jobs.store_password_env names {password_env}, which is not set")
        return RedisJobStore(url, prefix=prefix, key_ttl_s=ttl_s, password=password)
    raise StoreConfigError(f"jobs.store_url {url!r}: use sqlite:///path/file.db or redis://host:port/db")


# --- SQLite ------------------------------------------------------------------------------------
_JSON = {"seed", "error", "artifacts", "manifest", "inputs", "fields"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, state TEXT NOT NULL, owner TEXT,
    created REAL, started REAL, finished REAL, stage TEXT, progress REAL, last_seq INTEGER,
    encoding TEXT, seed TEXT, error TEXT, artifacts TEXT, manifest TEXT, inputs TEXT, fields TEXT,
    cancel_requested INTEGER);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, finished);
CREATE TABLE IF NOT EXISTS events (job_id TEXT NOT NULL, seq INTEGER NOT NULL, event TEXT NOT NULL,
    PRIMARY KEY (job_id, seq));
CREATE TABLE IF NOT EXISTS frames (job_id TEXT PRIMARY KEY, meta TEXT NOT NULL, voxels BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, seen REAL NOT NULL);
"""


class SqliteJobStore(JobStore):
    """One SQLite file; calls run in a worker thread, one at a time per process."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    async def _run(self, fn, *args):
        def locked():
            with self._lock:
                return fn(*args)
        return await asyncio.to_thread(locked)

    def _tx(self, body):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = body()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return out

    @staticmethod
    def _row(row: sqlite3.Row | tuple) -> dict:
        rec = dict(zip(RECORD_FIELDS, row))
        for k in _JSON:
            rec[k] = json.loads(rec[k]) if rec[k] is not None else None
        return rec

    @staticmethod
    def _cols(fields: dict) -> dict:
        return {k: (json.dumps(v) if k in _JSON else v) for k, v in fields.items()}

    async def create(self, record: dict) -> None:
        cols = self._cols({k: record.get(k) for k in RECORD_FIELDS})
        sql = f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        await self._run(lambda: self._db.execute(sql, list(cols.values())))

    def _get(self, job_id: str) -> dict | None:
        row = self._db.execute(f"SELECT {', '.join(RECORD_FIELDS)} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return self._row(row) if row else None

    async def get(self, job_id: str) -> dict | None:
        return await self._run(self._get, job_id)

    async def update(self, job_id: str, fields: dict, expect: Iterable[str] | None = None) -> bool:
        cols = self._cols(fields)
        sql = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in cols)} WHERE job_id = ?"
        args = [*cols.values(), job_id]
        if expect is not None:
            expect = list(expect)
            sql += f" AND state IN ({', '.join('?' * len(expect))})"
            args += expect
        return await self._run(lambda: self._db.execute(sql, args).rowcount == 1)

    async def append_event(self, job_id: str, ev: dict) -> None:
        def body():
            self._db.execute("INSERT OR REPLACE INTO events VALUES (?, ?, ?)", (job_id, ev["seq"], json.dumps(ev)))
            self._db.execute("UPDATE jobs SET last_seq = ?, stage = ?, progress = ? WHERE job_id = ?",
                             (ev["seq"], ev["stage"], ev["progress"], job_id))
        await self._run(self._tx, body)

    async def set_frame(self, job_id: str, ev: dict) -> None:
        meta, voxels = await asyncio.to_thread(frame_parts, ev)

        def body():
            self._db.execute("INSERT OR REPLACE INTO frames VALUES (?, ?, ?)", (job_id, meta, voxels))
            self._db.execute("UPDATE jobs SET last_seq = MAX(last_seq, ?), stage = ?, progress = ? WHERE job_id = ?",
                             (ev["seq"], ev["stage"], ev["progress"], job_id))
        await self._run(self._tx, body)

    async def events(self, job_id: str, after: int = -1) -> tuple[list[dict], dict | None]:
        def read():
            rows = self._db.execute("SELECT event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                                    (job_id, after)).fetchall()
            frame = self._db.execute("SELECT meta, voxels FROM frames WHERE job_id = ?", (job_id,)).fetchone()
            return [json.loads(r[0]) for r in rows], frame
        evs, frame = await self._run(read)
        return evs, (frame_event(*frame) if frame else None)

    async def unfinished(self) -> list[dict]:
        sql = f"SELECT {', '.join(RECORD_FIELDS)} FROM jobs WHERE state IN (?, ?) ORDER BY created"
        return await self._run(lambda: [self._row(r) for r in self._db.execute(sql, UNFINISHED).fetchall()])

    async def heartbeat(self, owner: str, now: float) -> None:
        await self._run(lambda: self._db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (owner, now)))

    async def owners(self) -> dict[str, float]:
        return await self._run(lambda: dict(self._db.execute("SELECT owner, seen FROM owners").fetchall()))

    async def expire(self, now: float, ttl_s: float, max_jobs: int, room: int = 0) -> list[str]:
        def body():
            done = self._db.execute("SELECT job_id, finished FROM jobs WHERE state IN (?, ?, ?) "
                                    "ORDER BY finished", TERMINAL).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            gone = []
            for job_id, finished in done:
                if now - (finished or 0) > ttl_s or total + room > max_jobs:
                    gone.append(job_id)
                    total -= 1
            for job_id in gone:
                for table in ("jobs", "events", "frames"):
                    self._db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            # Owners silent for a day left no job behind that a reaper has not seen.
            self._db.execute("DELETE FROM owners WHERE seen < ?", (now - 86400,))
            return gone
        return await self._run(self._tx, body)

    async def count(self) -> int:
        return await self._run(lambda: self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    async def close(self) -> None:
        await self._run(self._db.close)
