"""The SAM 3 encode path and browser payload as they were before issue 16, reproduced so that
bench/bench_sam3_encoder.py can measure them beside today's in the same run."""
from __future__ import annotations

import contextlib
import zlib

import numpy as np
import torch

from deployments.segmenter.sam3 import embedding_codec
from deployments.segmenter.sam3.encoder import ImageEmbedding, image_id
from deployments.segmenter.sam3.folding import PatchMatmul, set_patch_matmul


def whole_neck_features(models, spatial):
    """The click decoder's features as the encoder built them before: the tracker neck's whole forward (all
    four FPN levels and their position encodings), then the decoder's convolutions."""
    trk = models.tracker
    fpn, _ = trk.vision_encoder.neck(spatial)
    return (trk.mask_decoder.conv_s0(fpn[0]), trk.mask_decoder.conv_s1(fpn[1]),
            fpn[2] + trk.no_memory_embedding.reshape(1, -1, 1, 1))


@contextlib.contextmanager
def conv_patch_embedding(models):
    """While inside, the ViT's patch embedding is the conv it was before `encoder_folding` (put back after):
    swapped once around the measurement of encode_before, not at each of its calls."""
    backbone = models.detector.vision_encoder.backbone
    folded = isinstance(backbone.embeddings.patch_embeddings.projection, PatchMatmul)
    set_patch_matmul(backbone, False)
    try:
        yield
    finally:
        set_patch_matmul(backbone, folded)


def encode_before(models, images):
    """The encode path before issue 16: hash, per-image upload + resize, contiguous + clone per tensor
    (run it inside conv_patch_embedding for the patch embedding as it was)."""
    import torch.nn.functional as F

    ids = [image_id(im) for im in images]
    spec, device = models.pixels, models.device
    with torch.inference_mode():
        batch = []
        for image in images:
            t = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True).permute(2, 0, 1)[None].float()
            t = F.interpolate(t, size=(spec.size, spec.size), mode="bilinear", align_corners=False, antialias=True)
            batch.append(t.round_().clamp_(0, 255))
        x = torch.cat(batch) / 255.0
        mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
        px = ((x - mean) / std).to(models.dtype)
        hidden = models.detector.vision_encoder.backbone(px).last_hidden_state
        grid = px.shape[-1] // models.detector.config.vision_config.backbone_config.patch_size
        spatial = hidden.reshape(hidden.shape[0], grid, grid, hidden.shape[-1]).permute(0, 3, 1, 2)
        f0, f1, emb = whole_neck_features(models, spatial)
        return [ImageEmbedding(ids[i], image.shape[:2], spatial[i:i + 1].contiguous().clone(), emb[i:i + 1].clone(),
                               f0[i:i + 1].clone(), f1[i:i + 1].clone()) for i, image in enumerate(images)]


def one_deflate_thread(fn):
    """fn() with the payload's deflate in one piece (the codec compresses 1 MiB chunks on threads)."""
    saved = embedding_codec.PARALLEL_CHUNK
    embedding_codec.PARALLEL_CHUNK = 1 << 40
    try:
        return fn()
    finally:
        embedding_codec.PARALLEL_CHUNK = saved


def payload_before(emb: ImageEmbedding, input_size: int) -> bytes:
    """The previous codec: float32 host copies, float64 statistics, zlib's default strategy."""
    from bench.bench_sam3_payload import stats64

    with stats64():
        return embedding_codec.encode(emb.click_features(), embedding_id=emb.embedding_id, original_size=emb.original_size,
                                      input_size=input_size, profile="compact", zlib_strategy=zlib.Z_DEFAULT_STRATEGY)
