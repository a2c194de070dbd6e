"""The exported click decoder against transformers' Sam3TrackerModel, on a tiny random checkpoint.

Parity is checked on logits relative to their scale (random weights give tiny logits) and on the binary
masks, for every prompt kind; and the browser's selection rule against the tracker's own single-mask output.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from deployments.segmenter.base import Box, Point, SegmentPrompt  # noqa: E402
from deployments.segmenter.sam3.onnx_decoder import (  # noqa: E402
    INPUT_NAMES,
    OUTPUT_NAMES,
    prompt_arrays,
    select_mask,
)
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from tests.support.onnx_click_decoder import OnnxClickDecoder  # noqa: E402
from tests.support.sam3_testing import write_tiny_checkpoint  # noqa: E402
from sam3d_common.settings import Sam3Settings  # noqa: E402

SIZE = (120, 160)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny"), seed=5)
    onnx_dir = tmp_path_factory.mktemp("onnx")
    return Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), device="cpu", onnx_cache_dir=str(onnx_dir)))


@pytest.fixture(scope="module")
def decoder(seg):
    return OnnxClickDecoder(seg.click_decoder_path())


@pytest.fixture(scope="module")
def embedding(seg):
    rng = np.random.default_rng(2)
    return seg.embed(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8))


CASES = {
    "one click": ([(80, 60, 1)], None, False),
    "two clicks": ([(80, 60, 1), (20, 100, 0)], None, False),
    "five clicks": ([(80, 60, 1), (20, 100, 0), (5, 5, 0), (150, 110, 1), (60, 40, 1)], None, False),
    "box": ([], (30, 20, 120, 100), False),
    "click + box": ([(80, 60, 1)], (30, 20, 120, 100), False),
    "click + mask": ([(80, 60, 1)], None, True),
}


def _upstream(seg, emb, points, box, mask_logits, multimask):
    """Sam3TrackerModel.forward on the cached image embeddings: the reference."""
    h, w = emb.original_size
    s = seg.input_size
    kw = {}
    if points:
        kw["input_points"] = torch.tensor([[[[x * s / w, y * s / h] for x, y, _ in points]]])
        kw["input_labels"] = torch.tensor([[[lab for *_, lab in points]]])
    if box is not None:
        kw["input_boxes"] = torch.tensor([[[box[0] * s / w, box[1] * s / h, box[2] * s / w, box[3] * s / h]]])
    if mask_logits is not None:
        kw["input_masks"] = torch.from_numpy(mask_logits)
    with torch.no_grad():
        out = seg.models.tracker(
            image_embeddings=[emb.high_res_feats_0, emb.high_res_feats_1, emb.image_embed],
            multimask_output=multimask,
            **kw,
        )
    return out.pred_masks[0, 0].numpy(), out.iou_scores[0, 0].numpy()


def _close(got, want, rel=1e-3):
    scale = max(float(np.abs(want).max()), 1e-30)
    assert float(np.abs(got - want).max()) <= rel * scale, (float(np.abs(got - want).max()), scale)


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_matches_tracker_forward(seg, decoder, embedding, case):
    points, box, with_mask = CASES[case]
    feats = embedding.click_features()
    coords, labels = prompt_arrays(points, box, SIZE, seg.input_size)
    mask_logits = None
    if with_mask:
        m = decoder.mask_size
        mask_logits = np.where(np.arange(m)[None, :] < m // 2, 5.0, -5.0).astype(np.float32)[None, None].repeat(m, 2)
    masks, ious, obj = decoder(feats, coords, labels, mask_logits)
    assert masks.shape == (1, 4, decoder.mask_size, decoder.mask_size) and ious.shape == (1, 4) and obj.shape == (1, 1)

    multi_masks, multi_ious = _upstream(seg, embedding, points, box, mask_logits, multimask=True)
    _close(masks[0, 1:], multi_masks)
    _close(ious[0, 1:], multi_ious)
    assert ((masks[0, 1:] > 0) == (multi_masks > 0)).mean() > 0.999

    # The browser's rule picks exactly what the tracker returns without multimask (its stability fallback).
    single_mask, single_iou = _upstream(seg, embedding, points, box, mask_logits, multimask=False)
    k = select_mask(ious[0], masks[0], multimask=False)
    _close(masks[0, k], single_mask[0])
    _close(ious[0, k : k + 1], single_iou)


def test_server_masks_equal_browser_masks(seg, decoder, embedding):
    """Backend result vs ONNX decode + select_mask + bilinear upsampling, for a click and a box."""
    feats = embedding.click_features()
    for points, box in [([(80, 60, 1)], None), ([(80, 60, 1), (10, 10, 0)], (30, 20, 120, 100))]:
        prompt = SegmentPrompt(points=[Point(x, y, lab) for x, y, lab in points], box=Box(*box) if box else None)
        server = seg.segment_with_embedding(embedding, prompt)
        coords, labels = prompt_arrays(points, box, SIZE, seg.input_size)
        masks, ious, _ = decoder(feats, coords, labels)
        k = select_mask(ious[0], masks[0], multimask=len(points) == 1 and box is None)
        up = torch.nn.functional.interpolate(torch.from_numpy(masks[:, k : k + 1]), size=SIZE, mode="bilinear")
        browser = up[0, 0].numpy() > 0
        assert (browser == server.mask).mean() > 0.999
        assert abs(float(ious[0, k]) - server.score) < 1e-4


def test_export_contract_and_reuse(seg, decoder):
    import onnx

    path = seg.click_decoder_path()
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == INPUT_NAMES
    assert [o.name for o in model.graph.output] == OUTPUT_NAMES
    assert model.opset_import[0].version == 17
    mtime = path.stat().st_mtime_ns
    assert seg.click_decoder_path() == path and path.stat().st_mtime_ns == mtime  # exported once
    assert path.name.startswith("sam3-click-decoder-") and path.suffix == ".onnx"


def test_select_mask_rule():
    ious = np.array([0.1, 0.2, 0.9, 0.3], np.float32)
    stable = np.full((4, 8, 8), -1.0, np.float32)
    stable[0, :4] = 1.0
    assert select_mask(ious, stable, multimask=True) == 2
    assert select_mask(ious, stable, multimask=False) == 0
    unstable = stable.copy()
    unstable[0, 4:] = 0.0  # many pixels inside the ±delta band
    assert select_mask(ious, unstable, multimask=False) == 2
