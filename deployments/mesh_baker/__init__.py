"""Mesh baker: final volume → mesh preview, GLB and Gaussian-splat PLY in the artifact store."""
from __future__ import annotations

import asyncio

from ray import serve

from sam3d_common import metrics
from sam3d_common.settings import MeshBakerSettings, StoreSettings
from sam3d_common.store import ArtifactStore

from ..reconstructor.base import Reconstruction
from .bake import BakeOptions, BakeResult, MeshBakerBackend

__all__ = ["MeshBaker", "BakeOptions", "BakeResult", "MeshBakerBackend"]


@serve.deployment(name="MeshBaker", max_ongoing_requests=4)
class MeshBaker:
    def __init__(self, settings: dict | None = None, store: dict | None = None):
        self.backend = MeshBakerBackend(
            MeshBakerSettings.model_validate(settings or {}),
            ArtifactStore(StoreSettings.model_validate(store or {}).url),
        )

    async def bake(self, recon: Reconstruction, artifact_id: str,
                   options: BakeOptions | None = None, sent_at: float | None = None) -> BakeResult:
        """`sent_at`: the caller's time.time() when it sent the call (queue-wait metric)."""
        metrics.queue_wait("mesh_baker", sent_at)
        return await asyncio.to_thread(self.backend.bake, recon, artifact_id, options)

    async def bake_texture(self, recon: Reconstruction, artifact_id: str,
                           options: BakeOptions) -> int | None:
        return await asyncio.to_thread(self.backend.bake_texture, recon, artifact_id, options)
