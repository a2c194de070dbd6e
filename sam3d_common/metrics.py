"""Prometheus metrics through Ray's metrics API, and the request id on every response.

Inside a Ray worker (every Serve replica) the metrics are `ray.util.metrics` objects, which
Ray exports in Prometheus format from each node's metrics agent (`ray start
--metrics-export-port`); Ray adds the replica's tags. Outside Ray (tests, the in-process
graph) they go to an in-memory `Recorder` that tests can read.

    sam3d_http_requests_total{route,method,status}     every answered request
    sam3d_http_response_seconds{route,method}          until the last byte (a whole stream)
    sam3d_http_response_bytes_total{route}              body bytes sent (streams included)
    sam3d_stage_seconds{stage}                          per stage of completed requests
    sam3d_stream_outcomes_total{outcome,code}           complete, or error with its code
    sam3d_stage_errors_total{stage,code}                failures by the stage running (as in stage_seconds;
                                                        "request" before the first) and their code
                                                        (before a stream: the HTTP error; during: the event)
    sam3d_queue_wait_seconds{stage}                     from a stage call leaving its caller to the
                                                        replica starting it (segmenter, reconstructor,
                                                        mesh_baker; recorded in the stage's replica)
    sam3d_steps_total{stage}                            reconstruction steps run (geometry, appearance)
    sam3d_steps_per_second{stage}                       per stream: a stage's steps over its seconds
    sam3d_frames_total{transport,outcome}               voxel frames "sent", or "coalesced" (replaced by
                                                        a newer one before sending: a slow reader)
    sam3d_stream_bytes_total{transport}                 encoded event bytes streamed (sse, binary, python)
    sam3d_gpu_memory_bytes{deployment,replica,device,kind}
                                                        torch.cuda memory_allocated / memory_reserved of a
                                                        GPU replica (set at start and at each health check;
                                                        absent where torch has no CUDA device)
"""
from __future__ import annotations

import sys
import time
import uuid
from collections import defaultdict

LATENCY_BOUNDS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]
RATE_BOUNDS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]

_SPECS = {
    "sam3d_http_requests_total": ("counter", "HTTP requests answered", ("route", "method", "status")),
    "sam3d_http_response_seconds": ("histogram", "seconds until a response's last byte", ("route", "method")),
    "sam3d_http_response_bytes_total": ("counter", "response body bytes sent", ("route",)),
    "sam3d_stage_seconds": ("histogram", "seconds per pipeline stage of completed requests", ("stage",)),
    "sam3d_stream_outcomes_total": ("counter", "streams ended, by outcome and error code", ("outcome", "code")),
    "sam3d_stage_errors_total": ("counter", "request failures by pipeline stage and error code", ("stage", "code")),
    "sam3d_queue_wait_seconds": ("histogram", "seconds a stage call waited before its replica started it",
                                 ("stage",)),
    "sam3d_steps_total": ("counter", "reconstruction steps run", ("stage",)),
    "sam3d_steps_per_second": ("histogram", "per stream: a reconstruction stage's steps per second", ("stage",)),
    "sam3d_frames_total": ("counter", "voxel frames sent, or coalesced before sending", ("transport", "outcome")),
    "sam3d_stream_bytes_total": ("counter", "encoded event bytes streamed", ("transport",)),
    "sam3d_gpu_memory_bytes": ("gauge", "torch.cuda memory of a GPU replica (allocated, reserved)",
                               ("deployment", "replica", "device", "kind")),
}
_BOUNDS = {"sam3d_steps_per_second": RATE_BOUNDS}


class Recorder:
    """In-memory metrics with the same names and tags (used outside Ray)."""

    def __init__(self):
        self.counters: dict[tuple, float] = defaultdict(float)
        self.observations: dict[tuple, list[float]] = defaultdict(list)
        self.gauges: dict[tuple, float] = {}

    def record(self, name: str, value: float, tags: dict[str, str]) -> None:
        key = (name, tuple(sorted(tags.items())))
        kind = _SPECS[name][0]
        if kind == "counter":
            self.counters[key] += value
        elif kind == "gauge":
            self.gauges[key] = value
        else:
            self.observations[key].append(value)

    def gauge(self, name: str, **tags) -> dict[tuple, float]:
        """{sorted tag items: last value} of a gauge's series matching `tags`."""
        return {t: v for (n, t), v in self.gauges.items() if n == name and tags.items() <= dict(t).items()}

    def count(self, name: str, **tags) -> float:
        return sum(v for (n, t), v in self.counters.items() if n == name and tags.items() <= dict(t).items())

    def observed(self, name: str, **tags) -> list[float]:
        return [x for (n, t), xs in self.observations.items() if n == name and tags.items() <= dict(t).items()
                for x in xs]


