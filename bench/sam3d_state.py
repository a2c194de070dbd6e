"""What the parts of bench_sam3d_h200.py share: the parsed flags, the results written as
sam3d_h200.json after every run (so that a device call cut short still returns what it
measured), the log's clock, the --deadline, and the step timers."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from bench.sam3d_timing import StepTimers


@dataclass
class BenchState:
    args: argparse.Namespace
    out: Path
    results: dict
    timers: StepTimers
    t0: float  # the bench's start: the log's clock and the --deadline count from it

    @property
    def cuda(self) -> bool:
        return self.timers.cuda

    def log(self, *a) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s]", *a, flush=True)

    def save(self) -> None:
        (self.out / "sam3d_h200.json").write_text(json.dumps(self.results, indent=1, default=str))

    def past_deadline(self) -> bool:
        return time.perf_counter() - self.t0 > self.args.deadline
