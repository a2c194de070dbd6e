"""Errors of the jobs API, each with its HTTP status and code (sam3d_common/errors.py)."""
from __future__ import annotations

from sam3d_common.errors import Busy, StageError


class JobNotFound(StageError):
    status = 404
    code = "not_found"


class JobCancelled(StageError):
    status = 409
    code = "cancelled"


class JobInterrupted(StageError):
    """The manager that ran the job stopped (replica killed, restarted or redeployed)."""

    status = 503
    code = "interrupted"


class QueueFull(Busy):
    """More jobs wait than `jobs.max_queued`, or `jobs.max_jobs` unfinished jobs are kept."""

    code = "queue_full"
