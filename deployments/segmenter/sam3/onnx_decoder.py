"""SAM 3 click/box mask decoder (prompt encoder + mask decoder) as ONNX, for onnxruntime and onnxruntime-web.

Contract (export version 5; SAM 2 style; batch 1; N prompt points, N dynamic). Two graphs: the photo
graph (photo_graph_path: `<name>.photo.onnx` beside the click graph) runs once per photo, the click
graph once per click (onnx_decoder_photo; the browser: sam3-click.js):

    photo graph  in   image_embed 1x256x72x72, high_res_feats_0 1x32x288x288, high_res_feats_1 1x64x144x144
                 out  photo_0 ... photo_K   products of the image tokens with the decoder's fixed matrices
                      high_res_bias_0 20736x128, high_res_centred_1 5184x256   features + upscaler
                      biases (the latter centred over each 2x pixel's channels; version 4: high_res_bias_1)
    click graph  in   the photo graph's outputs, by name, then
                      point_coords   float32 1xNx2   pixel (x, y) scaled to the encoder input: x*S/W, y*S/H
                      point_labels   float32 1xN     1 object, 0 background, 2/3 box corners, -1 padding point
                 out  masks          float32 1x4x288x288  low-res logits; 0 = single-mask token, 1..3 multimask
                      iou_predictions float32 1x4
                      object_score_logits float32 1x1

`prompt_arrays` builds point_coords/point_labels the way the tracker does (box corners, then one padding
point); `select_mask` picks the output the tracker itself returns. The low-res logits are scaled to the
image with bilinear interpolation and thresholded at 0. Sizes above are for the full model (S = 1008).
export_click_decoder(graph=...) also writes the earlier single graphs: "tokens" (version 3,
onnx_decoder_fast: INPUT_NAMES, features laid out by `token_layout`) and "reference" (the tracker's
modules as they are: REFERENCE_INPUT_NAMES); both also take a previous mask (mask_input 1x1x288x288
logits with has_mask_input 1), which the version 4 pair does not.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FEATURE_NAMES = ["image_embed", "high_res_feats_0", "high_res_feats_1"]
PROMPT_NAMES = ["point_coords", "point_labels", "mask_input", "has_mask_input"]
INPUT_NAMES = ["image_tokens", "high_res_tokens_0", "high_res_tokens_1", *PROMPT_NAMES]
REFERENCE_INPUT_NAMES = [*FEATURE_NAMES, *PROMPT_NAMES]
OUTPUT_NAMES = ["masks", "iou_predictions", "object_score_logits"]
OPSET = 17
EXPORT_VERSION = 5  # part of the exported file's name: bump when the graph changes


def prompt_arrays(points, box, original_size: tuple[int, int], input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """points: [(x, y, label)], box: (x0, y0, x1, y1) or None, both in original pixels.

    → (1xNx2 coords in encoder-input pixels, 1xN labels). A box becomes two corner points labelled 2 and 3;
    one padding point (label -1) closes the list, as the tracker's prompt encoder does.
    """
    h, w = original_size
    sx, sy = input_size / w, input_size / h
    coords = [(float(x) * sx, float(y) * sy) for x, y, _ in points]
    labels = [float(lab) for _, _, lab in points]
    if box is not None:
        x0, y0, x1, y1 = box
        coords += [(x0 * sx, y0 * sy), (x1 * sx, y1 * sy)]
        labels += [2.0, 3.0]
    coords.append((0.0, 0.0))
    labels.append(-1.0)
    return np.asarray(coords, np.float32)[None], np.asarray(labels, np.float32)[None]


def select_mask(ious: np.ndarray, masks: np.ndarray, multimask: bool, delta: float = 0.05, thresh: float = 0.98) -> int:
    """Index (0..3) of the decoder output to use. ious: (4,), masks: (4, H, W) logits.

    One click and nothing else → the multimask candidate with the best predicted IoU. Otherwise the
    single-mask token, unless its mask is unstable (area at logit > delta over area at logit > -delta
    below `thresh`), in which case the best multimask candidate is used.
    """
    best_multi = 1 + int(np.argmax(ious[1:]))
    if multimask:
        return best_multi
    inner = float((masks[0] > delta).sum())
    outer = float((masks[0] > -delta).sum())
    stability = inner / outer if outer > 0 else 1.0
    return 0 if stability >= thresh else best_multi


def _decoder_module(tracker):
    """An nn.Module that runs the tracker's prompt encoder and mask decoder once, returning all 4 masks."""
    import torch

    from .decoder_parts import DecoderParts

    class ClickDecoder(DecoderParts):
        def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input, has_mask_input):
            pe, md = self.prompt_encoder, self.mask_decoder
            tokens = self.prompt_tokens(point_coords, point_labels)[None, None]
            _, channels, height, width = image_embed.shape
            has = has_mask_input.reshape(1, 1, 1, 1)
            no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)  # broadcast, not a folded 72x72 constant
            dense = has * pe.mask_embed(mask_input) + (1.0 - has) * no_mask
            queries, keys = md.transformer(
                point_embeddings=tokens,
                image_embeddings=image_embed + dense,
                image_positional_embeddings=self.image_pe(image_embed[0, 0]).permute(2, 0, 1)[None],
                attention_similarity=None,
            )
            image = keys.transpose(2, 3).reshape(1, channels, height, width)
            up = md.activation(md.upscale_layer_norm(md.upscale_conv1(image) + high_res_feats_1))
            up = md.activation(md.upscale_conv2(up) + high_res_feats_0)
            n = md.num_mask_tokens
            hyper = torch.stack([md.output_hypernetworks_mlps[i](queries[:, 0, 2 + i]) for i in range(n)], dim=1)
            _, up_channels, up_h, up_w = up.shape
            masks = (hyper @ up.reshape(1, up_channels, up_h * up_w)).reshape(1, n, up_h, up_w)
            ious = md.iou_prediction_head(queries[:, 0, 1])
            obj = md.pred_obj_score_head(queries[:, 0, 0])
            return masks, ious, obj

    return ClickDecoder(tracker).eval()


