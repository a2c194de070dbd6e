"""The run step of a stream: a prepared Job → the pipeline running, under the whole-request
deadline, its lifetime held by a StreamOwner (serve_app/stream_owner.py).

`start_run` waits until the reconstructor has accepted the request (stream.answer_at
"accepted": its first `queue` event, i.e. a replica took it or it holds a place in line) or
until the first event ("first_event"), and raises what fails before, so that a full queue is
a real HTTP status. From there on every failure, the deadline included, becomes an `error`
event: the stream never just stops. The owner's close stops the pipeline (and through the
stage handles the GPU work it started) and deletes the artifacts of a run that did not
complete; that is the only place the run is closed.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from sam3d_common import metrics
from sam3d_common.errors import as_stage_error
from serve_app.http_util import RETRY_AFTER_S
from serve_app.pipeline import Job, run_pipeline
from serve_app.protocol import FRAME_EVENTS, make_event
from serve_app.protocol.events import RECONSTRUCTOR_STAGES
from serve_app.service import GenerateService
from serve_app.stream_owner import StreamOwner
from serve_app.time_limits import next_before

log = logging.getLogger("sam3d.service")


async def start_run(service: GenerateService, job: Job, deadline_s: float | None = None) -> StreamOwner:
    """The running request as a StreamOwner whose `events` are its protocol events, `error`
    last if it fails. `deadline_s`: seconds for the whole request (default timeouts.request_s)."""
    deadline = time.monotonic() + (deadline_s or service.settings.timeouts.request_s)
    service.retention.tick()
    # Under Serve's JSON logs this line also carries Serve's request_id: it links the two ids.
    log.info("stream %s starting", job.request_id)
    pipeline = run_pipeline(job, service.clients)
    ended = {"complete": False}
    stream = StreamOwner(job.request_id)
    # Closed newest first: the pipeline stops, then what a run that did not complete stored goes.
    stream.on_close(lambda: None if ended["complete"] else _discard(service, job.request_id))
    stream.on_close(pipeline.aclose)
    held: list[dict] = []
    try:
        while True:
            try:
                ev = await next_before(pipeline, deadline)
            except StopAsyncIteration:
                break
            held.append(ev)
            if service.settings.stream.answer_at == "first_event" or accepted(ev):
                break
    except BaseException as exc:
        await stream.close()
        if isinstance(exc, Exception):  # not a cancellation (client gone)
            _count_error(exc, job.stage)
        raise
    stream.events = _events(job, pipeline, held, deadline, ended)
    stream.on_close(stream.events.aclose)
    return stream


async def _events(job: Job, pipeline: AsyncIterator[dict], held: list[dict], deadline: float,
                  ended: dict) -> AsyncIterator[dict]:
    """The held events, then the pipeline's until it ends or the deadline passes; a failure
    becomes a last `error` event. Every event is counted in the stream metrics."""
    seq = held[-1]["seq"] if held else -1
    try:
        for ev in held:
            ended["complete"] = ev["type"] == "complete"
            metrics.stream_event(ev)
            yield ev
        while True:
            try:
                ev = await next_before(pipeline, deadline)
            except StopAsyncIteration:
                return
            seq = ev["seq"]
            ended["complete"] = ev["type"] == "complete"
            metrics.stream_event(ev)
            yield ev
    except Exception as exc:  # noqa: BLE001 - every failure must reach the client
        ev = error_event(exc, job.request_id, seq + 1)
        metrics.stream_event(ev)
        metrics.stage_error(job.stage, ev["code"])
        yield ev


def accepted(ev: dict) -> bool:
    """The event shows the reconstructor took the request or queued it: past a full-queue refusal."""
    return ev["type"] in FRAME_EVENTS or ev["stage"] in RECONSTRUCTOR_STAGES


def _discard(service: GenerateService, request_id: str) -> None:
    """Delete a request's artifacts in a thread, without awaiting (this may run while the
    stream is being cancelled)."""
    asyncio.get_running_loop().run_in_executor(None, service.store.delete, request_id)


def _count_error(exc: BaseException, stage: str) -> None:
    """A failure before the stream's headers: counted by the stage it hit and its code; bad
    input found by a stage counts too (code bad_input)."""
    err = as_stage_error(exc)
    metrics.stage_error(stage, err.code if err is not None else "internal")


def error_event(exc: BaseException, request_id: str, seq: int) -> dict:
    """The `error` event for a failure: the stage error's code and message, or `internal`
    with the request id to quote (the details go to the log only)."""
    err = as_stage_error(exc)
    if err is None:
        log.exception("request %s failed", request_id, exc_info=exc)
        code, message = "internal", f"internal error; quote request id {request_id} to the operator"
    else:
        code, message = err.code, err.message
    ev = make_event("error", stage="request", code=code, message=message)
    if err is not None and err.status == 503:  # the same request may succeed shortly
        ev["retry_after_s"] = RETRY_AFTER_S
    ev.update(request_id=request_id, seq=seq, progress=0.0, t=0.0)
    return ev
