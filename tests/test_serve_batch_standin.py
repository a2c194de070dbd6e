"""The benchmarks' asyncio stand-in for @serve.batch keeps the decorator's rules: batches close when full
(or wait_s after their first request) and run one at a time, as the Segmenter deployment's
@serve.batch (max_concurrent_batches=1) runs them."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytest.importorskip("torch")

from bench.serve_batch_standin import serve_batch_run  # noqa: E402


def test_standin_runs_one_batch_at_a_time_and_fills_them_under_load():
    running, most, sizes = 0, 0, []
    guard = threading.Lock()

    def encode(images, ids):
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with guard:
            running -= 1
        sizes.append(len(images))
        return list(ids)

    out = asyncio.run(serve_batch_run(encode, list(range(48)), 32, 8, 0.01, key=str, real_serve=False))
    assert most == 1  # never two batches on the "device" at once
    assert max(sizes) == 8 and sum(sizes) == 8 + 48  # the warm-up's 8, then every request once
    assert out["mean_batch"] >= 6  # 32 in flight: the batches fill (8.0 unless the machine stalls a request)
    assert not out["real_serve_batch"]
