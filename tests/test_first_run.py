"""Regressions from a new user's first run (issue 12): images read as a viewer shows them,
user masks used as given, artifacts at the input's size, bounded segmenter work."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sam3d_common.errors import BadInput
from serve_app import inputs
from sam3d_common.settings import LimitsSettings

LIM = LimitsSettings()


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _marked(w: int = 60, h: int = 40) -> np.ndarray:
    """A grey image with a red block in its top-left corner, to tell orientations apart."""
    a = np.full((h, w, 3), 128, np.uint8)
    a[:10, :10] = (255, 0, 0)
    return a


def test_exif_orientation_is_applied_on_arrival():
    raw = _marked()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display", as phones write portrait photos
    data = _encode(Image.fromarray(raw), "JPEG", exif=exif, quality=95)
    img, _ = inputs.decode_image(data, LIM)
    assert img.shape == (60, 40, 3)  # upright: portrait
    # Rotating clockwise moves the top-left corner to the top-right.
    assert img[:8, -8:, 0].mean() > 200 and img[:8, :8, 0].mean() < 160


@pytest.mark.parametrize("mode,values", [
    ("I;16", (1000, 3000)), ("I", (-50_000, 200_000)), ("F", (0.0, 0.01)),
])
def test_high_bit_depth_scaled_by_its_range(mode, values):
    lo, hi = values
    ramp = np.linspace(lo, hi, 64 * 48).reshape(48, 64)
    if mode == "I;16":
        pil = Image.fromarray(ramp.astype(np.uint16))  # mode I;16
        data = _encode(pil, "PNG")
    elif mode == "I":
        data = _encode(Image.fromarray(ramp.astype(np.int32), mode="I"), "TIFF")
    else:
        data = _encode(Image.fromarray(ramp.astype(np.float32), mode="F"), "TIFF")
    img, _ = inputs.decode_image(data, LIM)
    assert img.dtype == np.uint8 and img.shape == (48, 64, 3)
    assert img.min() <= 1 and img.max() >= 254  # the full range, not all white
    assert img[0, 0, 0] < img[24, 32, 0] < img[-1, -1, 0]


def test_gif_first_frame_and_accepted_formats_named():
    frames = [Image.fromarray(np.full((32, 32, 3), c, np.uint8)) for c in (30, 220)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    img, _ = inputs.decode_image(data, LIM)
    assert img.shape == (32, 32, 3) and img.mean() < 60
    with pytest.raises(BadInput) as info:
        inputs.decode_image(b"definitely not an image", LIM)
    for fmt in ("PNG", "JPEG", "WebP", "GIF"):
        assert fmt in info.value.message


@pytest.mark.parametrize("fmt", ["MPO", "WEBP", "BMP", "TIFF"])
def test_other_common_formats_decode(fmt):
    """MPO: the multi-picture JPEG many phone cameras write; the first picture is the photo."""
    first, second = (Image.fromarray(np.full((40, 60, 3), c, np.uint8)) for c in (100, 200))
    kw = {"save_all": True, "append_images": [second]} if fmt == "MPO" else {}
    img, _ = inputs.decode_image(_encode(first, fmt, **kw), LIM)
    assert img.shape == (40, 60, 3) and abs(float(img.mean()) - 100) < 3


@pytest.mark.parametrize("w,h", [(1, 1), (10000, 2), (15, 400)])
def test_too_small_images_say_so_with_the_minimum(w, h):
    data = _encode(Image.fromarray(np.full((h, w, 3), 90, np.uint8)), "PNG")
    with pytest.raises(BadInput) as info:
        inputs.decode_image(data, LIM)
    msg = info.value.message
    assert "too small" in msg and str(LIM.min_image_side) in msg and "prompt" not in msg


# ---- through the routes, in-process (no Ray) ---------------------------------------------------

FAST = {"reconstructor": {"grid_size": 32, "inflation": {"geometry_steps": 3, "appearance_steps": 2}},
        "segmenter": {"grabcut": {"max_side": 160, "iterations": 2}}}


def _client(tmp_path, **limits):
    from fastapi.testclient import TestClient

    from serve_app.ingress import build_fastapi_app
    from serve_app.local import LocalClients
    from serve_app.service import GenerateService
    from sam3d_common.settings import load_settings
    from sam3d_common.store import ArtifactStore

    settings = load_settings({**FAST, "store": {"url": str(tmp_path)}, "limits": limits})
    store = ArtifactStore(str(tmp_path))
    return TestClient(build_fastapi_app(GenerateService(settings, LocalClients(settings, store), store)))


def _events(resp):
    from serve_app.protocol import parse_sse

    assert resp.status_code == 200, resp.text
    return parse_sse(resp.text)


def _found(evs):
    return next(e for e in evs if e["stage"] == "segmenter" and e["step"] == 1)


def _mask_png(client, evs) -> np.ndarray:
    r = client.get(f"/v1/artifacts/{evs[0]['request_id']}/mask.png")
    assert r.status_code == 200
    return np.asarray(Image.open(io.BytesIO(r.content))) >= 128


def _cup_with_alpha():
    from photos import photo_array

    rgba = np.dstack([photo_array("coffee"), np.zeros((400, 600), np.uint8)])
    rgba[60:340, 120:430, 3] = 255  # a box: GrabCut would cut the cup's outline out of it
    return rgba


def test_alpha_mask_is_used_as_given_unless_refinement_is_asked(tmp_path):
    client = _client(tmp_path)
    rgba = _cup_with_alpha()
    data = _encode(Image.fromarray(rgba), "PNG")
    evs = _events(client.post("/v1/generate", files=[("image", ("cup.png", data))]))
    found = _found(evs)
    assert found["segmenter"] == "user_mask" and "score" not in found
    assert evs[-1]["type"] == "complete"
    assert (_mask_png(client, evs) == (rgba[:, :, 3] >= 128)).all()  # exactly the alpha
    refined = _events(client.post("/v1/generate", files=[("image", ("cup.png", data))],
                                  data={"refine_mask": "true"}))
    assert _found(refined)["segmenter"] == "grabcut"
    assert (_mask_png(client, refined) != (rgba[:, :, 3] >= 128)).any()


def test_mask_b64_is_used_as_given(tmp_path):
    import base64

    from photos import photo_bytes

    client = _client(tmp_path)
    mask = (_cup_with_alpha()[:, :, 3] >= 128)
    body = {"image_b64": base64.b64encode(photo_bytes("coffee")).decode(),
            "mask_b64": [base64.b64encode(_encode(Image.fromarray(mask.astype(np.uint8) * 255), "PNG")).decode()]}
    evs = _events(client.post("/v1/generate", json=body))
    assert _found(evs)["segmenter"] == "user_mask"
    assert (_mask_png(client, evs) == mask).all()


def test_a_sent_mask_wins_over_the_photos_alpha(tmp_path):
    """The viewer sends the photo (alpha and all) with the mask the person saw: that mask is
    the object, not its union with the alpha."""
    import base64

    client = _client(tmp_path)
    rgba = _cup_with_alpha()
    mask = np.zeros(rgba.shape[:2], bool)
    mask[150:250, 200:350] = True  # inside the alpha's box, much smaller
    body = {"image_b64": base64.b64encode(_encode(Image.fromarray(rgba), "PNG")).decode(),
            "mask_b64": [base64.b64encode(_encode(Image.fromarray(mask.astype(np.uint8) * 255), "PNG")).decode()]}
    evs = _events(client.post("/v1/generate", json=body))
    assert _found(evs)["segmenter"] == "user_mask"
    assert (_mask_png(client, evs) == mask).all()


def test_mask_png_comes_back_at_the_input_size(tmp_path):
    from photos import photo_bytes

    client = _client(tmp_path, max_image_side=256)  # the 600x400 photo is worked on at 256x171
    evs = _events(client.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))]))
    assert evs[-1]["type"] == "complete"
    m = _mask_png(client, evs)
    assert m.shape == (400, 600) and m[200, 250] and not m[5, 5]


def test_grabcut_reports_no_score_rather_than_zero(tmp_path):
    from photos import photo_bytes

    client = _client(tmp_path)
    evs = _events(client.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))]))
    found = _found(evs)
    assert found["segmenter"] == "grabcut" and "score" not in found


# ---- bounded, faster embedded stages ------------------------------------------------------------

def _count_grabcut(monkeypatch):
    """Count GrabCut's cuts (one per iteration, one more for the edge at the working size)."""
    from deployments.segmenter import graphcut

    calls = []
    real = graphcut.MinCut.solve

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(graphcut.MinCut, "solve", counting)
    return calls


