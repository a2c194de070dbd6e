"""Placement and node loss on a three-node Ray (tests/multinode_cluster.py, own process).

The script starts its own Ray in a subprocess: it never shares the session's Ray.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def observed() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # Its own session, so a timeout takes down the whole process group: driver and Ray daemons.
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("multinode_cluster.py"))],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, stderr[-4000:]
    return json.loads(lines[-1])


def test_gpu_deployments_land_only_on_the_gpu_node(observed):
    nodes, placed = observed["nodes"], observed["placement"]
    assert placed["Reconstructor"] == [nodes["gpu"]]
    assert placed["Segmenter"] == [nodes["gpu"]]
    for name in ("Ingress", "PromptEnhancer", "ImageGenerator", "MeshBaker"):
        assert nodes["gpu"] not in placed[name] and nodes["head"] not in placed[name], name
    assert observed["first"][-1] == "complete"


def test_concurrent_streams_add_a_reconstructor_replica_and_idleness_removes_it(observed):
    assert observed["autoscale_streams"] == ["complete"] * 3
    assert observed["autoscale_peak"] == 2  # max_replicas of the test's policy
    assert observed["autoscale_peak_nodes"] == [observed["nodes"]["gpu"]]  # on the GPU node only
    assert observed["replicas_idle"] == 1  # back to min_replicas once idle
    assert observed["scaled_down_s"] < 30
    assert observed["autoscale_s"] < 90  # three ~9 s streams on up to two replicas, then idle


def test_losing_the_gpu_node_mid_stream_ends_that_stream_with_an_error(observed):
    interrupted = observed["interrupted"]
    assert "geometry" in interrupted and "complete" not in interrupted
    assert interrupted[-2:] == ["error", "stage_unavailable"], interrupted  # the event, its code


def test_new_requests_succeed_on_the_replacement_node(observed):
    assert observed["after"][-1] == "complete"
    assert observed["placement_after"]["Reconstructor"] == [observed["new_gpu"]]
    # ~85 s on an idle 2-core machine, ~130 s under other jobs' load: this bounds a hang.
    assert observed["total_s"] < 200