def example_inputs(tracker, num_points: int = 2):
    import torch

    cfg = tracker.config
    grid = cfg.prompt_encoder_config.image_size // cfg.prompt_encoder_config.patch_size
    hidden = cfg.mask_decoder_config.hidden_size
    return (
        torch.randn(1, hidden, grid, grid),
        torch.randn(1, hidden // 8, 4 * grid, 4 * grid),
        torch.randn(1, hidden // 4, 2 * grid, 2 * grid),
        torch.rand(1, num_points, 2) * cfg.prompt_encoder_config.image_size,
        torch.tensor([[1.0] * (num_points - 1) + [-1.0]]),
        torch.zeros(1, 1, 4 * grid, 4 * grid),
        torch.zeros(1),
    )


def photo_graph_path(path: str | Path) -> Path:
    """Where the photo graph of the click decoder at `path` is written (export version 4 and later)."""
    path = Path(path)
    return path.with_name(path.stem + ".photo.onnx")


def export_click_decoder(tracker, path: str | Path, opset: int = OPSET, graph: str = "photo") -> Path:
    """Write the decoder of `tracker` (a transformers Sam3TrackerModel) to `path` in fp32, atomically.

    graph "photo": onnx_decoder_photo's pair, the click graph at `path` and the photo graph at
    photo_graph_path(path) (what the page runs); "tokens": onnx_decoder_fast's single graph (export
    version 3, INPUT_NAMES); "reference": the tracker's modules as they are (REFERENCE_INPUT_NAMES).
    The last two are kept for benchmarks and for the previous-mask prompt, which only they take.
    """
    import torch

    from .decoder_parts import write_onnx
    from .onnx_decoder_fast import fast_decoder_module, token_layout
    from .onnx_decoder_photo import export_photo_click

    example = example_inputs(tracker)
    if graph == "photo":
        export_photo_click(tracker, path, photo_graph_path(path), example[:3], OUTPUT_NAMES, opset)
        return Path(path)
    if graph == "tokens":
        module, names = fast_decoder_module(tracker), INPUT_NAMES
        tokens = token_layout(*(t.numpy() for t in example[:3]))
        example = (*(torch.from_numpy(tokens[n]) for n in INPUT_NAMES[:3]), *example[3:])
    elif graph == "reference":
        module, names = _decoder_module(tracker), REFERENCE_INPUT_NAMES
    else:
        raise ValueError(f"unknown click decoder graph {graph!r}")
    return write_onnx(module, example, path, names, OUTPUT_NAMES, opset,
                      {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})


class LazyExport:
    """Export once per process into `directory`, reusing a file already there; thread-safe."""

    def __init__(self, directory: str | Path, filename: str):
        self.path = Path(directory) / filename
        self._lock = threading.Lock()

    def get(self, tracker) -> Path:
        with self._lock:
            if not (self.path.is_file() and photo_graph_path(self.path).is_file()):
                log.info("exporting the SAM 3 click decoder to %s", self.path)
                export_click_decoder(tracker, self.path)
            return self.path
