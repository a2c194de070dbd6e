"""Write token_layout.json: small NCHW features and the click decoder's channels-last inputs that
deployments/segmenter/sam3/onnx_decoder_fast.token_layout makes of them (run: python
tests/vectors/make_token_layout_vector.py). tests/js/sam3-click.test.mjs checks that the browser's
tokenLayout gives the same; tests/test_viewer_vectors.py that the file is current.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(OUT.parents[1]))

from deployments.segmenter.sam3.onnx_decoder_fast import token_layout  # noqa: E402


def vector() -> dict:
    """A 2x3 grid (non-square, so rows and columns cannot be swapped unnoticed); values are their
    own NCHW index, so every misplaced element shows."""
    h, w = 2, 3
    feats = {"image_embed": np.arange(3 * h * w, dtype=np.float32).reshape(1, 3, h, w),
             "high_res_feats_0": np.arange(2 * 16 * h * w, dtype=np.float32).reshape(1, 2, 4 * h, 4 * w),
             "high_res_feats_1": np.arange(2 * 4 * h * w, dtype=np.float32).reshape(1, 2, 2 * h, 2 * w)}
    tokens = token_layout(**feats)
    return {"inputs": {k: {"dims": list(v.shape), "data": v.ravel().tolist()} for k, v in feats.items()},
            "outputs": {k: {"dims": list(v.shape), "data": v.ravel().tolist()} for k, v in tokens.items()}}


if __name__ == "__main__":
    (OUT / "token_layout.json").write_text(json.dumps(vector(), separators=(",", ":")) + "\n")
    print("tests/vectors/token_layout.json written")
