"""The bundled viewer (GET /): its static route, its Node unit tests, and the page itself in
Chromium (driven by playwright-core) against the local graph under Serve.

The browser test needs `/usr/bin/chromium` (Debian package `chromium`) and `npm ci` at the
repository root (playwright-core); it is skipped with the reason when either is missing.
Set SAM3D_VIEWER_SCREENSHOT=path to keep its screenshot (bench/results/viewer.png is one).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from photos import DATA

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
PLAYWRIGHT = ROOT / "node_modules" / "playwright-core"
NODE = shutil.which("node")


@pytest.mark.parametrize("name,ctype", [
    ("viewer.js", "text/javascript"),
    ("voxel-codec.js", "text/javascript"),
    ("viewer.css", "text/css"),
    ("index.html", "text/html"),
])
def test_static_files_served_with_their_types(local_app, name, ctype):
    base, _ = local_app
    r = httpx.get(f"{base}/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == ctype
    assert r.content == (ROOT / "serve_app" / "static" / name).read_bytes()


@pytest.mark.parametrize("name", [
    "missing.js",             # not there
    "Viewer.js",              # upper case
    ".viewer.js",             # hidden
    "viewer.py",              # not a page type
    "viewer.js.map",
    "..%2Fingress.py",        # a path, encoded
    "%2E%2E%2Fapp.py",
    "..%5Cingress.py",        # a backslash path
    "viewer.js%00.css",       # NUL
])
def test_static_route_refuses_other_names(local_app, name):
    base, _ = local_app
    r = httpx.get(f"{base}/static/{name}")
    assert r.status_code == 404, (name, r.status_code, r.text[:200])


def test_page_links_its_files(local_app):
    base, _ = local_app
    page = httpx.get(base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for ref in ('href="static/viewer.css"', 'src="static/viewer.js"'):
        assert ref in page.text
    # viewer.js imports the decoder relative to itself: /static/voxel-codec.js.
    assert 'from "./voxel-codec.js"' in httpx.get(base + "/static/viewer.js").text


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_viewer_units_in_node():
    proc = subprocess.run([NODE, "--test", "tests/browser/"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 0" not in proc.stdout


def _browser_missing() -> str | None:
    if NODE is None:
        return "node is not installed"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if not PLAYWRIGHT.is_dir():
        return "node_modules/playwright-core is missing (npm ci)"
    return None


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_viewer_in_chromium(local_app, tmp_path):
    base, _ = local_app
    shot = Path(os.environ.get("SAM3D_VIEWER_SCREENSHOT") or tmp_path / "viewer.png")
    proc = subprocess.run(
        [NODE, "tests/browser/viewer.mjs", base, str(DATA / "coffee.png"), str(shot)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "CHROMIUM": str(CHROMIUM)},
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no report from the browser script; stderr:\n{proc.stderr[-4000:]}"
    report = json.loads(lines[-1])
    assert proc.returncode == 0 and report["ok"], json.dumps(report, indent=1)[-6000:]
    checks = report["checks"]
    expected = {
        "bad_request_shows_server_message", "click_adds_object_point", "complete", "progress_100",
        "geometry_frames_drawn", "appearance_frames_drawn", "mesh_drawn", "stages_done",
        "canvas_mesh_not_blank", "canvas_mesh_reddish_cup", "canvas_voxels_not_blank",
        "canvas_voxels_reddish_cup", "glb_link_downloads", "download_links",
        "stop_button_ends_the_run", "resync_after_lost_frame", "no_page_errors",
        "only_the_deliberate_http_error",
    }
    assert expected <= checks.keys() and all(c["ok"] for c in checks.values())
    assert checks["geometry_frames_drawn"]["detail"] >= 2
    assert checks["appearance_frames_drawn"]["detail"] >= 2
    assert checks["progress_100"]["detail"] == {"progress": 1, "shown": "100 %"}
    assert checks["glb_link_downloads"]["detail"]["status"] == 200
    assert checks["resync_after_lost_frame"]["detail"]["keyFrameRequests"] == [202]
    assert shot.stat().st_size > 20_000  # a real screenshot, not an empty page
