"""Turning request bytes into arrays, with every failure a BadInput a client can read.

Every image is read the way a viewer shows it: EXIF orientation applied (a phone's portrait
JPEG arrives upright, the same way browsers draw it, so clicks made on the page land where
they were made), the first frame of an animation, and high-bit-depth greyscale (16-bit
PNG/TIFF, 32-bit integer or float) scaled to 8 bits by the range it actually uses.
"""
from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sam3d_common.errors import BadInput
from sam3d_common.settings import LimitsSettings
from serve_app.url_fetch import fetch_image

# What PIL decodes here without plugins; named in the message for anything else.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED = "PNG, JPEG, WebP, GIF (first frame), BMP or TIFF"
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def b64_bytes(text: str, what: str) -> bytes:
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{what} is not valid base64") from None


def _open(data: bytes, what: str, limits: LimitsSettings) -> Image.Image:
    if not data:
        raise BadInput(f"{what} is empty")
    if len(data) > limits.max_upload_bytes:
        raise BadInput(f"{what} is {len(data)} bytes; the limit is {limits.max_upload_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            if img.width * img.height > limits.max_image_pixels:
                raise BadInput(f"{what} has {img.width}x{img.height} pixels; the limit is "
                               f"{limits.max_image_pixels} pixels")
            img.seek(0)  # animations: the first frame
            img.load()
            img = ImageOps.exif_transpose(img)
    except BadInput:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError,
            OSError, SyntaxError, ValueError, EOFError):
        raise BadInput(f"{what} is not a readable image; accepted formats: {ACCEPTED}") from None
    return img


def _eight_bit(img: Image.Image) -> Image.Image:
    """High-bit-depth greyscale → 8-bit "L", stretched over the values present (PIL's own
    conversion clips 16-bit values at 255, which turns a normal 16-bit photo white)."""
    if img.mode not in _HIGH_BIT_MODES:
        return img
    a = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        raise BadInput("image has no finite pixel values")
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.where(finite, a, lo)
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")


def check_size(image: np.ndarray, limits: LimitsSettings, what: str = "image") -> None:
    h, w = image.shape[:2]
    if min(h, w) < limits.min_image_side:
        raise BadInput(f"{what} is {w}x{h} pixels, too small: each side needs at least "
                       f"{limits.min_image_side} pixels")


# An alpha channel is a cut-out (the object's mask) only when at least this share of the
# pixels is transparent: photos saved as RGBA often carry a few stray transparent pixels
# (skimage's horse.png: 4 of 131,200), and taking those for a mask makes the whole frame the
# object.
MIN_TRANSPARENT_SHARE = 0.01


def decode_image(data: bytes, limits: LimitsSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """(HxWx3 uint8 RGB, alpha mask or None). An alpha channel is a mask when it makes a
    cut-out: some pixels opaque and at least MIN_TRANSPARENT_SHARE of them transparent."""
    img = _eight_bit(_open(data, "image", limits))
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        opaque = np.asarray(img.convert("RGBA"))[:, :, 3] >= 128
        if opaque.any() and 1.0 - opaque.mean() >= MIN_TRANSPARENT_SHARE:
            alpha = opaque
    rgb = np.asarray(img.convert("RGB"))
    check_size(rgb, limits)
    return rgb, alpha


def decode_mask(data: bytes, shape: tuple[int, int], limits: LimitsSettings, what: str = "mask") -> np.ndarray:
    img = _eight_bit(_open(data, what, limits))
    if (img.height, img.width) != tuple(shape):
        raise BadInput(f"{what} is {img.width}x{img.height} but the image is {shape[1]}x{shape[0]}; "
                       "masks must match the image size")
    if img.mode in ("RGBA", "LA"):
        arr = np.asarray(img.convert("RGBA"))
        m = arr[:, :, 3] >= 128
        if m.all():  # opaque RGBA: the colour channels carry the mask
            m = arr[:, :, :3].max(axis=2) >= 128
    else:
        m = np.asarray(img.convert("L")) >= 128
    if not m.any():
        raise BadInput(f"{what} is empty: no pixel is set (object pixels must be ≥ 128)")
    return m


def fit_image(image: np.ndarray, mask: np.ndarray | None, max_side: int):
    """Scale large photos down once on arrival; the mask follows with nearest neighbour."""
    h, w = image.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return image, mask, 1.0
    size = (max(1, round(w * s)), max(1, round(h * s)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) >= 128
    return image, mask, s


def at_size(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """A working-size mask back at the photo's (width, height), edges interpolated."""
    if size is None or (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    up = Image.fromarray(mask.astype(np.uint8) * 255).resize(tuple(size), Image.Resampling.BILINEAR)
    return np.asarray(up) >= 128


async def fetch_url(url: str, limits: LimitsSettings) -> bytes:
    """data: inline, http(s) through the SSRF-safe fetcher; no file:// or other schemes."""
    if url.startswith("data:"):
        return b64_bytes(url, "image_url")
    if not url.startswith(("http://", "https://")):
        raise BadInput("image_url must be an http(s) or data: URL")
    if not limits.allow_image_urls:
        raise BadInput("image_url is disabled on this deployment; upload the image instead")
    return await fetch_image(url, limits)


def png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()
