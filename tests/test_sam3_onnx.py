"""The exported click decoder against transformers' Sam3TrackerModel, on a tiny random checkpoint.

Parity is checked on logits relative to their scale (random weights give tiny logits) and on the binary
masks, for every prompt kind; and the browser's selection rule against the tracker's own single-mask output.
The served export is the photo/click pair (version 5); the previous-mask prompt, which it does not take,
is checked on the reference export; and the pair against the reference decoder with every layer norm
perturbed (a random checkpoint has weight 1 and bias 0, which would hide errors in their algebra).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from deployments.segmenter.base import Box, Point, SegmentPrompt  # noqa: E402
from deployments.segmenter.sam3.onnx_decoder import (  # noqa: E402
    FEATURE_NAMES,
    OUTPUT_NAMES,
    _decoder_module,
    export_click_decoder,
    photo_graph_path,
    prompt_arrays,
    select_mask,
)
from deployments.segmenter.sam3.onnx_decoder_photo import photo_and_click_graphs  # noqa: E402
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
def reference_decoder(seg, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx_ref") / "reference.onnx"
    return OnnxClickDecoder(export_click_decoder(seg.models.tracker, path, graph="reference"))


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
def test_onnx_matches_tracker_forward(seg, decoder, reference_decoder, embedding, case):
    points, box, with_mask = CASES[case]
    feats = embedding.click_features()
    coords, labels = prompt_arrays(points, box, SIZE, seg.input_size)
    m = feats["high_res_feats_0"].shape[-1]
    mask_logits = None
    if with_mask:  # only the reference export takes a previous mask
        decoder = reference_decoder
        mask_logits = np.where(np.arange(m)[None, :] < m // 2, 5.0, -5.0).astype(np.float32)[None, None].repeat(m, 2)
    masks, ious, obj = decoder(feats, coords, labels, mask_logits)
    assert masks.shape == (1, 4, m, m) and ious.shape == (1, 4) and obj.shape == (1, 1)

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
    model, photo = onnx.load(str(path)), onnx.load(str(photo_graph_path(path)))
    for m in (model, photo):
        onnx.checker.check_model(m)
        assert m.opset_import[0].version == 17
    # The photo graph's outputs are the click graph's inputs, then the prompts.
    assert [i.name for i in photo.graph.input] == FEATURE_NAMES
    assert [i.name for i in model.graph.input] == [o.name for o in photo.graph.output] + ["point_coords", "point_labels"]
    assert [o.name for o in model.graph.output] == OUTPUT_NAMES
    with pytest.raises(ValueError, match="no mask_input"):
        decoder({}, np.zeros((1, 1, 2), np.float32), np.zeros((1, 1), np.float32), np.zeros((1, 1, 8, 8), np.float32))
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


def _perturbed_norms(tracker, seed: int):
    """A copy of the tracker's decoder parts with every layer norm's weight and bias drawn at random."""
    import copy

    g = torch.Generator().manual_seed(seed)
    parts = copy.deepcopy(tracker)
    with torch.no_grad():
        for module in parts.mask_decoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=g))
    return parts


def test_photo_click_pair_equals_reference_decoder(seg, tmp_path):
    """The low-rank pair (torch modules and their ONNX export) against the tracker's modules as they are,
    on features with a non-zero mean and perturbed layer norms, for one and several points."""
    tracker = _perturbed_norms(seg.models.tracker, seed=3)
    reference = _decoder_module(tracker)
    g = torch.Generator().manual_seed(4)
    grid = seg.models.tracker.config.prompt_encoder_config.image_size // seg.models.tracker.config.prompt_encoder_config.patch_size
    c = tracker.config.mask_decoder_config.hidden_size
    feats = (torch.randn(1, c, grid, grid, generator=g) + 0.7, torch.randn(1, c // 8, 4 * grid, 4 * grid, generator=g),
             torch.randn(1, c // 4, 2 * grid, 2 * grid, generator=g))
    photo, _, click, _ = photo_and_click_graphs(tracker, feats)
    path = export_click_decoder(tracker, tmp_path / "pair.onnx")
    onnx_pair = OnnxClickDecoder(path)
    nchw = dict(zip(FEATURE_NAMES, (f.numpy() for f in feats)))
    photo_onnx = onnx_pair.photo_inputs(nchw)
    size = seg.input_size
    for coords, labels in [([[0.3, 0.6]], [1.0]), ([[0.2, 0.2], [0.7, 0.4], [0.5, 0.9]], [1.0, 0.0, 1.0]),
                           ([[0.1, 0.2], [0.8, 0.9]], [2.0, 3.0])]:
        pc = torch.tensor([[*coords, [0.0, 0.0]]]) * size
        pl = torch.tensor([[*labels, -1.0]])
        with torch.no_grad():
            want = reference(*feats, pc, pl, torch.zeros(1, 1, 4 * grid, 4 * grid), torch.zeros(1))
            got = click(*photo(*feats), pc, pl)
        onnx_got = onnx_pair(nchw, pc.numpy(), pl.numpy(), photo=photo_onnx)
        for a, b, o in zip(got, want, onnx_got):
            _close(a.numpy(), b.numpy(), rel=1e-4)
            _close(o, b.numpy(), rel=1e-4)
        assert ((got[0] > 0) == (want[0] > 0)).float().mean() > 0.999
