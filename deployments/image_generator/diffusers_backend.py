"""Text-to-image with a diffusers pipeline (default `stabilityai/sdxl-turbo`, 4 steps, no CFG).

The pipeline is loaded once, at construction, through `AutoPipelineForText2Image.from_pretrained`
from `image_generator.local_dir` when set (a folder with `model_index.json`, as
`hf download <id> --local-dir DIR` or `save_pretrained` writes it), else from the hub id
`image_generator.model_id` (the Hugging Face cache, downloading if the hub is reachable).
Missing weights or a missing `diffusers` package raise ModelUnavailable at replica start,
with what is missing and how to get it.

Device and dtype: `auto` picks CUDA when present, in bfloat16 where the GPU supports it
(float16 otherwise), and float32 on CPU. Each `generate` call seeds its own CPU
`torch.Generator` from the request's seed (a fresh random seed when none is given), so a seed
reproduces an image and nothing touches torch's global RNG. Calls are serialised with a lock:
a diffusers pipeline keeps per-call state (the scheduler's timesteps) and is not thread-safe,
while the deployment runs `generate` in worker threads.
"""
from __future__ import annotations

import logging
import random
import threading

import numpy as np

from sam3d_common.errors import BadInput, ModelUnavailable
from sam3d_common.torch_device import resolve_device_dtype
from sam3d_common.settings import ImageGeneratorSettings
from sam3d_common.weights import hub_cache_repo, local_weights

log = logging.getLogger(__name__)

_SEED_SOURCE = random.SystemRandom()  # not the global RNG of random, numpy or torch


def _how_to_download(model_id: str) -> str:
    return (f"download it with `hf download {model_id} --local-dir /models/{model_id.split('/')[-1]}` "
            "(older huggingface_hub: `huggingface-cli download ...`) and set "
            "image_generator.local_dir to that folder, or let the replica reach the hub "
            "(gated models also need HF_TOKEN)")


class DiffusersGenerator:
    name = "diffusers"
    available = True

    def __init__(self, settings: ImageGeneratorSettings):
        self.settings = settings
        try:
            import diffusers
            from diffusers import AutoPipelineForText2Image
        except ImportError as exc:
            raise ModelUnavailable(
                f"image_generator.backend is 'diffusers' but the package cannot be imported "
                f"({exc}); install the model extras: pip install -e .[models]"
            ) from None
        import torch

        self._torch = torch
        self.device, self.dtype = resolve_device_dtype(settings.device, settings.dtype, "image_generator")
        if settings.local_dir:
            source = local_weights(settings.local_dir, "model_index.json", "image_generator.local_dir",
                                   f"image generator weights for {settings.model_id}",
                                   _how_to_download(settings.model_id))
            tried = str(source)
        else:
            source = settings.model_id
            tried = f"hub id {settings.model_id} (cache {hub_cache_repo(settings.model_id)})"
        kwargs = {"variant": settings.variant} if settings.variant else {}
        # diffusers renamed torch_dtype to dtype; older releases only know torch_dtype.
        major, minor = (int(p) for p in diffusers.__version__.split(".")[:2])
        kwargs["dtype" if (major, minor) >= (0, 36) else "torch_dtype"] = self.dtype
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(str(source), **kwargs)
        except Exception as exc:  # noqa: BLE001 - hub, file and config errors all mean "no model"
            raise ModelUnavailable(
                f"could not load the image generator {settings.model_id} from {tried}: "
                f"{type(exc).__name__}: {exc}; " + _how_to_download(settings.model_id)
            ) from None
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self._lock = threading.Lock()
        log.info("image generator %s loaded on %s (%s)", settings.model_id, self.device, self.dtype)

    def generate(self, prompt: str, seed: int | None) -> np.ndarray:
        """HxWx3 uint8 RGB, `settings.size` on each side."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise BadInput("the image prompt is empty")
        if seed is None:
            seed = _SEED_SOURCE.randrange(2**63)
        s = self.settings
        generator = self._torch.Generator(device="cpu").manual_seed(int(seed))
        with self._lock, self._torch.inference_mode():
            out = self.pipe(prompt=prompt, num_inference_steps=s.steps,
                            guidance_scale=s.guidance_scale, height=s.size, width=s.size,
                            generator=generator, output_type="np")
        image = np.asarray(out.images[0], dtype=np.float32)
        if not np.isfinite(image).all():  # an fp16 VAE overflow gives NaNs; say so, don't crash
            log.warning("image generator produced non-finite pixels; they are set to 0")
            image = np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
        return np.ascontiguousarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8))
