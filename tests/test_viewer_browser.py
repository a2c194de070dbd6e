"""The bundled viewer (GET /): its static files and vendored libraries, /v1/capabilities, EXIF
orientation on upload, and the page itself in Chromium (playwright-core, WebGL through SwiftShader)
against tests/viewer_server.py — the HTTP app over in-process embedded backends, no Ray, no weights —
once with the GrabCut segmenter (clicks segmented on the server) and once with a tiny random-weight
SAM 3 (clicks decoded in the browser with onnxruntime-web).

The browser tests need `/usr/bin/chromium` (Debian package `chromium`) and `npm ci` at the repository
root (playwright-core); they are skipped with the reason when either is missing. Set
SAM3D_VIEWER_SCREENSHOTS=DIR to keep the screenshots (bench/results/viewer-*.png are some).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from photos import DATA, photo_array
from serve_app.ingress import build_fastapi_app
from serve_app.inputs import decode_image
from serve_app.service import GenerateService
from sam3d_common.settings import LimitsSettings, load_settings
from sam3d_common.store import ArtifactStore

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "serve_app" / "static"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
PLAYWRIGHT = ROOT / "node_modules" / "playwright-core"
NODE = shutil.which("node")


class _NoClients:
    """Stage clients for routes that only read settings (no backend is built)."""

    def __init__(self, generator_available: bool = False):
        self.available = generator_available

    async def describe_image_generator(self):
        return {"backend": "none", "available": self.available}


def app_client(tmp_path, segment_router=object(), generator=False, **settings) -> TestClient:
    cfg = load_settings({"store": {"url": str(tmp_path)}, **settings})
    store = ArtifactStore(str(tmp_path))
    return TestClient(build_fastapi_app(GenerateService(cfg, _NoClients(generator), store), segment_router))


@pytest.fixture
def client(tmp_path):
    return app_client(tmp_path)


# ------------------------------------------------------------------------------------ static files

@pytest.mark.parametrize("path,ctype", [
    ("viewer.js", "text/javascript"),
    ("scene.js", "text/javascript"),
    ("viewer.css", "text/css"),
    ("index.html", "text/html"),
    ("vendor/three/three.module.js", "text/javascript"),
    ("vendor/three/addons/loaders/GLTFLoader.js", "text/javascript"),
    ("vendor/spark/spark.module.min.js", "text/javascript"),
    ("vendor/onnxruntime-web/ort.wasm.bundle.min.mjs", "text/javascript"),
    ("vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm", "application/wasm"),
])
def test_static_files_served_with_their_types(client, path, ctype):
    r = client.get(f"/static/{path}")
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == ctype
    assert r.content == (STATIC / path).read_bytes()


def _raw_get(base: str, path: str) -> int:
    """Status of a GET sent byte for byte as given (no client-side path normalisation)."""
    u = urlparse(base)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {u.hostname}\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(64)
    return int(head.split()[1])


TRAVERSALS = [
    "/static/missing.js",
    "/static/../serve_app/ingress.py",
    "/static/vendor/../../ingress.py",
    "/static/..%2Fingress.py",
    "/static/vendor/..%2F..%2Fingress.py",
    "/static/%2E%2E/ingress.py",
    "/static/..%5Cingress.py",
    "/static/viewer.js%00.css",
    "/static//etc/passwd",
]


def test_page_imports_only_files_that_exist():
    page = (STATIC / "index.html").read_text()
    imports = json.loads(re.search(r'<script type="importmap">(.*?)</script>', page, re.S).group(1))["imports"]
    for target in imports.values():
        assert (ROOT / "serve_app" / target).exists(), target
    for js in STATIC.glob("*.js"):
        # imports and re-exports (`export { … } from`), on one line or several
        for rel in re.findall(r'^(?:import|export) [^;]*? from "(\.[^"]+)";', js.read_text(), re.M):
            assert (js.parent / rel).is_file(), (js.name, rel)
    assert 'src="static/viewer.js"' in page and "https://" not in page.split("<body>")[0]


def test_vendored_versions_match_package_json():
    wanted = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    vendored = json.loads((STATIC / "vendor" / "VERSIONS.json").read_text())
    assert vendored == {k: wanted[k] for k in vendored}
    for lib in ("three", "spark"):
        assert (STATIC / "vendor" / lib / "LICENSE").is_file()
    assert "MIT" in (STATIC / "vendor" / "README.md").read_text()


# ------------------------------------------------------------------------------------ capabilities

def test_capabilities_embedded_backends(client):
    caps = client.get("/v1/capabilities").json()
    assert caps["segmenter"] == {"backend": "grabcut", "browser_decoding": False, "click_decoder_url": None,
                                 "routes": ["/v1/segment"]}
    assert caps["text_to_3d"]["available"] is False and "image generator" in caps["text_to_3d"]["reason"]
    assert "compact" in caps["encodings"]


def test_capabilities_sam3_and_generator(tmp_path):
    caps = app_client(tmp_path, generator=True, segmenter={"backend": "sam3"}).get("/v1/capabilities").json()
    assert caps["segmenter"]["browser_decoding"] is True
    assert caps["segmenter"]["click_decoder_url"] == "/v1/models/sam3-click-decoder.onnx"
    assert set(caps["segmenter"]["routes"]) == {"/v1/segment", "/v1/embed", "/v1/models/sam3-click-decoder.onnx",
                                                "/v1/models/sam3-click-decoder.photo.onnx"}
    assert caps["text_to_3d"] == {"available": True, "reason": None}


def test_capabilities_without_segment_routes(tmp_path):
    caps = app_client(tmp_path, segment_router=None).get("/v1/capabilities").json()
    assert caps["segmenter"]["routes"] == [] and caps["segmenter"]["browser_decoding"] is False


# ------------------------------------------------------------------------------------ EXIF

def exif_rotated_jpeg(path: Path) -> Path:
    """coffee.png stored sideways with EXIF orientation 6 ("rotate 90° clockwise to show")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(DATA / "coffee.png").convert("RGB").transpose(Image.Transpose.ROTATE_90).save(
        path, quality=95, exif=exif.tobytes())
    return path


