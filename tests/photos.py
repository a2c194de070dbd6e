"""Real photos that ship with scikit-image, as encoded files the way a user would send them."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import skimage
from PIL import Image

DATA = Path(skimage.__file__).parent / "data"

# The rocket on its pad: a box around it (pixels of rocket.jpg, 640x427).
ROCKET_BOX = {"x_min": 285, "y_min": 110, "x_max": 345, "y_max": 415}


def photo_bytes(name: str) -> bytes:
    """coffee, chelsea, astronaut, coins (PNG) or rocket (JPEG), as the files on disk."""
    for ext in (".png", ".jpg"):
        path = DATA / f"{name}{ext}"
        if path.exists():
            return path.read_bytes()
    raise FileNotFoundError(name)


def photo_array(name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(photo_bytes(name))).convert("RGB"))


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
