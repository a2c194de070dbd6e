"""Calibration of the ViT's static FP8 scales (`vit_fp8_scaling: static`, fp8_linear.py).

Before its linear layers are swapped, the bf16 ViT runs eagerly on a few photos, one at a time, and
every FP8-suited linear records the largest |input| it saw. By default the photos are the four
everyday photos bundled with scikit-image (astronaut, coffee, chelsea, rocket); `vit_fp8_calibration`
names a local folder of the deployment's own photos instead (up to MAX_PHOTOS, in name order), for
inputs unlike those. Either way the ranges come from whatever weights are loaded: with random weights
they say nothing about real inputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sam3d_common.errors import ModelUnavailable

from .encoder import encode_core, upload_pixels
from .fp8_linear import record_input_amax
from .loading import Sam3Models

MAX_PHOTOS = 16
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def calibration_photos(folder: str | None) -> list[np.ndarray]:
    """RGB uint8 photos: the bundled four, or those in `folder`."""
    if folder is None:
        from skimage import data

        return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise ModelUnavailable(f"segmenter.sam3.vit_fp8_calibration: {folder} is not a folder")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES)[:MAX_PHOTOS]
    if not files:
        raise ModelUnavailable(f"segmenter.sam3.vit_fp8_calibration: no {'/'.join(SUFFIXES)} photo in {folder}")
    photos = []
    for path in files:
        try:
            with Image.open(path) as im:
                photos.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise ModelUnavailable(f"segmenter.sam3.vit_fp8_calibration: {path.name} is not a readable photo") from exc
    return photos


def calibrate_vit(models: Sam3Models, folder: str | None = None) -> dict[str, float]:
    """Largest |input| of each FP8-suited linear of the ViT over the calibration photos (eager, bf16)."""
    import torch

    backbone = models.detector.vision_encoder.backbone
    photos = calibration_photos(folder)

    def run():
        with torch.inference_mode():
            for photo in photos:
                encode_core(models, upload_pixels(models, [photo]))

    return record_input_amax(backbone, run)
