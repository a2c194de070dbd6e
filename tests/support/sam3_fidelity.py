"""How faithfully a payload profile preserves click masks: decode masks from the features as held on the
server and from the same features after encode → decode, and compare them pixel by pixel.

With random weights this measures the codec's fidelity (does quantisation flip decoder outputs?), not
segmentation quality. Used by tests/test_embedding_codec.py and bench/bench_sam3_encoder.py.
"""
from __future__ import annotations

import numpy as np

from deployments.segmenter.sam3 import embedding_codec


def random_prompts(input_size: int, count: int = 16, seed: int = 0) -> list[dict]:
    """Clicks (1-3, the first on the object) and boxes, in encoder-input pixels."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(count):
        if i % 4 == 3:
            x0, y0 = rng.uniform(0, input_size * 0.6, 2)
            w, h = rng.uniform(input_size * 0.1, input_size * 0.4, 2)
            prompts.append({"box": [x0, y0, x0 + w, y0 + h]})
        else:
            n = int(rng.integers(1, 4))
            pts = rng.uniform(0, input_size, (n, 2)).tolist()
            labels = [1] + [int(v) for v in (rng.uniform(size=n - 1) < 0.6)]
            prompts.append({"points": pts, "labels": labels})
    return prompts


def decode_masks(tracker, feats: dict[str, np.ndarray], prompts: list[dict]) -> list[np.ndarray]:
    """Low-res mask logits (K x m x m) that Sam3TrackerModel returns for each prompt, as the server asks."""
    import torch

    p = next(tracker.parameters())
    as_t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(p.device, p.dtype) for k, v in feats.items()}
    embeddings = [as_t["high_res_feats_0"], as_t["high_res_feats_1"], as_t["image_embed"]]
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            kw = {}
            if "points" in prompt:
                kw["input_points"] = torch.tensor([[prompt["points"]]], device=p.device, dtype=torch.float32)
                kw["input_labels"] = torch.tensor([[prompt["labels"]]], device=p.device)
            if "box" in prompt:
                kw["input_boxes"] = torch.tensor([[prompt["box"]]], device=p.device, dtype=torch.float32)
            multimask = len(prompt.get("points", [])) == 1 and "box" not in prompt
            res = tracker(image_embeddings=embeddings, multimask_output=multimask, **kw)
            out.append(res.pred_masks[0, 0].float().cpu().numpy())
    return out


def agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> dict:
    """Share of mask pixels (logit > 0) that agree, over all masks; mean IoU of the masks."""
    same = total = 0
    ious = []
    for a, b in zip(reference, other):
        ma, mb = a > 0, b > 0
        same += int((ma == mb).sum())
        total += ma.size
        for x, y in zip(ma, mb):
            union = np.logical_or(x, y).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(x, y).sum() / union))
    return {"pixel_agreement": same / max(total, 1), "mean_iou": float(np.mean(ious)) if ious else 1.0}


def codec_fidelity(tracker, feats: dict[str, np.ndarray], input_size: int, profile: str, prompts: list[dict]) -> dict:
    payload = embedding_codec.encode(
        feats, embedding_id="fidelity", original_size=(input_size, input_size), input_size=input_size, profile=profile
    )
    _, decoded = embedding_codec.decode(payload)
    reference = decode_masks(tracker, feats, prompts)
    result = agreement(reference, decode_masks(tracker, decoded, prompts))
    result.update(
        profile=profile,
        bytes=len(payload),
        fp16_bytes=embedding_codec.raw_nbytes(feats, np.float16),
        masks=sum(len(r) for r in reference),
        positive_share=float(np.mean([(r > 0).mean() for r in reference])),
    )
    return result
