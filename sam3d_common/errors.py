"""Errors a backend raises for the caller's input or configuration, mapped to HTTP statuses.

They cross Ray as the `cause` of a RayTaskError; `as_stage_error` finds them again.
"""
from __future__ import annotations


class StageError(Exception):
    """An error with a stable code and an HTTP status, whose message is safe to show a client."""

    status = 500
    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))


class BadInput(StageError):
    status = 422
    code = "bad_input"


class NotConfigured(StageError):
    """The stage's configured backend cannot do this (e.g. text-to-image on the embedded config)."""

    status = 501
    code = "not_configured"


class ModelUnavailable(StageError):
    """Weights or packages are missing; raised at replica start with what is missing and how to get it."""

    status = 503
    code = "model_unavailable"


class StageTimeout(StageError):
    status = 504
    code = "stage_timeout"


class Busy(StageError):
    """Every replica of a stage is busy and its queue is full: come back later."""

    status = 503
    code = "busy"


class QueueTimeout(StageError):
    """The request waited in a stage's queue longer than the configured limit."""

    status = 503
    code = "queue_timeout"


class StageUnavailable(StageError):
    """A stage's replica died or could not be reached mid-request; a retry finds a live one."""

    status = 503
    code = "stage_unavailable"


# Ray's and Serve's errors for a replica, worker or node that went away (matched by name along
# the class hierarchy, so this module needs no Ray import).
_UNAVAILABLE = frozenset({
    "RayActorError", "WorkerCrashedError", "NodeDiedError", "OwnerDiedError", "ObjectLostError",
    "LocalRayletDiedError", "DeploymentUnavailableError", "ReplicaUnavailableError",
})


def as_stage_error(exc: BaseException) -> StageError | None:
    """Unwrap Ray's error wrappers to the StageError a backend raised, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StageError):
            return exc
        if type(exc).__name__ == "BackPressureError":  # ray.serve.exceptions, without importing Ray
            return Busy("the service is at capacity and its queue is full; retry in a few seconds")
        if any(cls.__name__ in _UNAVAILABLE for cls in type(exc).__mro__):
            return StageUnavailable("a stage's replica stopped while serving this request; "
                                    "retry in a few seconds")
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            exc = cause
            continue
        exc = exc.__cause__ or exc.__context__
    return None
