"""Jobs that outlive a connection: a queue of pipeline runs, their state and a resumable event log.

One `JobManager` holds every job of the service. Under Ray Serve it lives in the single
replica of the JobManager deployment (serve_app/app.py), so every ingress replica sees the
same jobs; without Ray (serve_app/local.py, tests) the routes hold one in-process.

Each job runs `run_pipeline` as an asyncio task over the same StageClients as
/v1/generate, at most `max_running` at once; the others wait in FIFO order. A job's state
only moves forward: queued → running → succeeded | failed | cancelled (queued → cancelled
or failed too). Its log keeps every non-frame event and only the latest voxel frame, so
memory per job is bounded whatever the number of steps; a subscriber that resumes after
event N gets the missed non-frame events, one key frame of the current voxels, then the
live events. Subscribers never own the job: closing a subscription leaves it running.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import platform
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import metadata
from typing import AsyncIterator

import numpy as np

from sam3d_common.errors import Busy, StageError, StageTimeout
from serve_app.pipeline import Job, StageClients, run_pipeline
from serve_app.protocol import FRAME_EVENTS, PROTOCOL_VERSION
from serve_app.service import error_event
from sam3d_common.settings import AppSettings
from sam3d_common.store import ID_PATTERN, ArtifactStore

log = logging.getLogger("sam3d.jobs")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
_NEXT = {QUEUED: (RUNNING, FAILED, CANCELLED), RUNNING: TERMINAL}


class JobNotFound(StageError):
    status = 404
    code = "not_found"


class JobCancelled(StageError):
    status = 409
    code = "cancelled"


class QueueFull(Busy):
    """More jobs wait than `jobs.max_queued`, or `jobs.max_jobs` unfinished jobs are kept."""

    code = "queue_full"


@dataclass
class _Record:
    job: Job
    fields: dict
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stage: str | None = None
    progress: float = 0.0
    error: dict | None = None
    artifacts: dict = field(default_factory=dict)
    manifest: dict | None = None
    inputs: dict = field(default_factory=dict)  # digests, taken at submit
    events: list[dict] = field(default_factory=list)  # non-frame events, in seq order
    frame: dict | None = None  # the latest geometry/appearance event, with its `_frame`
    last_seq: int = -1
    subscribers: list["_Subscriber"] = field(default_factory=list)
    task: asyncio.Task | None = None


class _Subscriber:
    """Events for one reader: unsent non-final frames of a stage are replaced by newer ones,
    so a slow reader costs at most one pending frame per stage."""

    def __init__(self):
        self.queue: deque = deque()
        self.ready = asyncio.Event()

    def put(self, ev: dict | None) -> None:
        if ev is not None and ev["type"] in FRAME_EVENTS and ev["step"] != ev["total_steps"]:
            self.queue = deque(q for q in self.queue
                               if q is None or q["stage"] != ev["stage"] or q["type"] not in FRAME_EVENTS)
        self.queue.append(ev)
        self.ready.set()

    async def get(self) -> dict | None:
        while not self.queue:
            self.ready.clear()
            await self.ready.wait()
        return self.queue.popleft()


def _digest(a: np.ndarray | None) -> dict | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    return {"sha256": hashlib.sha256(a.tobytes()).hexdigest(), "shape": list(a.shape), "dtype": str(a.dtype)}


def _versions(settings: AppSettings) -> dict:
    out = {"protocol": PROTOCOL_VERSION, "python": platform.python_version(),
           "backends": {"prompt_enhancer": settings.prompt_enhancer.backend,
                        "image_generator": settings.image_generator.backend,
                        "segmenter": settings.segmenter.backend,
                        "reconstructor": settings.reconstructor.backend}}
    for pkg in ("sam3d-serve", "numpy", "torch", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class JobManager:
    def __init__(self, clients: StageClients, store: ArtifactStore, settings: AppSettings):
        self.clients = clients
        self.store = store
        self.settings = settings
        self.limits = settings.jobs
        self._jobs: dict[str, _Record] = {}
        self._waiting: deque[str] = deque()
        self._running = 0

    # --- submit, status, cancel -----------------------------------------------------------
    async def submit(self, job: Job, fields: dict) -> dict:
        """Queue a prepared job (serve_app.service.GenerateService.prepare). Raises QueueFull."""
        self._expire(room=1)
        if len(self._waiting) >= self.limits.max_queued:
            raise QueueFull(f"{len(self._waiting)} jobs are already queued (the limit); retry in a while")
        if len(self._jobs) >= self.limits.max_jobs:
            raise QueueFull(f"{self.limits.max_jobs} unfinished jobs are kept (the limit); retry in a while")
        if job.seed is None:
            # Pin the seed so the manifest says how to reproduce the job.
            job.seed = int(np.random.default_rng().integers(0, 2**32 - 1))
        rec = _Record(job=job, fields=fields, inputs={
            "image": _digest(job.image), "mask": _digest(job.seg_prompt.mask), "prompt": job.prompt})
        self._jobs[job.request_id] = rec
        self._waiting.append(job.request_id)
        self._pump()
        return self._status(job.request_id)

    async def status(self, job_id: str) -> dict:
        return self._status(job_id)

    def _status(self, job_id: str) -> dict:
        rec = self._get(job_id)
        out = {"job_id": job_id, "state": rec.state, "stage": rec.stage, "progress": rec.progress,
               "queue_position": (self._waiting.index(job_id) + 1) if rec.state == QUEUED else None,
               "created_at": rec.created, "started_at": rec.started, "finished_at": rec.finished,
               "last_event_id": rec.last_seq, "encoding": rec.job.encoding,
               "error": rec.error, "artifacts": rec.artifacts}
        out.update(urls(job_id))
        if rec.manifest is not None:
            out["manifest"] = rec.manifest
        return out

    async def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job; returns once its task has stopped (slot freed)."""
        rec = self._get(job_id)
        if rec.state == QUEUED:
            self._waiting.remove(job_id)
            self._finish(rec, CANCELLED, self._fail(rec, JobCancelled("cancelled by the client")))
        elif rec.state == RUNNING and rec.task is not None:
            rec.task.cancel()
            await asyncio.gather(rec.task, return_exceptions=True)
        return self._status(job_id)

    # --- events ------------------------------------------------------------------------------
    async def events(self, job_id: str, after: int = -1) -> AsyncIterator[dict]:
        """Non-frame events with seq > `after`, then one key frame (`key_frame: true`) of the
        current voxels, then live events until the job ends. Event dicts are copies."""
        rec = self._get(job_id)
        replay = [dict(e) for e in rec.events if e["seq"] > after]
        key = None
        if rec.frame is not None:
            # `_cursor`: the SSE id to send with it, so Last-Event-ID never goes backwards.
            key = dict(rec.frame, key_frame=True, _cursor=max(after, rec.frame["seq"]))
        sub = None
        if rec.state not in TERMINAL:
            sub = _Subscriber()
            rec.subscribers.append(sub)
        try:
            # The key frame goes after every replayed event older than it, before the newer
            # ones: the picture is complete before the mesh/complete events that follow it.
            for ev in replay:
                if key is not None and ev["seq"] > key["seq"]:
                    yield key
                    key = None
                yield ev
            if key is not None:
                yield key
            while sub is not None:
                ev = await sub.get()
                if ev is None:
                    return
                yield dict(ev)
        finally:
            if sub is not None and sub in rec.subscribers:
                rec.subscribers.remove(sub)

    # --- internals ---------------------------------------------------------------------------
    def _get(self, job_id: str) -> _Record:
        self._expire()
        rec = self._jobs.get(job_id) if ID_PATTERN.fullmatch(job_id or "") else None
        if rec is None:
            raise JobNotFound(f"no job {job_id!r} (unknown, or expired after its TTL)")
        return rec

    def _move(self, rec: _Record, state: str) -> None:
        if state not in _NEXT.get(rec.state, ()):
            raise RuntimeError(f"job state cannot go from {rec.state} to {state}")
        rec.state = state

    def _pump(self) -> None:
        while self._waiting and self._running < self.limits.max_running:
            rec = self._jobs[self._waiting.popleft()]
            self._move(rec, RUNNING)
            rec.started = time.time()
            self._running += 1
            rec.task = asyncio.get_running_loop().create_task(self._run(rec))

    def _record(self, rec: _Record, ev: dict) -> None:
        rec.last_seq = ev["seq"]
        rec.stage = ev["stage"]
        rec.progress = ev["progress"]
        if ev["type"] in FRAME_EVENTS:
            rec.frame = ev
        else:
            rec.events.append(ev)
        for sub in rec.subscribers:
            sub.put(ev)

    async def _run(self, rec: _Record) -> None:
        job = rec.job
        deadline = time.monotonic() + self.settings.timeouts.request_s
        agen = run_pipeline(job, self.clients)
        state, error, complete = FAILED, None, None
        try:
            async for ev in agen:
                if time.monotonic() > deadline:
                    raise StageTimeout("the job exceeded its time limit")
                self._record(rec, ev)
                if ev["type"] == "complete":
                    complete = ev
            state = SUCCEEDED
        except asyncio.CancelledError:
            state, error = CANCELLED, self._fail(rec, JobCancelled("cancelled by the client"))
        except Exception as exc:  # noqa: BLE001 - becomes the job's error and an error event
            error = self._fail(rec, exc)
        finally:
            await agen.aclose()
            self._running -= 1
            if complete is not None:
                rec.artifacts = complete.get("artifacts", {})
            try:
                self._write_manifest(rec, complete, state)
            except Exception:  # noqa: BLE001 - a manifest is no reason to lose the job's state
                log.exception("job %s: could not write its manifest", job.request_id)
            self._finish(rec, state, error)
            self._pump()

    def _fail(self, rec: _Record, exc: BaseException) -> dict:
        """Log an `error` event for the job; returns its code and message."""
        ev = error_event(exc, rec.job.request_id, rec.last_seq + 1)
        self._record(rec, ev)
        return {"code": ev["code"], "message": ev["message"]}

    def _finish(self, rec: _Record, state: str, error: dict | None) -> None:
        self._move(rec, state)
        # A kept job must not keep its photo (up to 2048² px): only the digests stay.
        rec.job.image = rec.job.seg_prompt.mask = None
        rec.finished = time.time()
        rec.error = error
        for sub in rec.subscribers:
            sub.put(None)
        rec.subscribers.clear()
        self._expire()

    def _write_manifest(self, rec: _Record, complete: dict | None, state: str) -> None:
        job = rec.job
        opts = job.options
        manifest = {
            "job_id": job.request_id, "state": state,
            "inputs": rec.inputs,
            "settings": {**rec.fields, "geometry_steps": opts.geometry_steps,
                         "appearance_steps": opts.appearance_steps, "fast": opts.fast,
                         "face_budget": job.bake.face_budget,
                         "texture": job.bake.texture, "texture_size": job.bake.texture_size, "encoding": job.encoding},
            "seed": job.seed, "versions": _versions(self.settings),
            "timings": {"queued_s": round((rec.started or time.time()) - rec.created, 4),
                        "run_s": round(time.time() - (rec.started or time.time()), 4),
                        "stages": (complete or {}).get("timings", {})},
        }
        data = json.dumps(manifest, indent=1, default=str).encode()
        size = self.store.put(job.request_id, "manifest.json", data)
        rec.manifest = manifest
        rec.artifacts = {**rec.artifacts, "manifest.json": {
            "url": f"/v1/artifacts/{job.request_id}/manifest.json", "size_bytes": size}}

    def _expire(self, room: int = 0) -> None:
        """Forget finished jobs past their TTL, then the oldest finished ones until `room`
        more jobs fit under max_jobs."""
        now = time.time()
        done = sorted((r.finished, k) for k, r in self._jobs.items() if r.state in TERMINAL)
        for finished, key in done:
            if now - finished > self.limits.ttl_s or len(self._jobs) + room > self.limits.max_jobs:
                del self._jobs[key]


def urls(job_id: str) -> dict:
    base = f"/v1/jobs/{job_id}"
    return {"status_url": base, "events_url": f"{base}/events", "cancel_url": base}