class _RayMetrics:
    def __init__(self):
        from ray.util import metrics

        self._m = {}
        for name, (kind, doc, tags) in _SPECS.items():
            if kind == "counter":
                self._m[name] = metrics.Counter(name, doc, tag_keys=tags)
            elif kind == "gauge":
                self._m[name] = metrics.Gauge(name, doc, tag_keys=tags)
            else:
                self._m[name] = metrics.Histogram(name, doc, boundaries=_BOUNDS.get(name, LATENCY_BOUNDS),
                                                  tag_keys=tags)

    def record(self, name: str, value: float, tags: dict[str, str]) -> None:
        method = {"counter": "inc", "gauge": "set", "histogram": "observe"}[_SPECS[name][0]]
        getattr(self._m[name], method)(value, tags=tags)


_sink = None


def sink():
    """Ray's metrics in a Ray worker, else one process-wide Recorder."""
    global _sink
    if _sink is None:
        try:
            import ray

            _sink = _RayMetrics() if ray.is_initialized() else Recorder()
        except ImportError:
            _sink = Recorder()
    return _sink


def record(name: str, value: float = 1.0, **tags: str) -> None:
    sink().record(name, value, {k: str(v) for k, v in tags.items()})


def stream_event(event: dict) -> None:
    """Count how a stream ended and time its stages (called for every event of a stream)."""
    if event["type"] == "complete":
        record("sam3d_stream_outcomes_total", outcome="complete", code="")
        for stage, seconds in (event.get("timings") or {}).items():
            record("sam3d_stage_seconds", float(seconds), stage=stage)
    elif event["type"] == "error":
        record("sam3d_stream_outcomes_total", outcome="error", code=event.get("code", "internal"))


def stage_error(stage: str, code: str) -> None:
    """A request failed in `stage` (the stage of the last event before the failure)."""
    record("sam3d_stage_errors_total", stage=stage, code=code)


def queue_wait(stage: str, sent_at: float | None) -> None:
    """Called by a stage's replica as it starts a call its caller stamped with time.time()
    (`sent_at`; None from callers that do not stamp). Clocks of different nodes must agree."""
    if sent_at is not None:
        record("sam3d_queue_wait_seconds", max(0.0, time.time() - sent_at), stage=stage)


class StepMeter:
    """Counts a stream's reconstruction steps from its StepFrames (`stage`, 1-based `step`,
    `total_steps`; frames may skip steps) and records each stage's steps per second when its
    last frame arrives. A stage's clock starts when the previous one ends (the first: at
    construction, just before the reconstructor is called)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.stage_t0 = clock()
        self.last_step: dict[str, int] = {}

    def frame(self, stage: str, step: int, total_steps: int) -> None:
        done = self.last_step.get(stage, 0)
        if step > done:
            record("sam3d_steps_total", step - done, stage=stage)
            self.last_step[stage] = step
        if step == total_steps:
            now = self.clock()
            seconds = now - self.stage_t0
            if seconds > 0:
                record("sam3d_steps_per_second", total_steps / seconds, stage=stage)
            self.stage_t0 = now


def gpu_memory(deployment: str) -> int:
    """Set sam3d_gpu_memory_bytes for each CUDA device torch sees in this replica; returns how
    many. Only where the replica's backend already imported torch (a CPU replica pays nothing)
    and CUDA is available; otherwise nothing is recorded."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return 0
        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a broken driver: the health check says so, not this
        return 0
    replica = _replica_id()
    for i in range(count):
        for kind, read in (("allocated", torch.cuda.memory_allocated), ("reserved", torch.cuda.memory_reserved)):
            record("sam3d_gpu_memory_bytes", float(read(i)), deployment=deployment, replica=replica,
                   device=str(i), kind=kind)
    return count


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica
        return "local"


def _route(scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP response, and gives each an `x-request-id` header: the
    stream's id where the route made one (`X-Sam3d-Request-Id`), else a new one. A request
    that arrives with `x-request-id` came through Serve's proxy (or a gateway), which puts
    that id on the response itself, so none is added then (no second header)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, sent = time.monotonic(), [500], [0]
        upstream_id = any(k.lower() == b"x-request-id" for k, _ in scope["headers"])

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if not upstream_id:
                    headers = list(message.get("headers", []))
                    rid = next((v for k, v in headers if k.lower() == b"x-sam3d-request-id"), None)
                    headers.append((b"x-request-id", rid or uuid.uuid4().hex.encode()))
                    message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent[0] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route, method = _route(scope), scope["method"]
            record("sam3d_http_requests_total", route=route, method=method, status=str(status[0]))
            record("sam3d_http_response_seconds", time.monotonic() - t0, route=route, method=method)
            record("sam3d_http_response_bytes_total", sent[0], route=route)
