"""The SAM 3 stage of the graph: image + label/clicks/box/mask → object mask.

Beyond `segment` (what the graph calls), a SAM 3 replica serves the hybrid browser pattern: `embed`
encodes an image once (through the @serve.batch encoder) and returns the compact payload the browser's
ONNX decoder needs, `segment_cached` answers prompts from a cached embedding, and `click_decoder_onnx`
hands out the exported decoder. On the GrabCut backend those raise NotConfigured (HTTP 501).
"""
from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray import serve

from sam3d_common import metrics
from sam3d_common.errors import NotConfigured
from sam3d_common.settings import ConfigError, EncoderBatching, SegmenterSettings

from .base import Box, Point, SegmentPrompt, SegmentResult, SegmenterBackend
from .sam3.embedding_cache import EmbeddingNotFound

__all__ = [
    "Segmenter",
    "build_segmenter_app",
    "make_backend",
    "Box",
    "Point",
    "SegmentPrompt",
    "SegmentResult",
    "EmbeddingNotFound",
]
log = logging.getLogger(__name__)

# @serve.batch's max_concurrent_batches for the encoder (a decorator argument; Serve has no setter for it).
# Each batch holds its slot until its GPU work is done (sam3.encoder.finished): one batch runs on the GPU
# while the next is formed, copied to the device and queued behind it, so the GPU need not wait for the
# host between batches, and each batch is formed from the requests that arrived while the previous ran.
ENCODER_CONCURRENT_BATCHES = 2


def make_backend(settings: SegmenterSettings, batching: EncoderBatching | None = None) -> SegmenterBackend:
    if settings.backend == "grabcut":
        from .grabcut import GrabCutSegmenter

        return GrabCutSegmenter(settings.grabcut)
    if settings.backend == "sam3":
        from .sam3.backend import Sam3Segmenter

        return Sam3Segmenter(settings.sam3, max_batch_size=(batching or EncoderBatching()).max_batch_size)
    raise ValueError(f"unknown segmenter backend {settings.backend!r}")


def _in_replica() -> bool:
    """@serve.batch needs a replica context; plain instances and local testing mode have none."""
    try:
        serve.get_replica_context()
        return True
    except Exception:  # RayServeException outside a replica
        return False


def _deployment_config():
    """This replica's Serve deployment config, or None outside a replica."""
    try:
        return serve.get_replica_context()._deployment_config
    except Exception:  # RayServeException outside a replica
        return None


def _batching(user_config) -> EncoderBatching:
    """The user_config validated, and checked against max_ongoing_requests (ConfigError)."""
    try:
        batching = EncoderBatching.model_validate(user_config or {})
    except ValueError as exc:
        raise ConfigError(f"invalid Segmenter user_config: {exc}") from None
    config = _deployment_config()
    if config is not None and config.max_ongoing_requests < batching.max_batch_size:
        raise ConfigError(
            f"Segmenter max_ongoing_requests ({config.max_ongoing_requests}) is below user_config."
            f"max_batch_size ({batching.max_batch_size}): a batch could never fill. Raise "
            "max_ongoing_requests or lower max_batch_size.")
    return batching


