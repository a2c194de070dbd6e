"""SAM 3 segmenter backend (transformers 5.x): text, clicks, boxes and their combinations.

How a prompt is answered (docs/sam3.md):
- clicks and/or a box → the tracker's SAM-2-style decoder (one click alone: best of its 3 candidates by
  predicted IoU; otherwise the single-mask output). A given `mask` is fed in as the previous mask.
- a label alone → the concept detector: the best-scoring instance above `score_threshold`, and the others.
- a label and a box, no clicks → the detector's instances for the label that overlap the box, the most
  overlapping (box IoU) first; if none passes the threshold, the decoder segments the box. (SAM 3's box
  *exemplar* prompt means "more objects like this one" and needs torchvision's roi_align; not used.)
- a mask alone → returned as given.
Every path starts from a cached `ImageEmbedding`, so an image is encoded once whatever is asked of it.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from pathlib import Path

import numpy as np

from sam3d_common.errors import BadInput, ModelUnavailable

from . import embedding_codec
from ..base import Box, Point, SegmentPrompt, SegmentResult, check_clicks_inside
from .embedding_cache import EmbeddingCache
from .onnx_decoder import EXPORT_VERSION, LazyExport
from .encoder import (
    ImageEmbedding,
    after_encoding,
    check_image,
    detector_vision_embeds,
    encode_images,
    image_id,
)
from .compile import batch_buckets, compiled_encoder
from .loading import Sam3Models, load_sam3_models

log = logging.getLogger(__name__)
MASK_LOGIT_SCALE = 10.0  # a user's binary mask enters the decoder as logits of ±this


class Sam3Segmenter:
    name = "sam3"

    def __init__(self, settings, models: Sam3Models | None = None, max_batch_size: int = 8):
        """settings: sam3d_common.settings.Sam3Settings. `models` skips loading (benchmarks, tests).
        max_batch_size: the largest encoder batch (EncoderBatching), for the compiled ViT."""
        self.settings = settings
        self.models = models if models is not None else load_sam3_models(settings)
        self._fold(settings.encoder_folding)
        if settings.vit_fp8:
            from .fp8_linear import fp8_problem, use_fp8_linears  # torch at import: only when asked for

            problem = fp8_problem(self.models.device)
            if problem:
                raise ModelUnavailable(f"segmenter.sam3.vit_fp8 is on, but {problem}")
            amax = None
            if settings.fp8_scaling == "static":  # calibrated on the bf16 ViT, before the swap
                from .fp8_calibration import calibrate_vit

                amax = calibrate_vit(self.models, settings.vit_fp8_calibration)
            use_fp8_linears(self.models.detector.vision_encoder.backbone, settings.fp8_scaling, amax)
        if settings.vit_fused_gelu:
            from .fused_gelu import use_fused_gelu

            use_fused_gelu(self.models.detector.vision_encoder.backbone)
        if settings.cudnn_benchmark and self.models.device.type == "cuda":
            import torch

            torch.backends.cudnn.benchmark = True  # process-wide: before the warm-up that captures the kernels
        if self.models.compiled is None:  # compiled and warmed up here, before the replica reports healthy
            self.models.compiled = compiled_encoder(self.models, settings, max_batch_size)
        self.cache: EmbeddingCache[ImageEmbedding] = EmbeddingCache(settings.embedding_cache_mb * 1024 * 1024)
        self.images_encoded = 0
        self.encoder_batches = 0
        self._count_lock = threading.Lock()
        self._onnx: LazyExport | None = None
        self._onnx_lock = threading.Lock()

    def _fold(self, on: bool) -> None:
        """The patch embedding as a matrix multiply and the click neck folded (folding.py), or both as
        transformers defines them: set either way, since models passed in may come from another backend."""
        from .folding import ClickNeck, set_patch_matmul  # torch at import

        m = self.models
        set_patch_matmul(m.detector.vision_encoder.backbone, on)
        m.click_neck = ClickNeck(m.tracker, m.dtype) if on else None

    def set_max_batch_size(self, n: int) -> None:
        """Encoder batches of up to n images from now on: the compiled encoder compiles what it lacks."""
        compiled = self.models.compiled
        if compiled is not None:
            compiled.set_buckets(batch_buckets(n), self.models.pixels.size, self.models.device)

    # ---- embeddings -------------------------------------------------------------------------------

    @property
    def input_size(self) -> int:
        return self.models.input_size

    @staticmethod
    def image_id(image: np.ndarray) -> str:
        return image_id(check_image(image))

    def encode_batch(self, images: list[np.ndarray], ids: list[str] | None = None) -> list[ImageEmbedding]:
        """The batched encoder entry point (the deployment's @serve.batch method calls this). No caching.

        ids: the images' content ids, which the deployment computes where the cache needs them, in a worker
        thread before batching; only when None are they hashed here.
        """
        images = [check_image(im) for im in images]
        out = encode_images(self.models, images, ids if ids is not None else [image_id(im) for im in images])
        with self._count_lock:
            self.images_encoded += len(images)
            self.encoder_batches += 1
        return out

    def remember(self, embedding: ImageEmbedding) -> str:
        self.cache.put(embedding.embedding_id, embedding)
        return embedding.embedding_id

    def cached(self, embedding_id: str) -> ImageEmbedding | None:
        return self.cache.get(embedding_id)

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Encode `image` unless an embedding of the same pixels is cached; cache the result."""
        key = self.image_id(image)
        found = self.cache.get(key)
        if found is not None:
            return found
        embedding = self.encode_batch([image], [key])[0]
        self.remember(embedding)
        return embedding

    def embedding_payload(self, embedding: ImageEmbedding, profile: str | None = None) -> bytes:
        """The browser's click-decoding payload (embedding_codec format)."""
        profile = profile or self.settings.embedding_profile
        if profile not in embedding_codec.PROFILES:
            raise BadInput(f"unknown embedding profile {profile!r}; one of {sorted(embedding_codec.PROFILES)}")
        # On a GPU the features are quantised there and only u8 codes come to the host; on the CPU numpy's
        # float32 path is the faster one (bench/results/sam3_payload.txt).
        on_gpu = self.models.device.type == "cuda"
        with after_encoding(embedding):  # the codes come to the host before it ends
            return embedding_codec.encode(
                embedding.click_tensors() if on_gpu else embedding.click_features(),
                embedding_id=embedding.embedding_id,
                original_size=embedding.original_size,
                input_size=self.input_size,
                profile=profile,
            )

    # ---- prompts ----------------------------------------------------------------------------------

    def segment(self, image: np.ndarray, prompt: SegmentPrompt) -> SegmentResult:
        check_image(image)
        check_prompt(prompt, image.shape[:2])
        if mask_only(prompt):
            return self.given_mask(prompt)
        return self.answer(self.embed(image), prompt)

    def segment_with_embedding(self, embedding: ImageEmbedding, prompt: SegmentPrompt) -> SegmentResult:
        """A prompt against a cached embedding: its clicks are checked here, against the
        embedding's image, since only the segmenter knows that image's size."""
        check_prompt(prompt, embedding.original_size)
        check_clicks_inside(prompt.points, embedding.original_size)
        return self.answer(embedding, prompt)

    def given_mask(self, prompt: SegmentPrompt) -> SegmentResult:
        """The answer to a prompt that is only a mask (see mask_only): that mask."""
        return SegmentResult(mask=prompt.mask.astype(bool), score=1.0, backend=self.name)

    def answer(self, embedding: ImageEmbedding, prompt: SegmentPrompt) -> SegmentResult:
        """A prompt that check_prompt has accepted for the embedding's image."""
        if mask_only(prompt):
            return self.given_mask(prompt)
        with after_encoding(embedding):  # masks and scores come to the host before it ends
            result = self._decode(embedding, prompt)
        result.embedding_id = embedding.embedding_id
        return result

    def _decode(self, embedding: ImageEmbedding, prompt: SegmentPrompt) -> SegmentResult:
        label = (prompt.label or "").strip()
        if prompt.points or (prompt.box is not None and not label):
            return self._interactive(embedding, prompt.points, prompt.box, prompt.mask)
        if prompt.box is not None:  # label + box, no clicks
            found = self._concept(embedding, label, prompt.box)
            if found is not None:
                return found
            return self._interactive(embedding, [], prompt.box, prompt.mask)
        found = self._concept(embedding, label, None)
        if found is None:
            raise BadInput(f"SAM 3 found no {label!r} above score {self.settings.score_threshold} in the image")
        return found

    def _interactive(self, emb: ImageEmbedding, points: list[Point], box: Box | None, mask) -> SegmentResult:
        import torch

        h, w = emb.original_size
        size = self.input_size
        sx, sy = size / w, size / h
        dev, trk = self.models.device, self.models.tracker
        kwargs = {}
        if points:
            kwargs["input_points"] = torch.tensor([[[[p.x * sx, p.y * sy] for p in points]]], device=dev)
            kwargs["input_labels"] = torch.tensor([[[int(p.label) for p in points]]], device=dev)
        if box is not None:
            kwargs["input_boxes"] = torch.tensor(
                [[[box.x_min * sx, box.y_min * sy, box.x_max * sx, box.y_max * sy]]], device=dev
            )
        if mask is not None:
            kwargs["input_masks"] = self._mask_logits(mask)
        multimask = len(points) == 1 and box is None and mask is None
        with torch.inference_mode():
            out = trk(
                image_embeddings=[emb.high_res_feats_0, emb.high_res_feats_1, emb.image_embed],
                multimask_output=multimask,
                **kwargs,
            )
            logits = out.pred_masks[0, 0].float()  # K x m x m
            scores = out.iou_scores[0, 0].float()
            order = torch.argsort(scores, descending=True)
            masks = _upsample(logits[order], (h, w))
        scores = scores[order].cpu().numpy()
        candidates = [(masks[i], float(np.clip(scores[i], 0, 1))) for i in range(len(scores))]
        best, rest = candidates[0], candidates[1:]
        return SegmentResult(mask=best[0], score=best[1], instances=rest, backend=self.name)

    def _mask_logits(self, mask: np.ndarray):
        import torch
        import torch.nn.functional as F

        side = self.models.tracker.prompt_encoder.mask_input_size
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None].to(self.models.device)
        m = F.interpolate(m, size=tuple(side), mode="bilinear", align_corners=False, antialias=True)
        return ((m * 2 - 1) * MASK_LOGIT_SCALE).to(self.models.dtype)

    def _concept(self, emb: ImageEmbedding, label: str, box: Box | None) -> SegmentResult | None:
        """The detector's instances for `label` (and the box exemplar); None when none passes the threshold."""
        import torch

        tok = self.models.tokenizer
        if tok is None:
            raise ModelUnavailable(
                f"text prompts need the SAM 3 tokenizer, which {self.models.source!r} lacks; send clicks or a box"
            )
        h, w = emb.original_size
        dev, det = self.models.device, self.models.detector
        text = tok([label], padding="max_length", max_length=32, truncation=True, return_tensors="pt").to(dev)
        with torch.inference_mode():
            out = det(
                vision_embeds=detector_vision_embeds(self.models, emb.backbone),
                input_ids=text["input_ids"],
                attention_mask=text["attention_mask"],
            )
            scores = out.pred_logits[0].float().sigmoid()
            if out.presence_logits is not None:
                scores = scores * out.presence_logits[0].float().sigmoid()
            keep = torch.nonzero(scores >= self.settings.score_threshold).flatten()
            if keep.numel() == 0:
                return None
            keep = keep[torch.argsort(scores[keep], descending=True)][: self.settings.max_instances]
            if box is not None:  # only instances overlapping the user's box; the most overlapping first
                ious = _box_iou(out.pred_boxes[0, keep].float().cpu().numpy(), box, (h, w))
                order = [i for i in np.argsort(-ious, kind="stable") if ious[i] > 0]
                if not order:
                    return None
                keep = keep[torch.tensor(order, device=keep.device)]
            masks = _upsample(out.pred_masks[0, keep].float(), (h, w))
            kept_scores = scores[keep].cpu().numpy()
        candidates = [(masks[i], float(kept_scores[i])) for i in range(len(kept_scores))]
        best, rest = candidates[0], candidates[1:]
        return SegmentResult(mask=best[0], score=best[1], instances=rest, backend=self.name)

    # ---- browser decoder --------------------------------------------------------------------------

    def click_decoder_path(self) -> Path:
        """The exported ONNX click decoder (fp32), exported on first use and kept for this replica."""
        with self._onnx_lock:
            if self._onnx is None:
                directory = self.settings.onnx_cache_dir or str(Path(tempfile.gettempdir()) / "sam3d-serve-onnx")
                name = f"sam3-click-decoder-{self._decoder_fingerprint()}.onnx"
                self._onnx = LazyExport(directory, name)
        return self._onnx.get(self.models.tracker)

    def _decoder_fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        h.update(f"export-v{EXPORT_VERSION}".encode())
        trk = self.models.tracker
        for module in (trk.prompt_encoder, trk.mask_decoder, trk.shared_image_embedding):
            for key, t in sorted(module.state_dict().items()):
                h.update(key.encode())
                h.update(t.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        m = self.models
        return {
            "backend": self.name,
            "source": m.source,
            "device": str(m.device),
            "dtype": str(m.dtype).replace("torch.", ""),
            "input_size": self.input_size,
            "compiled_vit": None if m.compiled is None else {
                "batch_sizes": list(m.compiled.buckets), "warmup_s": m.compiled.warmup_s, "mode": m.compiled.mode,
                "scope": m.compiled.scope, "dynamic_batch": m.compiled.dynamic_batch,
                "cuda_graph": m.compiled.graph_stats()},
            "encoder_folding": m.click_neck is not None,
            "text_prompts": m.tokenizer is not None,
            "images_encoded": self.images_encoded,
            "encoder_batches": self.encoder_batches,
            "embedding_cache": self.cache.stats(),
            "notes": list(m.notes),
        }


def mask_only(prompt: SegmentPrompt) -> bool:
    return prompt.mask is not None and not prompt.points and prompt.box is None and not (prompt.label or "").strip()


def check_prompt(prompt: SegmentPrompt, size: tuple[int, int]) -> None:
    """What SAM 3 needs of a prompt for an image of `size` (h, w). Whether the clicks lie
    inside the image is checked once, by whoever holds the image as the client sent it: the
    app's routes for a photo (serve_app/prepare.py, serve_app/routes_segment.py),
    segment_with_embedding for a cached embedding."""
    h, w = size
    if not prompt.points and prompt.box is None and not (prompt.label or "").strip() and prompt.mask is None:
        raise BadInput("SAM 3 needs something to look for: a label, a click or a box")
    for p in prompt.points:
        if p.label not in (0, 1):
            raise BadInput(f"click labels are 1 (object) or 0 (background), got {p.label!r}")
    if prompt.points and not any(p.label == 1 for p in prompt.points):
        raise BadInput("at least one click must mark the object (label 1)")
    b = prompt.box
    if b is not None and not (0 <= b.x_min < b.x_max <= w and 0 <= b.y_min < b.y_max <= h):
        raise BadInput(f"box ({b.x_min:g}, {b.y_min:g}, {b.x_max:g}, {b.y_max:g}) is empty or outside the {w}x{h} image")
    if prompt.mask is not None and tuple(np.shape(prompt.mask)) != (h, w):
        raise BadInput(f"mask shape {np.shape(prompt.mask)} does not match the image ({h}, {w})")


def _upsample(logits, size: tuple[int, int]) -> list[np.ndarray]:
    """K x m x m logits → K boolean HxW masks (bilinear, threshold 0), as the transformers post-processing."""
    import torch.nn.functional as F

    if logits.shape[0] == 0:
        return []
    up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0] > 0
    return list(up.cpu().numpy())


def _box_iou(pred_xyxy: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    p = pred_xyxy * np.array([w, h, w, h], np.float32)
    ix = np.clip(np.minimum(p[:, 2], box.x_max) - np.maximum(p[:, 0], box.x_min), 0, None)
    iy = np.clip(np.minimum(p[:, 3], box.y_max) - np.maximum(p[:, 1], box.y_min), 0, None)
    inter = ix * iy
    area_p = np.clip(p[:, 2] - p[:, 0], 0, None) * np.clip(p[:, 3] - p[:, 1], 0, None)
    area_b = (box.x_max - box.x_min) * (box.y_max - box.y_min)
    return inter / np.maximum(area_p + area_b - inter, 1e-9)
