"""The SAM 3 ViT with FP8 linear layers (segmenter.sam3.vit_fp8) against the same model without.

Tiny random checkpoint on the CPU (PyTorch's CPU build runs the row-wise scaled FP8 product).
Random weights: a numerical agreement check, not a quality claim; the full-size figure is in
bench/results/ (bench/bench_sam3_encoder.py).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deployments.segmenter.base import Point, SegmentPrompt  # noqa: E402
from deployments.segmenter.sam3.fp8_linear import Fp8Linear, fp8_problem, use_fp8_linears  # noqa: E402
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from tests.support.sam3_testing import block_photo, write_tiny_checkpoint  # noqa: E402
from sam3d_common.settings import Sam3Settings  # noqa: E402

pytestmark = pytest.mark.skipif(fp8_problem(torch.device("cpu")) is not None,
                                reason="this PyTorch has no float8 matrix multiply")


def test_fp8_linear_is_close_to_the_linear_it_replaces():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    x = torch.randn(3, 7, 64)
    fp8 = Fp8Linear(linear)
    assert fp8.weight_fp8.dtype == torch.float8_e4m3fn
    want, got = linear(x), fp8(x)
    assert got.shape == want.shape
    # e4m3 keeps 3 mantissa bits: relative error per product ~2^-4, averaged down over K = 64.
    assert (got - want).norm() / want.norm() < 0.05


def test_per_tensor_scaling_is_close_too_and_adds_the_bias_in_the_product(monkeypatch):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    x = torch.randn(3, 7, 64)
    fp8 = Fp8Linear(linear, scaling="tensor")
    assert fp8.weight_scale.dim() == 0
    biases = []
    scaled_mm = torch._scaled_mm

    def spy(*args, **kwargs):
        biases.append(kwargs.get("bias"))
        return scaled_mm(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", spy)
    want, got = linear(x), fp8(x)
    assert (got - want).norm() / want.norm() < 0.05
    assert biases and torch.equal(biases[0], linear.bias.detach())  # in the product's epilogue
    biases.clear()
    Fp8Linear(linear)(x)  # per-row scaling adds it afterwards
    assert biases == [None]
    with pytest.raises(ValueError, match="row' or 'tensor"):
        Fp8Linear(linear, scaling="column")


def test_settings_refuse_tensor_scaling_without_fp8():
    with pytest.raises(ValueError, match="vit_fp8 is off"):
        Sam3Settings(vit_fp8_scaling="tensor")
    assert Sam3Settings(vit_fp8=True, vit_fp8_scaling="tensor").vit_fp8_scaling == "tensor"


def test_only_linears_with_sizes_in_multiples_of_16_are_replaced():
    net = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(),
                              torch.nn.Sequential(torch.nn.Linear(48, 10), torch.nn.Linear(10, 16)))
    assert use_fp8_linears(net) == 1
    assert isinstance(net[0], Fp8Linear) and type(net[2][0]) is torch.nn.Linear


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny"))
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu", "embedding_cache_mb": 0}
    return (Sam3Segmenter(Sam3Settings(**common)), Sam3Segmenter(Sam3Settings(**common, vit_fp8=True)),
            Sam3Segmenter(Sam3Settings(**common, vit_fp8=True, vit_fp8_scaling="tensor")))


@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_fp8_vit_gives_nearly_the_same_masks(pair, scaling):
    plain, fp8 = pair[0], pair[1 if scaling == "row" else 2]
    assert {m.scaling for m in fp8.models.detector.modules() if isinstance(m, Fp8Linear)} == {scaling}
    n = sum(isinstance(m, Fp8Linear) for m in fp8.models.detector.vision_encoder.backbone.modules())
    assert n > 0 and not any(isinstance(m, Fp8Linear) for m in plain.models.detector.modules())
    same = total = 0
    for seed in range(3):
        image = block_photo(160, 200, seed)
        a, b = plain.encode_batch([image], ["a"])[0], fp8.encode_batch([image], ["b"])[0]
        rel = (b.backbone.float() - a.backbone.float()).norm() / a.backbone.float().norm()
        assert rel < 0.1, rel
        for point in ((100, 80), (30, 30), (150, 120)):
            prompt = SegmentPrompt(points=[Point(*point, 1)])
            ma, mb = plain.segment_with_embedding(a, prompt).mask, fp8.segment_with_embedding(b, prompt).mask
            same += int((ma == mb).sum())
            total += ma.size
    assert same / total >= 0.98, same / total
