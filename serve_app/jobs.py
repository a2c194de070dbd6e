"""Jobs that outlive a connection: a queue of pipeline runs, their state and a resumable event log.

A `JobManager` runs jobs; their state and event log live in a `JobStore`
(serve_app/job_store.py: SQLite beside the artifacts, or Redis), so they outlive the
manager. Under Ray Serve the manager is the single replica of the JobManager deployment
(serve_app/app.py), reached by every ingress replica; without Ray (serve_app/local.py,
tests) the routes hold one in-process.

Each job runs `run_pipeline` as an asyncio task over the same StageClients as
/v1/generate, at most `max_running` at once; the others wait in FIFO order. A job's state
only moves forward: queued → running → succeeded | failed | cancelled (queued → cancelled
or failed too); the store refuses any other change. The log keeps every non-frame event and
only the latest voxel frame; a subscriber that resumes after event N gets the missed
non-frame events, one key frame of the current voxels, then the live events. Subscribers
never own the job: closing a subscription leaves it running.

A manager leaves a heartbeat in the store every `owner_lease_s / 3`. Jobs of a manager
silent for longer than `owner_lease_s` (a replica killed or restarted mid-job) are failed
with the error code `interrupted` (their photo was only in that manager's memory); their
log stays readable. A job's artifacts are hidden until it succeeds (ArtifactStore.begin /
commit), deleted if it does not, and deleted when the job expires.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from typing import AsyncIterator

import numpy as np

from sam3d_common.errors import StageError, StageTimeout
from serve_app.job_errors import JobCancelled, JobInterrupted, JobNotFound, QueueFull
from serve_app.job_live import Live as _Live, Subscriber as _Subscriber
from serve_app.job_manifest import build_manifest, inputs_of
from serve_app.job_store import (CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, UNFINISHED,
                                 JobStore, open_job_store)
from serve_app.pipeline import Job, StageClients, run_pipeline
from serve_app.protocol import FRAME_EVENTS
from serve_app.run import error_event
from sam3d_common.settings import AppSettings
from sam3d_common.store import ID_PATTERN, ArtifactStore

log = logging.getLogger("sam3d.jobs")

# Importable from here, as before the store existed.
__all__ = ["JobManager", "JobNotFound", "JobCancelled", "JobInterrupted", "QueueFull", "urls"]


class JobManager:
    def __init__(self, clients: StageClients, store: ArtifactStore, settings: AppSettings,
                 job_store: JobStore | None = None):
        self.clients = clients
        self.artifacts = store
        self.settings = settings
        self.limits = settings.jobs
        self.owner = uuid.uuid4().hex
        self.store = job_store  # opened on first use (no file appears until a job route is called)
        self._live: dict[str, _Live] = {}
        self._waiting: deque[str] = deque()
        self._running = 0
        self._maintenance: asyncio.Task | None = None

    # --- submit, status, cancel -----------------------------------------------------------
    async def submit(self, job: Job, fields: dict) -> dict:
        """Queue a prepared job (serve_app.service.GenerateService.prepare). Raises QueueFull."""
        await self._start()
        await self._expire(room=1)
        if len(self._waiting) >= self.limits.max_queued:
            raise QueueFull(f"{len(self._waiting)} jobs are already queued (the limit); retry in a while")
        if await self.store.count() >= self.limits.max_jobs:
            raise QueueFull(f"{self.limits.max_jobs} unfinished jobs are kept (the limit); retry in a while")
        if job.seed is None:
            # Pin the seed so the manifest says how to reproduce the job.
            job.seed = int(np.random.default_rng().integers(0, 2**32 - 1))
        job_id = job.request_id
        record = {"job_id": job_id, "state": QUEUED, "owner": self.owner, "created": time.time(),
                  "progress": 0.0, "last_seq": -1, "encoding": job.encoding, "seed": job.seed,
                  "artifacts": {}, "inputs": inputs_of(job), "fields": fields}
        # Whatever the pipeline writes under the job id stays hidden until the job succeeds.
        await asyncio.to_thread(self.artifacts.begin, job_id)
        await self.store.create(record)
        self._live[job_id] = _Live(job=job, record=record)
        self._waiting.append(job_id)
        self._pump()
        return await self.status(job_id)

    async def status(self, job_id: str) -> dict:
        await self._start()
        rec = await self._get(job_id)
        live = self._live.get(job_id)
        if live is not None:  # memory is ahead of the store by at most the write in flight
            rec["state"] = live.state
        out = {"job_id": job_id, "state": rec["state"], "stage": rec["stage"], "progress": rec["progress"] or 0.0,
               "queue_position": (self._waiting.index(job_id) + 1) if job_id in self._waiting else None,
               "created_at": rec["created"], "started_at": rec["started"], "finished_at": rec["finished"],
               "last_event_id": rec["last_seq"], "encoding": rec["encoding"],
               "error": rec["error"], "artifacts": rec["artifacts"] or {}}
        out.update(urls(job_id))
        if rec["manifest"] is not None:
            out["manifest"] = rec["manifest"]
        return out

    async def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job; returns once its task has stopped (slot freed)."""
        await self._start()
        rec = await self._get(job_id)
        live = self._live.get(job_id)
        if live is not None and live.state == QUEUED:
            self._waiting.remove(job_id)
            await self._fail(live, JobCancelled("cancelled by the client"))
            await self._finish(live, CANCELLED, JobCancelled("cancelled by the client"), None)
        elif live is not None and live.task is not None:
            if not live.finishing:
                live.cancel_reason = "cancelled by the client"
                if live.begun:
                    live.task.cancel()
            await asyncio.gather(live.task, return_exceptions=True)
        elif live is None and rec["state"] in UNFINISHED:
            seen = (await self.store.owners()).get(rec["owner"])
            if seen is None or time.time() - seen > self.limits.owner_lease_s:  # its manager died
                await self._end_elsewhere(rec, CANCELLED, JobCancelled("cancelled by the client"))
            else:  # run by another manager, which stops it within a maintenance round (_maintain)
                await self.store.update(job_id, {"cancel_requested": True}, expect=UNFINISHED)
                end = time.monotonic() + self.limits.owner_lease_s
                while time.monotonic() < end and (await self._get(job_id))["state"] in UNFINISHED:
                    await asyncio.sleep(self.limits.poll_s)
        return await self.status(job_id)

    # --- events ------------------------------------------------------------------------------
    async def events(self, job_id: str, after: int = -1) -> AsyncIterator[dict]:
        """Non-frame events with seq > `after`, then one key frame (`key_frame: true`) of the
        current voxels, then live events until the job ends. Event dicts are copies."""
        await self._start()
        rec = await self._get(job_id)
        live = self._live.get(job_id)
        sub = None
        if live is not None:  # subscribe before reading the store: nothing falls in between
            sub = _Subscriber()
            live.subscribers.append(sub)
        try:
            replay, frame = await self.store.events(job_id, after)
            if live is not None and live.frame is not None and (frame is None or live.frame["seq"] > frame["seq"]):
                frame = live.frame
            sent = after
            # `_cursor`: the SSE id to send with the key frame, so Last-Event-ID never goes backwards.
            key = dict(frame, key_frame=True, _cursor=max(after, frame["seq"])) if frame is not None else None
            # The key frame goes after every replayed event older than it, before the newer
            # ones: the picture is complete before the mesh/complete events that follow it.
            for ev in replay:
                if key is not None and ev["seq"] > key["seq"]:
                    yield key
                    key = None
                yield ev
                sent = ev["seq"]
            if key is not None:
                sent = max(sent, key["seq"])
                yield key
            if sub is not None:
                while (ev := await sub.get()) is not None:
                    if ev["seq"] > sent:
                        sent = ev["seq"]
                        yield dict(ev)
                return
            while rec["state"] not in TERMINAL:
                # Run by another manager, or by one that died (until it is reaped): follow the store.
                await asyncio.sleep(self.limits.poll_s)
                rec = await self._get(job_id)
                new, frame = await self.store.events(job_id, sent)
                if frame is not None and frame["seq"] > sent:
                    new = sorted(new + [frame], key=lambda e: e["seq"])
                for ev in new:
                    sent = ev["seq"]
                    yield ev
        finally:
            if sub is not None and sub in live.subscribers:
                live.subscribers.remove(sub)

    async def close(self) -> None:
        """Stop the heartbeat and close the store (tests; a replica simply exits)."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        if self.store is not None:
            await self.store.close()

    # --- internals ---------------------------------------------------------------------------
    async def _start(self) -> None:
        if self._maintenance is not None:
            return
        if self.store is None:
            self.store = open_job_store(self.limits.store_url, self.artifacts.url,
                                        prefix=self.limits.store_prefix, ttl_s=self.limits.ttl_s,
                                        password_env=self.limits.store_password_env)
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
        await self.store.heartbeat(self.owner, time.time())

    async def _get(self, job_id: str) -> dict:
        rec = await self.store.get(job_id) if ID_PATTERN.fullmatch(job_id or "") else None
        if rec is not None and rec["state"] in TERMINAL and time.time() - rec["finished"] > self.limits.ttl_s:
            rec = None  # expired; the next sweep removes it
        if rec is None:
            raise JobNotFound(f"no job {job_id!r} (unknown, or expired after its TTL)")
        return rec

    def _pump(self) -> None:
        while self._waiting and self._running < self.limits.max_running:
            live = self._live[self._waiting.popleft()]
            live.state = RUNNING
            self._running += 1
            live.task = asyncio.get_running_loop().create_task(self._run(live))

    async def _record(self, live: _Live, ev: dict) -> None:
        """Log an event in the store, then hand it to the subscribers."""
        job_id = live.job.request_id
        if ev["type"] in FRAME_EVENTS:
            live.frame = ev
            if ev["step"] == ev["total_steps"] or \
                    time.monotonic() - live.frame_stored >= self.limits.frame_store_every_s:
                await self._store_frame(live)
            else:  # the voxels wait; the cursor moves now, so an id a client saw is never ahead of the store
                await self.store.update(job_id, {"last_seq": ev["seq"], "stage": ev["stage"],
                                                 "progress": ev["progress"]})
        else:
            await self._store_frame(live)  # the latest picture precedes every later event in the store
            await self.store.append_event(job_id, ev)
        for sub in live.subscribers:
            sub.put(ev)

    async def _store_frame(self, live: _Live) -> None:
        if live.frame is not None and live.frame["seq"] > live.frame_stored_seq:
            await self.store.set_frame(live.job.request_id, live.frame)
            live.frame_stored, live.frame_stored_seq = time.monotonic(), live.frame["seq"]

    async def _run(self, live: _Live) -> None:
        job = live.job
        state, error, complete = FAILED, None, None
        agen = None
        live.begun = True
        try:
            if live.cancel_reason:  # cancelled before the task first ran
                raise asyncio.CancelledError
            live.record["started"] = time.time()
            if not await self.store.update(job.request_id, {"state": RUNNING, "started": live.record["started"]},
                                           expect=(QUEUED,)):
                live.ended_elsewhere = True  # ended meanwhile by another manager
                return
            deadline = time.monotonic() + self.settings.timeouts.request_s
            agen = run_pipeline(job, self.clients)
            async for ev in agen:
                if live.cancel_reason:
                    # Python 3.11's wait_for may swallow a cancel that meets a finished step
                    # (fixed in 3.12); the reason stays, so the job stops at the next event.
                    raise asyncio.CancelledError
                if time.monotonic() > deadline:
                    raise StageTimeout("the job exceeded its time limit")
                if ev["type"] == "complete":
                    complete = ev  # sent once the artifacts are served (_finish)
                    continue
                await self._record(live, ev)
            if live.cancel_reason:
                raise asyncio.CancelledError
            state = SUCCEEDED
        except asyncio.CancelledError:
            state = CANCELLED if live.cancel_reason else FAILED
            error = JobCancelled(live.cancel_reason) if live.cancel_reason else \
                JobInterrupted("the job manager stopped while the job ran; submit it again")
        except Exception as exc:  # noqa: BLE001 - becomes the job's error and an error event
            error = exc
        finally:
            live.finishing = True
            if agen is not None:
                await agen.aclose()
            self._running -= 1
            try:
                if not live.ended_elsewhere:
                    if error is not None:
                        await self._fail(live, error)
                    await self._finish(live, state, error, complete)
            except Exception:  # noqa: BLE001 - the store is unreachable: reaped as interrupted later
                log.exception("job %s: could not record its end", job.request_id)
            self._forget(live)
            self._pump()

    async def _fail(self, live: _Live, exc: BaseException) -> None:
        """Log the job's `error` event."""
        seq = max(live.frame["seq"] if live.frame else -1, (await self.store.get(live.job.request_id))["last_seq"])
        await self._record(live, error_event(exc, live.job.request_id, seq + 1))

    async def _finish(self, live: _Live, state: str, exc: BaseException | None, complete: dict | None) -> None:
        job = live.job
        job_id = job.request_id
        await self._store_frame(live)
        artifacts = {}
        manifest = build_manifest(job, live.record, self.settings, state, complete)
        if state == SUCCEEDED:
            artifacts = dict((complete or {}).get("artifacts", {}))
            try:
                data = json.dumps(manifest, indent=1, default=str).encode()
                size = await asyncio.to_thread(self.artifacts.put, job_id, "manifest.json", data)
                artifacts["manifest.json"] = {"url": f"/v1/artifacts/{job_id}/manifest.json", "size_bytes": size}
            except Exception:  # noqa: BLE001 - a manifest is no reason to lose the job's artifacts
                log.exception("job %s: could not write its manifest", job_id)
            await asyncio.to_thread(self.artifacts.commit, job_id)
            if complete is not None:  # a client that sees `complete` can fetch every artifact
                complete["artifacts"] = artifacts
                await self._record(live, complete)
        else:  # nothing of a job that did not succeed is ever served
            await asyncio.to_thread(self.artifacts.delete, job_id)
        error = None
        if exc is not None:
            err = error_event(exc, job_id, 0)
            error = {"code": err["code"], "message": err["message"]}
        await self.store.update(job_id, {"state": state, "finished": time.time(), "error": error,
                                         "artifacts": artifacts, "manifest": manifest}, expect=(live.state,))
        live.state = state
        self._forget(live)

    def _forget(self, live: _Live) -> None:
        """The job leaves this manager's memory; its subscribers' streams end."""
        # A kept job must not keep its photo (up to 2048² px): the store has the digests.
        live.job.image = live.job.seg_prompt.mask = None
        for sub in live.subscribers:
            sub.put(None)
        live.subscribers.clear()
        self._live.pop(live.job.request_id, None)

    async def _end_elsewhere(self, rec: dict, state: str, exc: StageError) -> None:
        """End a job this manager does not run (its manager died): the error event first, so a
        reader that sees the final state finds it in the log, then the state."""
        ev = error_event(exc, rec["job_id"], (rec["last_seq"] if rec["last_seq"] is not None else -1) + 1)
        await self.store.append_event(rec["job_id"], ev)
        if await self.store.update(rec["job_id"], {"state": state, "finished": time.time(),
                                                   "error": {"code": ev["code"], "message": ev["message"]}},
                                   expect=(rec["state"],)):
            await asyncio.to_thread(self.artifacts.delete, rec["job_id"])

    async def _reap(self) -> None:
        """Fail the unfinished jobs of managers whose heartbeat is older than the lease."""
        owners, now = await self.store.owners(), time.time()
        for rec in await self.store.unfinished():
            if rec["owner"] == self.owner:
                continue
            seen = owners.get(rec["owner"])
            if seen is None or now - seen > self.limits.owner_lease_s:
                log.warning("job %s: its manager stopped; failing it as interrupted", rec["job_id"])
                await self._end_elsewhere(rec, FAILED, JobInterrupted(
                    f"the job manager running this job stopped (restarted or killed) while it was {rec['state']}; "
                    f"submit it again (seed {rec['seed']} reproduces it)"))

    async def _expire(self, room: int = 0) -> None:
        for job_id in await self.store.expire(time.time(), self.limits.ttl_s, self.limits.max_jobs, room):
            await asyncio.to_thread(self.artifacts.delete, job_id)

    async def _maintain(self) -> None:
        """Heartbeat, reap dead managers' jobs, stop jobs cancelled elsewhere, expire old ones."""
        while True:
            try:
                await self.store.heartbeat(self.owner, time.time())
                await self._reap()
                for job_id, live in list(self._live.items()):
                    rec = await self.store.get(job_id)
                    if live.finishing or (rec is not None and rec["state"] not in TERMINAL
                                          and not rec["cancel_requested"]):
                        continue
                    if rec is not None and rec["state"] not in TERMINAL:
                        await self.cancel(job_id)  # asked through another manager
                        continue
                    live.ended_elsewhere = True  # ended by a reaper that took this manager for dead
                    if live.task is not None:
                        live.task.cancel()
                    elif job_id in self._waiting:
                        self._waiting.remove(job_id)
                        self._forget(live)
                await self._expire()
            except Exception:  # noqa: BLE001 - the next round retries
                log.exception("jobs store maintenance failed")
            await asyncio.sleep(self.limits.owner_lease_s / 3)


def urls(job_id: str) -> dict:
    base = f"/v1/jobs/{job_id}"
    return {"status_url": base, "events_url": f"{base}/events", "cancel_url": base}
