"""Turning request bytes into arrays, with every failure a BadInput a client can read."""
from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from deployments.errors import BadInput
from serve_app.settings import LimitsSettings
from serve_app.url_fetch import fetch_image


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
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > limits.max_image_pixels:
                raise BadInput(f"{what} has {img.width}x{img.height} pixels; the limit is "
                               f"{limits.max_image_pixels} pixels")
            img.load()
    except BadInput:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError,
            OSError, SyntaxError, ValueError):
        raise BadInput(f"{what} is not a readable image (PNG, JPEG or WebP)") from None
    return img


def decode_image(data: bytes, limits: LimitsSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """(HxWx3 uint8 RGB, alpha mask or None). An alpha channel with transparency is a mask."""
    img = _open(data, "image", limits)
    alpha = None
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        a = np.asarray(img.convert("RGBA"))[:, :, 3]
        if (a < 128).any():
            alpha = a >= 128
    return np.asarray(img.convert("RGB")), alpha


def decode_mask(data: bytes, shape: tuple[int, int], limits: LimitsSettings, what: str = "mask") -> np.ndarray:
    img = _open(data, what, limits)
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
