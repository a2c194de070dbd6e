"""The embedded default: no text-to-image model can run without weights, so say so clearly."""
from __future__ import annotations

import numpy as np

from sam3d_common.errors import NotConfigured

MESSAGE = (
    "text-to-3D needs an image generator, and this deployment runs the embedded default, "
    "which has none. Send a photo instead (multipart `image`, `image_b64` or `image_url`), "
    "or configure `image_generator: {backend: diffusers, model_id: ...}` in the Serve config "
    "(see serve_config.yaml)."
)


class NoImageGenerator:
    name = "none"
    available = False

    def generate(self, prompt: str, seed: int | None) -> np.ndarray:
        raise NotConfigured(MESSAGE)
