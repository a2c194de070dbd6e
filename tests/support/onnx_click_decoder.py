"""Runs the exported SAM 3 click decoder with onnxruntime in Python, as the browser does in
onnxruntime-web: tests and benchmarks compare it with the PyTorch decoder."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from deployments.segmenter.sam3.onnx_decoder import FEATURE_NAMES, INPUT_NAMES, OUTPUT_NAMES
from deployments.segmenter.sam3.onnx_decoder_fast import token_layout


class OnnxClickDecoder:
    """Runs an exported decoder with onnxruntime (CPU unless providers say otherwise)."""

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=list(providers))
        shape = self.session.get_inputs()[5].shape  # mask_input 1x1xMxM
        self.mask_size = int(shape[-1])
        self.tokens = self.session.get_inputs()[0].name == INPUT_NAMES[0]  # else a reference export

    def __call__(self, feats: dict[str, np.ndarray], point_coords: np.ndarray, point_labels: np.ndarray, mask_input: np.ndarray | None = None):
        """feats: the encoder's NCHW image_embed, high_res_feats_0/1 (laid out here as the graph
        takes them, as the browser does once per photo)."""
        has = mask_input is not None
        if mask_input is None:
            mask_input = np.zeros((1, 1, self.mask_size, self.mask_size), np.float32)
        nchw = {k: np.asarray(feats[k], np.float32) for k in FEATURE_NAMES}
        feeds = {
            **(token_layout(**nchw) if self.tokens else nchw),
            "point_coords": np.asarray(point_coords, np.float32),
            "point_labels": np.asarray(point_labels, np.float32),
            "mask_input": np.asarray(mask_input, np.float32),
            "has_mask_input": np.asarray([1.0 if has else 0.0], np.float32),
        }
        masks, ious, obj = self.session.run(OUTPUT_NAMES, feeds)
        return masks, ious, obj