def test_upload_applies_exif_orientation(tmp_path):
    rgb, _ = decode_image(exif_rotated_jpeg(tmp_path / "p.jpg").read_bytes(), LimitsSettings())
    assert rgb.shape == (400, 600, 3)  # upright, as a browser shows it
    assert np.abs(rgb.astype(int) - photo_array("coffee")).mean() < 6  # JPEG noise only


# ------------------------------------------------------------------------------------ the page in Chromium

def _browser_missing() -> str | None:
    if NODE is None:
        return "node is not installed"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if not PLAYWRIGHT.is_dir():
        return "node_modules/playwright-core is missing (npm ci)"
    return None


@pytest.fixture(params=["grabcut", "sam3"])
def viewer_server(request, tmp_path):
    args = [sys.executable, str(ROOT / "tests" / "viewer_server.py"), str(tmp_path / "store")]
    if request.param == "sam3":
        pytest.importorskip("transformers")
        args.append("--sam3")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"viewer_server.py did not start:\n{proc.stderr.read()[-3000:]}")
        info = tmp_path / "server.json"
        info.write_text(line)
        yield request.param, info
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_viewer_in_chromium(viewer_server, tmp_path):
    mode, info = viewer_server
    shots = Path(os.environ.get("SAM3D_VIEWER_SCREENSHOTS") or tmp_path / "shots")
    if mode == "sam3":
        shots = shots / "sam3"
    proc = subprocess.run(
        [NODE, "tests/browser/viewer.mjs", str(info), str(DATA / "coffee.png"),
         str(exif_rotated_jpeg(tmp_path / "exif6.jpg")), str(shots)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "CHROMIUM": str(CHROMIUM)},
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no report from the browser script; stderr:\n{proc.stderr[-4000:]}"
    report = json.loads(lines[-1])
    failing = {k: v for k, v in report.get("checks", {}).items() if not v.get("ok")}
    assert proc.returncode == 0 and report["ok"], (
        f"failing checks: {json.dumps(failing, indent=1)[:6000]}\nstderr: {proc.stderr[-2000:]}"
    )
    checks = report["checks"]
    expected = {
        "capabilities_shape_the_page", "refusal_shows_server_message", "queue_position_shown", "click_shows_mask", "mask_overlay_drawn",
        "box_drag_gives_mask", "undo_restores_click", "complete", "voxel_instances_grow", "every_frame_drawn", "stages_done", "voxel_view_draws_last_frame", "mesh_preview_view",
        "glb_view_has_file_triangles", "splats_load_with_file_count", "meshopt_glb_loads",
        "resync_after_lost_frame", "resume_after_dropped_connection", "stop_ends_the_run", "exif_photo_upright", "no_page_errors",
        "only_the_deliberate_http_error", "no_request_leaves_the_host",
    }
    if mode == "sam3":
        expected |= {"browser_mask_matches_server", "label_segments_on_server"}
    assert expected <= checks.keys() and all(c["ok"] for c in checks.values())
    assert report["segment_mode"] == ("browser" if mode == "sam3" else "server")
    for name in ("voxels", "glb", "splats"):
        assert (shots / f"viewer-{name}.png").stat().st_size > 20_000  # real pictures, not empty pages


def test_static_route_refuses_paths_outside_static(tmp_path):
    """Raw request lines (no client-side normalisation of .. or %2F) against a live server."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "viewer_server.py"), str(tmp_path / "s")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        base = json.loads(proc.stdout.readline())["url"]
        assert _raw_get(base, "/static/vendor/three/LICENSE") == 200
        refused = {path: _raw_get(base, path) for path in TRAVERSALS}
        assert all(status in (400, 404) for status in refused.values()), refused
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_page_and_static_files_are_cross_origin_isolated(client):
    """COOP/COEP let onnxruntime-web use threads; the module workers need the same COEP."""
    for path in ("/", "/static/vendor/onnxruntime-web/ort.wasm.bundle.min.mjs"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.headers["cross-origin-opener-policy"] == "same-origin"
        assert r.headers["cross-origin-embedder-policy"] == "require-corp"
