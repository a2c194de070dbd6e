"""The requests of this process that wait for a reconstructor slot, in arrival order.

A request enters the line when it calls the reconstructor and leaves when the reconstructor's
first item arrives (the replica's `Started`, or a first frame) or when it ends. Its place in
line is 1 + the number of requests that entered before it and still wait. Ray Serve queues a
deployment's requests per caller (each DeploymentHandle keeps its own queue, up to
`max_queued_requests`) and hands them out in order, so for one ingress replica this is the
place in the queue its requests go through; requests of other ingress replicas or of the job
manager wait in their own callers' queues and are not counted here.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Iterator


class WaitLine:
    def __init__(self) -> None:
        self._tickets = itertools.count()
        self._waiting: set[int] = set()

    @contextmanager
    def waiting(self) -> Iterator[int]:
        """Hold a place in line for the duration of the block; yields the ticket."""
        ticket = next(self._tickets)
        self._waiting.add(ticket)
        try:
            yield ticket
        finally:
            self._waiting.discard(ticket)

    def leave(self, ticket: int) -> None:
        self._waiting.discard(ticket)

    def position(self, ticket: int) -> int:
        """1-based place in line of a waiting ticket (0 once it left)."""
        if ticket not in self._waiting:
            return 0
        return sum(1 for t in self._waiting if t <= ticket)

    def __len__(self) -> int:
        return len(self._waiting)


# One line per process: every pipeline run in it (streams and jobs) calls the same reconstructor.
LINE = WaitLine()
