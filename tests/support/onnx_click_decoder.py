"""Runs the exported SAM 3 click decoder with onnxruntime in Python, as the browser does in
onnxruntime-web: tests and benchmarks compare it with the PyTorch decoder."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from deployments.segmenter.sam3.onnx_decoder import FEATURE_NAMES, INPUT_NAMES, OUTPUT_NAMES, photo_graph_path
from deployments.segmenter.sam3.onnx_decoder_fast import token_layout


class OnnxClickDecoder:
    """Runs an exported decoder with onnxruntime (CPU unless providers say otherwise): the photo/click
    pair (export version 4 and later, its photo graph beside it), the token graph (version 3) or a reference export."""

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=list(providers))
        names = [i.name for i in self.session.get_inputs()]
        self.photo = None
        if names[0] == "photo_0":
            self.photo = ort.InferenceSession(str(photo_graph_path(path)), providers=list(providers))
        self.takes_mask = "mask_input" in names
        self.mask_size = int(self.session.get_inputs()[names.index("mask_input")].shape[-1]) if self.takes_mask else None
        self.tokens = names[0] == INPUT_NAMES[0]

    def photo_inputs(self, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The per-photo inputs of the graph, from the encoder's NCHW image_embed and high_res_feats_0/1
        (laid out or run through the photo graph here, as the browser does once per photo)."""
        nchw = {k: np.asarray(feats[k], np.float32) for k in FEATURE_NAMES}
        if self.photo is not None:
            return dict(zip([o.name for o in self.photo.get_outputs()], self.photo.run(None, nchw)))
        return token_layout(**nchw) if self.tokens else nchw

    def __call__(self, feats: dict[str, np.ndarray], point_coords: np.ndarray, point_labels: np.ndarray,
                 mask_input: np.ndarray | None = None, photo: dict[str, np.ndarray] | None = None):
        """→ (masks, iou_predictions, object_score_logits). `photo`: photo_inputs(feats), when reused."""
        if mask_input is not None and not self.takes_mask:
            raise ValueError("this click decoder graph takes no mask_input (export it with graph='reference')")
        feeds = {**(photo if photo is not None else self.photo_inputs(feats)),
                 "point_coords": np.asarray(point_coords, np.float32),
                 "point_labels": np.asarray(point_labels, np.float32)}
        if self.takes_mask:
            has = mask_input is not None
            if mask_input is None:
                mask_input = np.zeros((1, 1, self.mask_size, self.mask_size), np.float32)
            feeds.update(mask_input=np.asarray(mask_input, np.float32), has_mask_input=np.asarray([float(has)], np.float32))
        masks, ious, obj = self.session.run(OUTPUT_NAMES, feeds)
        return masks, ious, obj
