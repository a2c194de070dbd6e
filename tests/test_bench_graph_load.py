"""The graph load benchmark's load path (bench/bench_graph_load.py), run tiny against the
session's embedded app so it cannot rot: every stream is read to its end and summarised."""
from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.serve

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_graph_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_graph_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixed_rate_and_saturation_phases_report_every_request(local_app):
    base, _ = local_app
    bench = load_bench()
    fixed = asyncio.run(bench.run_load(base, 2, rate=4.0))
    saturated = asyncio.run(bench.run_load(base, 3, concurrency=2))
    for report, n in ((fixed, 2), (saturated, 3)):
        assert report["requests"] == n and report["succeeded"] == n, report
        assert 0 < report["first_frame_s"]["p50"] <= report["glb_s"]["p50"] <= report["glb_s"]["p95"]
        assert report["objects_per_min"] > 0 and report["errors"] == []
    assert bench.summarise([{"ok": False, "error": "busy", "first_frame_s": None, "glb_s": None}],
                           1.0)["errors"] == ["busy"]
