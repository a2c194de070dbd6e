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
"""
from __future__ import annotations

import time
import uuid
from collections import defaultdict

LATENCY_BOUNDS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]

_SPECS = {
    "sam3d_http_requests_total": ("counter", "HTTP requests answered", ("route", "method", "status")),
    "sam3d_http_response_seconds": ("histogram", "seconds until a response's last byte", ("route", "method")),
    "sam3d_http_response_bytes_total": ("counter", "response body bytes sent", ("route",)),
    "sam3d_stage_seconds": ("histogram", "seconds per pipeline stage of completed requests", ("stage",)),
    "sam3d_stream_outcomes_total": ("counter", "streams ended, by outcome and error code", ("outcome", "code")),
}


class Recorder:
    """In-memory metrics with the same names and tags (used outside Ray)."""

    def __init__(self):
        self.counters: dict[tuple, float] = defaultdict(float)
        self.observations: dict[tuple, list[float]] = defaultdict(list)

    def record(self, name: str, value: float, tags: dict[str, str]) -> None:
        key = (name, tuple(sorted(tags.items())))
        if _SPECS[name][0] == "counter":
            self.counters[key] += value
        else:
            self.observations[key].append(value)

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
            else:
                self._m[name] = metrics.Histogram(name, doc, boundaries=LATENCY_BOUNDS, tag_keys=tags)

    def record(self, name: str, value: float, tags: dict[str, str]) -> None:
        metric = self._m[name]
        (metric.inc if _SPECS[name][0] == "counter" else metric.observe)(value, tags=tags)


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
