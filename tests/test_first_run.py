"""Regressions from a new user's first run (issue 12): images read as a viewer shows them,
user masks used as given, artifacts at the input's size, bounded segmenter work."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deployments.errors import BadInput
from serve_app import inputs
from serve_app.settings import LimitsSettings

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


@pytest.mark.parametrize("w,h", [(1, 1), (10000, 2), (15, 400)])
def test_too_small_images_say_so_with_the_minimum(w, h):
    data = _encode(Image.fromarray(np.full((h, w, 3), 90, np.uint8)), "PNG")
    with pytest.raises(BadInput) as info:
        inputs.decode_image(data, LIM)
    msg = info.value.message
    assert "too small" in msg and str(LIM.min_image_side) in msg and "prompt" not in msg
