import base64
import os

import numpy as np
import pytest

from sam3d_common.errors import BadInput
from serve_app import inputs
from sam3d_common.settings import LimitsSettings
from sam3d_common.store import ArtifactNotFound, ArtifactStore, InvalidArtifactRef, new_artifact_id
from photos import photo_bytes, png

LIM = LimitsSettings()


def test_store_round_trip_and_atomic_write(tmp_path):
    s = ArtifactStore(str(tmp_path))
    aid = new_artifact_id()
    assert s.put(aid, "model.glb", b"x" * 10) == 10
    assert s.get(aid, "model.glb") == b"x" * 10
    assert os.listdir(tmp_path / aid) == ["model.glb"]  # no temporary file left behind
    with pytest.raises(ArtifactNotFound):
        s.get(aid, "splat.ply")


@pytest.mark.parametrize("aid,name", [
    ("../../etc", "passwd.png"), ("0" * 32, "../x.glb"), ("0" * 32, "x.exe"),
    ("0" * 32, "/abs.glb"), ("A" * 32, "model.glb"), ("0" * 32, ".hidden.glb"),
])
def test_store_rejects_unsafe_refs(tmp_path, aid, name):
    with pytest.raises(InvalidArtifactRef):
        ArtifactStore(str(tmp_path)).get(aid, name)


def test_store_works_through_fsspec_memory_url():
    s = ArtifactStore("memory://sam3d-test")
    aid = new_artifact_id()
    s.put(aid, "mask.png", b"png")
    assert s.get(aid, "mask.png") == b"png"


def test_decode_image_jpeg_png_and_alpha_mask():
    img, alpha = inputs.decode_image(photo_bytes("rocket"), LIM)
    assert img.shape == (427, 640, 3) and alpha is None
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:15, 10:20] = 255
    img, alpha = inputs.decode_image(png(rgba), LIM)
    assert img.shape == (20, 30, 3) and alpha.sum() == 100


def test_stray_transparent_pixels_are_not_a_mask():
    """An RGBA photo whose alpha is opaque but for a few pixels (skimage's horse.png has 4 of
    131,200 at alpha 110) is a photo, not a cut-out; from 1 % transparent on it is a mask."""
    rgba = np.full((100, 100, 4), 255, np.uint8)
    rgba[0, :4, 3] = 110
    assert inputs.decode_image(png(rgba), LIM)[1] is None
    rgba[:1, :, 3] = 0  # 100 of 10,000 pixels: 1 %
    alpha = inputs.decode_image(png(rgba), LIM)[1]
    assert alpha is not None and alpha.sum() == 9900
    rgba[:, :, 3] = 0  # nothing opaque: no object to take from it
    assert inputs.decode_image(png(rgba), LIM)[1] is None


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"), (b"GIF89a not really", "not a readable image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "not a readable"),
])
def test_decode_image_rejects_garbage(data, needle):
    with pytest.raises(BadInput) as info:
        inputs.decode_image(data, LIM)
    assert needle in info.value.message


def test_decode_image_limits():
    with pytest.raises(BadInput, match="limit"):
        inputs.decode_image(photo_bytes("coffee"), LimitsSettings(max_upload_bytes=1024))
    with pytest.raises(BadInput, match="pixels"):
        inputs.decode_image(photo_bytes("coffee"), LimitsSettings(max_image_pixels=10_000))


def test_mask_checks():
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:6] = 255
    assert inputs.decode_mask(png(m), (10, 12), LIM).sum() == 9
    with pytest.raises(BadInput, match="match the image size"):
        inputs.decode_mask(png(m), (12, 10), LIM)
    with pytest.raises(BadInput, match="empty"):
        inputs.decode_mask(png(np.zeros((10, 12), np.uint8)), (10, 12), LIM)


def test_fit_image_scales_large_photos_and_mask():
    img = np.zeros((1000, 3000, 3), np.uint8)
    mask = np.zeros((1000, 3000), bool)
    mask[400:600, 1000:2000] = True
    out, m, s = inputs.fit_image(img, mask, 1500)
    assert out.shape == (500, 1500, 3) and m.shape == (500, 1500) and s == 0.5
    assert m.sum() == pytest.approx(100 * 500, rel=0.02)


def test_b64_and_data_urls():
    raw = b"\x00\x01hello"
    assert inputs.b64_bytes(base64.b64encode(raw).decode(), "x") == raw
    assert inputs.b64_bytes("data:image/png;base64," + base64.b64encode(raw).decode(), "x") == raw
    with pytest.raises(BadInput, match="base64"):
        inputs.b64_bytes("not base64!!", "image_b64")


async def test_fetch_url_refuses_other_schemes():
    for url in ("file:///etc/passwd", "ftp://x/y.png", "/etc/passwd"):
        with pytest.raises(BadInput, match="http"):
            await inputs.fetch_url(url, LIM)
    with pytest.raises(BadInput, match="disabled"):
        await inputs.fetch_url("http://127.0.0.1:9/x.png", LimitsSettings(allow_image_urls=False))
