"""The application builder: Serve config `args` → validated settings → bound graph.

`serve run serve_config.local.yaml` imports `serve_app.app:build_app`.
"""
from __future__ import annotations

import os
from typing import AsyncIterator

import numpy as np
from ray import serve

from deployments.image_generator import ImageGenerator
from deployments.mesh_baker import MeshBaker
from deployments.prompt_enhancer import PromptEnhancer
from deployments.reconstructor import Reconstructor
from deployments.segmenter import Segmenter
from serve_app.handles import HandleClients
from serve_app.schemas import GenerateRequest
from serve_app.prepare import prepare_job
from serve_app.run import start_run
from serve_app.service import GenerateService
from sam3d_common.settings import ConfigError, load_settings
from sam3d_common.store import ArtifactStore
from serve_app.wire import encode_and_pace


@serve.deployment(name="JobManager", num_replicas=1, max_ongoing_requests=10_000)
class JobManagerDeployment:
    """Every job of the app in one place (serve_app/jobs.py), whichever ingress replica took
    it: jobs run here as asyncio tasks over the same stage handles as /v1/generate. Keep it at
    one replica; it does no heavy work itself."""

    def __init__(self, prompt_enhancer, image_generator, segmenter, reconstructor, mesh_baker,
                 settings: dict):
        from serve_app.jobs import JobManager

        self.settings = load_settings(settings)
        store = ArtifactStore(self.settings.store.url)
        clients = HandleClients(prompt_enhancer, image_generator, segmenter, reconstructor,
                                mesh_baker, store)
        self.jobs = JobManager(clients, store, self.settings)

    async def submit(self, job, fields: dict) -> dict:
        return await self.jobs.submit(job, fields)

    async def status(self, job_id: str) -> dict:
        return await self.jobs.status(job_id)

    async def cancel(self, job_id: str) -> dict:
        return await self.jobs.cancel(job_id)

    async def events(self, job_id: str, after: int = -1) -> AsyncIterator[dict]:
        async for ev in self.jobs.events(job_id, after):
            yield ev


@serve.deployment(name="Ingress", max_ongoing_requests=64)
@serve.ingress()
class Ingress:
    def __init__(self, prompt_enhancer, image_generator, segmenter, reconstructor, mesh_baker,
                 settings: dict, jobs=None):
        self.settings = load_settings(settings)
        store = ArtifactStore(self.settings.store.url, ttl_s=self.settings.store.ttl_s)
        clients = HandleClients(prompt_enhancer, image_generator, segmenter, reconstructor,
                                mesh_baker, store)
        self.service = GenerateService(self.settings, clients, store)
        self._segmenter = segmenter
        self._jobs = jobs

    def __serve_build_asgi_app__(self):
        from serve_app.ingress import build_fastapi_app
        from serve_app.routes_jobs import JobsHandleAdapter
        from serve_app.routes_segment import SegmenterHandleAdapter

        jobs = JobsHandleAdapter(self._jobs) if self._jobs is not None else None
        return build_fastapi_app(self.service, SegmenterHandleAdapter(self._segmenter), jobs)

    async def generate(self, request: dict, image: np.ndarray | None = None) -> AsyncIterator[dict]:
        """The Python API: `handle.options(stream=True).generate.remote({...}, image=array)`.

        `request` takes the JSON fields of POST /v1/generate; `image` an HxWx3 uint8 array.
        Yields the same events as the HTTP stream (frames encoded in `request["encoding"]`).
        Bad input raises sam3d_common.errors.BadInput before the first event.
        """
        req = GenerateRequest.model_validate(request)
        job = await prepare_job(self.service, req, image_array=image)
        run = await start_run(self.service, job)
        try:
            async for event in encode_and_pace(run, job.encoding, "python", self.settings.stream):
                yield event
        finally:  # ended, or the caller went away (Serve cancels this generator)
            await run.close()

    async def describe(self) -> dict:
        return await self.service.clients.describe()


def build_app(args: dict | None = None):
    """Validate `args` (raises ConfigError naming each bad key) and bind the graph."""
    settings = load_settings(args)
    raw = settings.model_dump()
    url = raw["store"]["url"]
    if "://" not in url:
        # Replicas may start in another working directory; pin the folder the operator meant.
        raw["store"]["url"] = os.path.abspath(url)
    jobs_url = raw["jobs"]["store_url"]
    if jobs_url is None and "://" in url and not url.startswith("file://"):
        raise ConfigError("invalid sam3d-serve configuration:\n  args.jobs.store_url: must be set "
                          f"(redis://host:port/db) when store.url is not a local folder ({url})")
    if jobs_url and jobs_url.startswith("sqlite:///") and not jobs_url.startswith("sqlite:////"):
        raw["jobs"]["store_url"] = "sqlite:///" + os.path.abspath(jobs_url.removeprefix("sqlite:///"))
    stages = (
        PromptEnhancer.bind(raw["prompt_enhancer"]),
        ImageGenerator.bind(raw["image_generator"]),
        Segmenter.bind(raw["segmenter"]),
        Reconstructor.bind(raw["reconstructor"]),
        MeshBaker.bind(raw["mesh_baker"], raw["store"]),
    )
    return Ingress.bind(*stages, raw, JobManagerDeployment.bind(*stages, raw))
