"""StageClients that call the backends in this process: the graph without Ray.

Used by tests of the routes and pipeline, and handy for debugging a backend.
"""
from __future__ import annotations

import asyncio

from deployments.image_generator import make_backend as make_generator
from deployments.mesh_baker.bake import MeshBakerBackend
from deployments.prompt_enhancer import make_backend as make_enhancer
from deployments.reconstructor import make_backend as make_reconstructor
from deployments.segmenter import make_backend as make_segmenter
from sam3d_common.settings import AppSettings
from sam3d_common.store import ArtifactStore


class LocalClients:
    def __init__(self, settings: AppSettings, store: ArtifactStore):
        self.enhancer = make_enhancer(settings.prompt_enhancer)
        self.generator = make_generator(settings.image_generator)
        self.segmenter = make_segmenter(settings.segmenter)
        self.reconstructor = make_reconstructor(settings.reconstructor)
        self.baker = MeshBakerBackend(settings.mesh_baker, store)
        self.store = store

    async def enhance(self, text):
        return await self.enhancer.enhance(text)

    async def generate_image(self, prompt, seed):
        return await asyncio.to_thread(self.generator.generate, prompt, seed)

    async def describe_image_generator(self):
        return {"backend": self.generator.name, "available": self.generator.available}

    async def segment(self, image, prompt):
        return await asyncio.to_thread(self.segmenter.segment, image, prompt)

    def reconstruct(self, image, mask, options):
        return self.reconstructor.stream(image, mask, options)

    async def bake(self, recon, artifact_id, options):
        return await asyncio.to_thread(self.baker.bake, recon, artifact_id, options)

    async def bake_texture(self, recon, artifact_id, options):
        return await asyncio.to_thread(self.baker.bake_texture, recon, artifact_id, options)

    async def put_artifact(self, artifact_id, name, data):
        return self.store.put(artifact_id, name, data)
