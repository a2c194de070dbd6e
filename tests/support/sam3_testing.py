"""A tiny randomly initialised SAM 3 checkpoint in the official layout, for tests and smoke runs.

`write_tiny_checkpoint(folder)` saves what `facebook/sam3` holds, at toy size: a `sam3_video` config.json,
model.safetensors (detector, tracker and tracker neck), a CLIP tokenizer and processor_config.json, so the
backend loads it through exactly the code path that real weights take. Its masks mean nothing.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from deployments.segmenter.sam3.loading import PixelSpec, Sam3Models, finish, tracker_config_from
from sam3d_common.torch_device import resolve_device_dtype

TINY_IMAGE = 224  # 16x16 patches of 14 px
TINY_FPN = 32


def block_photo(h: int, w: int, seed: int):
    """An h×w RGB test photo: dark noise (0..79) with a red block over its middle half and third, so
    clicks on and off the block give different masks."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    img[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = (200, 40, 40)
    return img


def tiny_video_config(image_size: int = TINY_IMAGE, fpn: int = TINY_FPN):
    from transformers import Sam3VideoConfig

    grid = image_size // 14
    vit = {
        "model_type": "sam3_vit_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": 14,
        "window_size": 8,
        "global_attn_indexes": [1],
        "pretrain_image_size": image_size,
    }
    vision = {
        "model_type": "sam3_vision_model",
        "backbone_config": vit,
        "fpn_hidden_size": fpn,
        "backbone_feature_sizes": [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
    }
    small = {"hidden_size": fpn, "num_attention_heads": 2, "intermediate_size": 64}
    detector = {
        "vision_config": vision,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        "geometry_encoder_config": {**small, "num_layers": 1},
        "detr_encoder_config": {**small, "num_layers": 1},
        "detr_decoder_config": {**small, "num_layers": 1, "num_queries": 8},
        "mask_decoder_config": {"hidden_size": fpn, "num_attention_heads": 2},
    }
    tracker = {
        "image_size": image_size,
        "vision_config": vision,
        "prompt_encoder_config": {"hidden_size": fpn, "image_size": image_size, "patch_size": 14},
        "mask_decoder_config": {"hidden_size": fpn, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": fpn},
        "memory_attention_hidden_size": fpn,
        "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": 64,
        "memory_attention_rope_feat_sizes": [grid, grid],
        "memory_encoder_hidden_size": fpn,
        "memory_encoder_output_channels": 16,
        "mask_downsampler_embed_dim": fpn,
        "memory_fuser_embed_dim": fpn,
        "memory_fuser_intermediate_dim": 64,
    }
    # The config classes consume nested dicts in place: give each its own copy.
    return Sam3VideoConfig(detector_config=copy.deepcopy(detector), tracker_config=copy.deepcopy(tracker))


def tiny_tokenizer():
    """A character-level CLIP BPE tokenizer (letters only, no merges) with the CLIP special tokens."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    special = "<|endoftext|>"
    return CLIPTokenizer(vocab=vocab, merges=[], unk_token=special, bos_token="<|startoftext|>", eos_token=special, pad_token=special)


def write_tiny_checkpoint(folder: str | Path, seed: int = 0, hub_layout: bool = True) -> Path:
    """Save a random tiny SAM 3 (sam3_video layout) with tokenizer and processor config into `folder`.

    hub_layout: store the weights under the model's module names (`detector_model.*`, `tracker_model.*`,
    `tracker_neck.*`), as the hub checkpoint has them. transformers 5.23's save_pretrained writes the
    tracker as `tracker_model.tracker_model.*`; hub_layout=False keeps that file as written.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Sam3VideoModel

    folder = Path(folder)
    torch.manual_seed(seed)
    config = tiny_video_config()
    model = Sam3VideoModel(config)
    model.save_pretrained(folder)
    if hub_layout:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tiny_tokenizer().save_pretrained(folder)
    size = config.detector_config.vision_config.backbone_config.image_size
    processor = {
        "processor_class": "Sam3Processor",
        "image_processor": {
            "image_processor_type": "Sam3ImageProcessor",
            "size": {"height": size, "width": size},
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
    }
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return folder


def random_init_models(video_config, device: str = "cpu", dtype: str = "float32", seed: int = 0) -> Sam3Models:
    """Randomly initialised detector + tracker from a Sam3VideoConfig (benchmarks; no weights needed).

    The tracker's backbone is replaced by the detector's, exactly as with loaded weights.
    """
    import torch
    from transformers import Sam3Model, Sam3TrackerModel

    torch.manual_seed(seed)
    dev, dt = resolve_device_dtype(device, dtype, "segmenter.sam3")
    with torch.device(dev):  # initialise on the device: 840 M parameters initialise slowly on a CPU
        detector = Sam3Model(video_config.detector_config)
        tracker = Sam3TrackerModel(tracker_config_from(video_config))
    tracker.vision_encoder.backbone = detector.vision_encoder.backbone
    size = int(video_config.detector_config.vision_config.backbone_config.image_size)
    return finish(detector, tracker, None, PixelSpec(size=size), dev, dt, "random-init", ["random weights"])


def mask_agreement(plain, other, seeds=(0, 1, 2)) -> tuple[float, float]:
    """Two Sam3Segmenters on the same block photos (160x200, one per seed), three clicks each →
    (the largest relative error of `other`'s ViT output against `plain`'s, the fraction of mask
    pixels the two agree on)."""
    from deployments.segmenter.base import Point, SegmentPrompt

    worst, same, total = 0.0, 0, 0
    for seed in seeds:
        image = block_photo(160, 200, seed)
        a, b = plain.encode_batch([image], ["a"])[0], other.encode_batch([image], ["b"])[0]
        ref = a.backbone.float()
        worst = max(worst, float((b.backbone.float() - ref).norm() / ref.norm()))
        for point in ((100, 80), (30, 30), (150, 120)):
            prompt = SegmentPrompt(points=[Point(*point, 1)])
            ma, mb = plain.segment_with_embedding(a, prompt).mask, other.segment_with_embedding(b, prompt).mask
            same += int((ma == mb).sum())
            total += ma.size
    return worst, same / total
