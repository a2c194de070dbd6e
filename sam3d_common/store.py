"""Artifact store: a local folder by default, any fsspec URL in production.

Artifacts live at <root>/<artifact_id>/<name>. Both parts are checked against strict
patterns before any path is built, so no request value reaches the filesystem unchecked.
Local writes go to a temporary name and are renamed into place (atomic on POSIX); object
stores make a single put visible atomically by themselves.

Retention: an artifact older than the TTL is neither served nor kept; `sweep` deletes expired
artifact folders and then the oldest ones until the total fits the size cap; `delete`
removes the artifacts of a request that failed or whose client left. `Retention.tick`
runs a sweep in a thread at most every `sweep_every_s`.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass

import fsspec

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}\.(glb|ply|png|json|bin)$")

CONTENT_TYPES = {
    "glb": "model/gltf-binary",
    "ply": "application/octet-stream",
    "png": "image/png",
    "json": "application/json",
    "bin": "application/octet-stream",
}


log = logging.getLogger("sam3d.store")


class ArtifactNotFound(KeyError):
    pass


class ArtifactPending(ArtifactNotFound):
    """The artifact's job has not completed: its artifacts appear all at once when it does."""


# A marker in an artifact folder: nothing in it is served until it goes (begin / commit).
# Artifact names never start with a dot, so no artifact can be named like it.
PENDING = ".pending"


class InvalidArtifactRef(ValueError):
    pass


def new_artifact_id() -> str:
    return uuid.uuid4().hex


def check_ref(artifact_id: str, name: str) -> None:
    if not ID_PATTERN.fullmatch(artifact_id or ""):
        raise InvalidArtifactRef("artifact id must be 32 lowercase hex characters")
    if not NAME_PATTERN.fullmatch(name or ""):
        raise InvalidArtifactRef("artifact name must be like model.glb, splat.ply or mask.png")


def content_type(name: str) -> str:
    return CONTENT_TYPES[name.rsplit(".", 1)[-1]]


def _mtime(info: dict) -> float:
    """Modification time in epoch seconds from an fsspec info dict (local, S3, GCS spellings)."""
    for key in ("mtime", "LastModified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return value.timestamp()
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return time.time()


@dataclass
class SweepResult:
    removed: int
    freed_bytes: int
    kept_bytes: int


class ArtifactStore:
    def __init__(self, url: str, ttl_s: float | None = None):
        self.url = url
        self.ttl_s = ttl_s
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, artifact_id: str, name: str) -> str:
        check_ref(artifact_id, name)
        return f"{self.root}/{artifact_id}/{name}"

    def put(self, artifact_id: str, name: str, data: bytes) -> int:
        path = self._path(artifact_id, name)
        folder = f"{self.root}/{artifact_id}"
        if self.local:
            self.fs.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        return len(data)

    def get(self, artifact_id: str, name: str, now: float | None = None) -> bytes:
        path = self._path(artifact_id, name)
        if self.fs.exists(f"{self.root}/{artifact_id}/{PENDING}"):
            raise ArtifactPending(f"{artifact_id}/{name}")
        try:
            if self.ttl_s is not None and (now or time.time()) - _mtime(self.fs.info(path)) > self.ttl_s:
                raise FileNotFoundError(path)  # expired: the next sweep deletes it
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise ArtifactNotFound(f"{artifact_id}/{name}") from None

    def delete(self, artifact_id: str) -> None:
        """Remove every artifact of one request (a failed one, or one whose client left)."""
        check_ref(artifact_id, "x.bin")
        try:
            self.fs.rm(f"{self.root}/{artifact_id}", recursive=True)
        except FileNotFoundError:
            pass

    def sweep(self, ttl_s: float | None, max_total_bytes: int | None, now: float | None = None) -> SweepResult:
        """Delete folders older than `ttl_s`, then the oldest until the rest fit `max_total_bytes`."""
        now = now or time.time()
        folders = []  # (newest mtime, bytes, artifact id)
        for entry in self.fs.ls(self.root, detail=True):
            aid = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if not ID_PATTERN.fullmatch(aid):
                continue
            files = self.fs.find(entry["name"], detail=True).values()
            folders.append((max((_mtime(f) for f in files), default=_mtime(entry)),
                            sum(int(f.get("size") or 0) for f in files), aid))
        folders.sort()
        total = sum(size for _, size, _ in folders)
        removed = freed = 0
        for mtime, size, aid in folders:
            expired = ttl_s is not None and now - mtime > ttl_s
            if not expired and (max_total_bytes is None or total <= max_total_bytes):
                continue
            self.delete(aid)
            removed, freed, total = removed + 1, freed + size, total - size
        return SweepResult(removed, freed, total)

    def begin(self, artifact_id: str) -> None:
        """Hide the artifacts of `artifact_id` until `commit` (a job's, while it runs)."""
        check_ref(artifact_id, "x.bin")
        folder = f"{self.root}/{artifact_id}"
        if self.local:
            self.fs.makedirs(folder, exist_ok=True)
        self.fs.pipe_file(f"{folder}/{PENDING}", b"")

    def commit(self, artifact_id: str) -> None:
        """Serve the artifacts of `artifact_id` from now on (all of them at once)."""
        check_ref(artifact_id, "x.bin")
        try:
            self.fs.rm(f"{self.root}/{artifact_id}/{PENDING}")
        except FileNotFoundError:
            pass


class Retention:
    """Sweeps the store now and then from a caller's event loop, one sweep at a time."""

    def __init__(self, store: ArtifactStore, ttl_s: float | None, max_total_bytes: int | None,
                 every_s: float, clock=time.monotonic):
        self.store, self.ttl_s, self.max_total_bytes, self.every_s = store, ttl_s, max_total_bytes, every_s
        self.clock = clock
        self._last = -float("inf")
        self._task: asyncio.Task | None = None

    def tick(self) -> asyncio.Task | None:
        """Start a sweep in a thread if none ran for `every_s`; returns its task (or None)."""
        if self.ttl_s is None and self.max_total_bytes is None:
            return None
        if (self._task is not None and not self._task.done()) or self.clock() - self._last < self.every_s:
            return None
        self._last = self.clock()
        self._task = asyncio.get_running_loop().create_task(self._sweep())
        return self._task

    async def _sweep(self) -> SweepResult | None:
        try:
            result = await asyncio.to_thread(self.store.sweep, self.ttl_s, self.max_total_bytes)
        except Exception:  # noqa: BLE001 - a failed sweep must not fail requests; the next one retries
            log.exception("artifact sweep failed")
            return None
        if result.removed:
            log.info("artifact sweep removed %d folders (%d bytes); %d bytes kept",
                     result.removed, result.freed_bytes, result.kept_bytes)
        return result
