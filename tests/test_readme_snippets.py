"""The README's code runs as written: its Python API block is extracted and executed."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def readme_block(heading: str, lang: str = "python") -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block under {heading!r}"
    return match.group(1)


@pytest.mark.serve
def test_deployment_handle_snippet_runs_as_written(local_app):
    code = readme_block("### From Python, through a DeploymentHandle")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    lines = out.getvalue().splitlines()
    kinds = [ln.split()[0] for ln in lines]
    assert kinds[0] == "loading" and kinds[-1] == "complete"
    assert "geometry" in kinds and "appearance" in kinds and "glb_ready" in kinds


@pytest.mark.serve
@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's example uses curl; not installed")
def test_terminal_examples_run_as_written(local_app, tmp_path):
    """The curl and client lines, only pointed at the test's port instead of 8000."""
    base, _ = local_app
    script = readme_block("From a second terminal", "bash")
    script = script.replace("http://127.0.0.1:8000", base)
    script = script.replace("python -m serve_app.client", f"python -m serve_app.client --url {base} --quiet")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "event: complete" in out.stdout
    assert len(out.stdout) < 20_000  # not a wall of base64 (the stream itself is ~700 KB)
    for name in ("coffee.glb", "rocket.glb", "astronaut.glb"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_app_handle_never_reads_the_cluster_address_file(monkeypatch):
    """With no Ray running here, app_handle starts one (address "local"): a stale
    /tmp/ray/ray_current_cluster (possibly another host's address) is not consulted."""
    import ray
    from ray._private import services

    from serve_app import launch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    seen = {}

    class Stop(Exception):
        pass

    def fake_init(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(Stop):
        launch.app_handle()
    assert seen["address"] == "local"


def test_local_gcs_address_prefers_env_and_refuses_ambiguity(monkeypatch):
    from ray._private import services

    from serve_app import launch

    monkeypatch.setattr(services, "find_gcs_addresses", lambda: ["10.0.0.1:6379", "10.0.0.2:6379"])
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert launch.local_gcs_address() == "127.0.0.1:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(launch.LaunchError, match="several Ray instances"):
        launch.local_gcs_address()
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: ["10.0.0.1:6379"])
    assert launch.local_gcs_address() == "10.0.0.1:6379"
