"""StageClients over Ray Serve DeploymentHandles (the production wiring of the pipeline)."""
from __future__ import annotations

import time
from typing import AsyncIterator

import numpy as np

from deployments.mesh_baker.bake import BakeOptions
from deployments.reconstructor.base import Reconstruction, ReconstructOptions
from deployments.segmenter.base import SegmentPrompt
from sam3d_common.store import ArtifactStore


class HandleClients:
    def __init__(self, prompt_enhancer, image_generator, segmenter, reconstructor, mesh_baker,
                 store: ArtifactStore):
        self.prompt_enhancer = prompt_enhancer
        self.image_generator = image_generator
        self.segmenter = segmenter
        self.reconstructor = reconstructor
        self.mesh_baker = mesh_baker
        self.store = store

    async def enhance(self, text: str):
        return await self.prompt_enhancer.enhance.remote(text)

    async def generate_image(self, prompt: str, seed: int | None) -> np.ndarray:
        return await self.image_generator.generate.remote(prompt, seed)

    async def describe_image_generator(self) -> dict:
        return await self.image_generator.describe.remote()

    async def segment(self, image: np.ndarray, prompt: SegmentPrompt):
        return await self.segmenter.segment.remote(image, prompt, sent_at=time.time())

    async def reconstruct(self, image: np.ndarray, mask: np.ndarray,
                          options: ReconstructOptions) -> AsyncIterator:
        import ray

        # Our actor id, so the reconstructor stops if this replica dies mid-stream.
        caller = ray.get_runtime_context().get_actor_id()
        gen = self.reconstructor.options(stream=True).stream.remote(image, mask, options, caller,
                                                                    sent_at=time.time())
        try:
            async for item in gen:
                yield item
        finally:
            # Closing early (disconnect, timeout, error) must free the GPU replica now.
            gen.cancel()

    async def bake(self, recon: Reconstruction, artifact_id: str, options: BakeOptions):
        return await self.mesh_baker.bake.remote(recon, artifact_id, options, sent_at=time.time())

    async def bake_texture(self, recon: Reconstruction, artifact_id: str, options: BakeOptions):
        return await self.mesh_baker.bake_texture.remote(recon, artifact_id, options)

    async def put_artifact(self, artifact_id: str, name: str, data: bytes) -> int:
        return self.store.put(artifact_id, name, data)

    async def describe(self) -> dict:
        out = {}
        for name in ("prompt_enhancer", "image_generator", "segmenter", "reconstructor"):
            out[name] = await getattr(self, name).describe.remote()
        return out