def test_grabcut_work_is_bounded_by_its_time_budget(monkeypatch):
    from deployments.segmenter.base import SegmentPrompt
    from deployments.segmenter.grabcut import GrabCutSegmenter
    from photos import photo_array
    from sam3d_common.settings import GrabCutSettings

    calls = _count_grabcut(monkeypatch)
    seg = GrabCutSegmenter(GrabCutSettings(iterations=20, stable_fraction=0, time_budget_s=1e-6))
    assert seg.segment(photo_array("coffee"), SegmentPrompt()).mask.any()
    assert len(calls) == 2  # the budget was spent after the first iteration; then the edge


def test_grabcut_stops_when_the_mask_is_stable_with_the_same_mask(monkeypatch):
    from deployments.segmenter.base import SegmentPrompt
    from deployments.segmenter.grabcut import GrabCutSegmenter
    from photos import photo_array
    from sam3d_common.settings import GrabCutSettings

    img = photo_array("coffee")
    full = GrabCutSegmenter(GrabCutSettings(iterations=8, stable_fraction=0)).segment(img, SegmentPrompt()).mask
    calls = _count_grabcut(monkeypatch)
    early = GrabCutSegmenter(GrabCutSettings(iterations=8, stable_fraction=0.002)).segment(img, SegmentPrompt()).mask
    assert len(calls) < 8 + 1
    assert (early & full).sum() / (early | full).sum() > 0.99