@serve.deployment(name="Segmenter", max_ongoing_requests=16)
class Segmenter:
    def __init__(self, settings: dict | None = None):
        self.settings = SegmenterSettings.model_validate(settings or {})
        # Serve calls reconfigure with the user_config right after this; the backend is built
        # for it already, so that call compiles nothing.
        config = _deployment_config()
        batching = _batching(config.user_config if config is not None else None)
        self.backend = make_backend(self.settings, batching)
        self._inflight: dict[str, asyncio.Future] = {}
        self.reconfigure(batching.model_dump())
        metrics.gpu_memory("Segmenter")

    def reconfigure(self, user_config: dict) -> None:
        """Serve's user_config hook (EncoderBatching): encoder batch size and wait, no restart."""
        batching = _batching(user_config)
        sam = self._sam3_or_none()
        if sam is not None:
            sam.set_max_batch_size(batching.max_batch_size)
        self._encode_batched.set_max_batch_size(batching.max_batch_size)
        self._encode_batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    # ---- the graph's interface ----------------------------------------------------------------------

    async def segment(self, image: np.ndarray, prompt: SegmentPrompt,
                      sent_at: float | None = None) -> SegmentResult:
        """`sent_at`: the caller's time.time() when it sent the call (queue-wait metric)."""
        metrics.queue_wait("segmenter", sent_at)
        sam = self._sam3_or_none()
        if sam is None:
            # A thread keeps the replica's event loop free for health checks while OpenCV/torch run.
            return await asyncio.to_thread(self.backend.segment, image, prompt)
        from .sam3.backend import check_prompt, mask_only
        from .sam3.encoder import check_image

        check_prompt(prompt, image.shape[:2])  # once, before spending an encoder pass on a bad prompt
        if mask_only(prompt):
            check_image(image)
            return sam.given_mask(prompt)
        embedding, _ = await self._embedding(image)
        return await asyncio.to_thread(sam.answer, embedding, prompt)

    def describe(self) -> dict:
        describe = getattr(self.backend, "describe", None)
        return describe() if callable(describe) else {"backend": self.backend.name}

    def check_health(self) -> None:
        """Serve's periodic health check: also refreshes the GPU memory gauges."""
        metrics.gpu_memory("Segmenter")

    # ---- SAM 3 only: embeddings for the browser -----------------------------------------------------

    async def embed(self, image: np.ndarray, profile: str | None = None) -> dict:
        """Encode (or find cached) → id, sizes and the compact payload (embedding_codec format)."""
        sam = self._sam3("POST /v1/embed")
        embedding, encoded = await self._embedding(image)
        payload = await asyncio.to_thread(sam.embedding_payload, embedding, profile)
        return {
            "embedding_id": embedding.embedding_id,
            "original_size": list(embedding.original_size),
            "input_size": sam.input_size,
            "shapes": embedding.shapes(),
            "profile": profile or sam.settings.embedding_profile,
            "encoded": encoded,  # False: served from this replica's cache
            "payload": payload,
        }

    async def segment_cached(self, embedding_id: str, prompt: SegmentPrompt) -> SegmentResult:
        """A prompt against an embedding this replica holds; EmbeddingNotFound (404) if it holds none."""
        sam = self._sam3("segmenting by embedding_id")
        embedding = sam.cached(embedding_id)
        if embedding is None:
            raise EmbeddingNotFound(
                f"no embedding {embedding_id!r} here (unknown, or evicted from the cache); send the image again"
            )
        return await asyncio.to_thread(sam.segment_with_embedding, embedding, prompt)

    async def click_decoder_onnx(self, graph: str = "click") -> dict:
        """{filename, data}: the ONNX click decoder's click graph, or (graph="photo") the photo graph
        that the page runs once per photo to make the click graph's inputs; exported once per replica."""
        from .sam3.onnx_decoder import photo_graph_path

        sam = self._sam3("the click decoder model")
        path = await asyncio.to_thread(sam.click_decoder_path)
        if graph == "photo":
            path = photo_graph_path(path)
        return {"filename": path.name, "data": await asyncio.to_thread(path.read_bytes)}

    # ---- internals ----------------------------------------------------------------------------------

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=ENCODER_CONCURRENT_BATCHES)
    async def _encode_batched(self, items: list[tuple[str, np.ndarray]]) -> list:
        """One encoder pass over every image that arrived within the wait window (EncoderBatching),
        returned once the GPU has computed it (so the batch's slot is held while it runs)."""
        from .sam3.encoder import encode_until_done

        ids = [key for key, _ in items]
        images = [image for _, image in items]
        return await encode_until_done(self.backend.encode_batch, images, ids)

    async def _embedding(self, image: np.ndarray):
        """(ImageEmbedding, encoded now?) — the cache first, then one shared encoder run per image.

        The run is a task of its own: a request that is cancelled (client gone) does not cancel it for
        the others waiting on the same image, and its result still lands in the cache.
        """
        sam = self._sam3("image embeddings")
        key = await asyncio.to_thread(sam.image_id, image)
        found = sam.cached(key)
        if found is not None:
            return found, False
        task = self._inflight.get(key)
        owner = task is None
        if owner:
            task = asyncio.ensure_future(self._encode_and_store(sam, key, image))
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._encode_done(k, t))
        return await asyncio.shield(task), owner

    def _encode_done(self, key: str, task: asyncio.Task) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so a failure nobody waited for is not logged as lost

    async def _encode_and_store(self, sam, key: str, image: np.ndarray):
        if _in_replica():
            embedding = await self._encode_batched((key, image))
        else:
            embedding = (await asyncio.to_thread(sam.encode_batch, [image], [key]))[0]
        sam.remember(embedding)
        if _in_replica():
            try:  # tell Serve this replica holds the embedding, so requests naming it are routed here
                await self._announce(key)
            except Exception:  # noqa: BLE001 - routing is a preference; never fail a request over it
                log.debug("could not announce embedding %s", key, exc_info=True)
        return embedding

    @serve.multiplexed(max_num_models_per_replica=64)
    async def _announce(self, embedding_id: str) -> str:
        """Serve's multiplexing keeps the ids; requests with multiplexed_model_id=<id> prefer this replica."""
        return embedding_id

    def _sam3_or_none(self):
        return self.backend if hasattr(self.backend, "encode_batch") else None

    def _sam3(self, what: str):
        sam = self._sam3_or_none()
        if sam is None:
            raise NotConfigured(
                f"{what} needs the SAM 3 segmenter; this deployment runs the {self.backend.name!r} backend. "
                "Set `segmenter: {backend: sam3, sam3: {local_dir: /models/sam3}}` in the Serve config "
                "args (weights: facebook/sam3, gated on the Hugging Face hub; see docs/sam3.md)."
            )
        return sam


def build_segmenter_app(args: dict | None = None):
    """A Serve application of the Segmenter alone (import_path `deployments.segmenter:build_segmenter_app`,
    `args` = the `segmenter` settings block): for serving SAM 3 embeddings on their own, and for tests."""
    return Segmenter.bind(args or {})
