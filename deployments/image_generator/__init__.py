"""Image generator: image prompt → RGB photo of one object (text route only)."""
from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np
from ray import serve

from sam3d_common import metrics
from sam3d_common.settings import ImageGeneratorSettings


class ImageGeneratorBackend(Protocol):
    name: str
    available: bool

    def generate(self, prompt: str, seed: int | None) -> np.ndarray:
        """HxWx3 uint8 RGB."""
        ...


def make_backend(settings: ImageGeneratorSettings) -> ImageGeneratorBackend:
    if settings.backend == "none":
        from .unavailable import NoImageGenerator

        return NoImageGenerator()
    if settings.backend == "diffusers":
        from .diffusers_backend import DiffusersGenerator

        return DiffusersGenerator(settings)
    raise ValueError(f"unknown image generator backend {settings.backend!r}")


@serve.deployment(name="ImageGenerator", max_ongoing_requests=2)
class ImageGenerator:
    def __init__(self, settings: dict | None = None):
        self.backend = make_backend(ImageGeneratorSettings.model_validate(settings or {}))
        metrics.gpu_memory("ImageGenerator")

    async def generate(self, prompt: str, seed: int | None = None) -> np.ndarray:
        return await asyncio.to_thread(self.backend.generate, prompt, seed)

    def describe(self) -> dict:
        return {"backend": self.backend.name, "available": self.backend.available}

    def check_health(self) -> None:
        """Serve's periodic health check: also refreshes the GPU memory gauges."""
        metrics.gpu_memory("ImageGenerator")