def test_vectorised_relaxation_equals_plain_gauss_seidel():
    from deployments.reconstructor.inflation import relax

    rng = np.random.default_rng(0)
    inside = np.zeros((20, 24), bool)
    inside[3:17, 4:21] = rng.random((14, 17)) > 0.2
    u0 = (rng.random((20, 24)) * inside).astype(np.float32)
    ref = u0.astype(np.float64)
    for _ in range(7):
        for parity in (0, 1):
            for i in range(20):
                for j in range(24):
                    if inside[i, j] and (i + j) % 2 == parity:
                        nb = sum(ref[a, b] for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                                 if 0 <= a < 20 and 0 <= b < 24)
                        ref[i, j] += 1.5 * ((nb + 1.0) / 4 - ref[i, j])
    np.testing.assert_allclose(relax(u0, inside, 7, omega=1.5), ref, rtol=1e-4, atol=1e-4)


# ---- command lines: one-line errors --------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["--image", "rocket-that-is-not-here.jpg"], "cannot read the image"),
    (["--image", "x.jpg", "--box", "1,2,3"], "--box"),
    (["--image", "x.jpg", "--click", "a,b"], "--click"),
])
def test_client_errors_are_one_line(argv, needle, capsys):
    from serve_app.client import main

    assert main(argv + ["--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_launcher_errors_are_one_line(tmp_path, capsys):
    from serve_app.launch import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("http_options: {port: 8000}\n")
    for argv, needle in ((["no-such-config.yaml"], "cannot read"), ([str(bad)], "applications")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err


def test_docs_page_works_offline(tmp_path):
    import re

    client = _client(tmp_path)
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    refs += re.findall(r"""url:\s*['"]([^'"]+)['"]""", page.text)
    assert refs and not [r for r in refs if "//" in r]  # nothing from another host
    for ref in refs:
        r = client.get(ref)
        assert r.status_code == 200 and len(r.content) > 100, ref
    assert client.get("/docs-assets/LICENSE").status_code == 404  # only the listed assets


# ---- light install ------------------------------------------------------------------------------

MODEL_PACKAGES = ("torch", "transformers", "diffusers", "onnx", "onnxruntime", "accelerate")

_WITHOUT_MODELS = r'''
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (light install)")
sys.meta_path.insert(0, Block())
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
import tempfile, yaml
from fastapi.testclient import TestClient
import serve_app.app, serve_app.launch  # what `serve run` / sam3d-serve import
from serve_app.ingress import build_fastapi_app
from serve_app.local import LocalClients
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore
from photos import photo_bytes
args = yaml.safe_load(open(sys.argv[2] + "/serve_config.local.yaml"))["applications"][0]["args"]
args["store"] = {"url": tempfile.mkdtemp()}
args["reconstructor"].update(grid_size=32, inflation={"geometry_steps": 2, "appearance_steps": 1})
s = load_settings(args)
store = ArtifactStore(args["store"]["url"])
c = TestClient(build_fastapi_app(GenerateService(s, LocalClients(s, store), store)))
r = c.post("/v1/generate", files=[("image", ("c.png", photo_bytes("coffee")))])
assert r.status_code == 200 and "event: complete" in r.text, r.text[-500:]
from deployments import image_generator, segmenter
from sam3d_common import settings as S
for make, cfg in ((segmenter.make_backend, S.SegmenterSettings(backend="sam3")),
                  (image_generator.make_backend, S.ImageGeneratorSettings(backend="diffusers"))):
    try:
        make(cfg)
    except Exception as exc:  # the model backends say how to install what they need
        assert "[models]" in str(exc), f"{cfg.backend}: {exc}"
    else:
        raise AssertionError(f"{cfg.backend} constructed without torch")
print("OK")
'''


def test_embedded_graph_runs_without_the_model_packages():
    """`pip install -e .` installs no torch: the local config must not import it (or any model library)."""
    import subprocess
    import sys
    import tomllib

    from conftest import ROOT

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.split("=")[0].split(">")[0].split("[")[0] in MODEL_PACKAGES]
    out = subprocess.run([sys.executable, "-c", _WITHOUT_MODELS, ",".join(MODEL_PACKAGES), str(ROOT)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-2000:]
