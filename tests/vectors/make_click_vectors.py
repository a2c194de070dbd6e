"""Write the vectors that keep the browser's SAM 3 click decoding (serve_app/static/sam3-click.js) in
agreement with the server's Python (run: python tests/vectors/make_click_vectors.py):

- embedding_small.bin: a /v1/embed payload (compact profile: u8 + zlib) of small random tensors, and
  embedding_small.json: its header and every dequantised value as deployments/segmenter/sam3/embedding_codec
  decodes them;
- click_masks.json: low-res logits, their bilinear upsampling to image sizes as torch does it
  (align_corners=False, as deployments/segmenter/sam3._upsample) and the output select_mask picks.
Deterministic: seeded numpy generators only.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(OUT.parents[1]))

from deployments.segmenter.sam3.embedding_codec import decode, encode  # noqa: E402
from deployments.segmenter.sam3.onnx_decoder import select_mask  # noqa: E402


def embedding() -> tuple[bytes, dict]:
    rng = np.random.default_rng(3)
    tensors = {"image_embed": rng.normal(0, 2, (1, 8, 4, 4)).astype(np.float32),
               "high_res_feats_0": rng.normal(1, 0.5, (1, 2, 16, 16)).astype(np.float32),
               "high_res_feats_1": rng.normal(-1, 1, (1, 4, 8, 8)).astype(np.float32)}
    payload = encode(tensors, embedding_id="vector", original_size=(30, 40), input_size=64, profile="compact")
    header, values = decode(payload)
    return payload, {"header": header, "values": {k: v.ravel().tolist() for k, v in values.items()}}


def click_masks() -> dict:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    cases = []
    for m, (h, w), multimask in ((16, (30, 40), True), (16, (7, 5), False), (8, (64, 48), False), (12, (12, 12), True)):
        logits = rng.normal(0, 3, (4, m, m)).astype(np.float32)
        if not multimask and m == 8:
            logits[0] = np.where(np.abs(logits[0]) < 0.1, 0.01, logits[0])  # an unstable single mask
        ious = rng.random(4).astype(np.float32)
        k = select_mask(ious, logits, multimask)
        up = F.interpolate(torch.from_numpy(logits[k][None, None]), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        cases.append({"m": m, "height": h, "width": w, "multimask": multimask, "logits": logits.ravel().tolist(),
                      "ious": ious.tolist(), "index": k, "upsampled": up.numpy().ravel().tolist()})
    return {"cases": cases}


if __name__ == "__main__":
    payload, meta = embedding()
    (OUT / "embedding_small.bin").write_bytes(payload)
    (OUT / "embedding_small.json").write_text(json.dumps(meta, separators=(",", ":")) + "\n")
    (OUT / "click_masks.json").write_text(json.dumps(click_masks(), separators=(",", ":")) + "\n")
    print("tests/vectors/embedding_small.{bin,json}, click_masks.json written")
