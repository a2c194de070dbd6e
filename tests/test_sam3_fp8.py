"""The SAM 3 ViT with FP8 linear layers (segmenter.sam3.vit_fp8, each scaling) against the same model
without, and the static scaling's calibration.

Tiny random checkpoint on the CPU (PyTorch's CPU build runs the row-wise scaled FP8 product).
Random weights: a numerical agreement check, not a quality claim; the full-size figure is in
bench/results/ (bench/bench_sam3_encoder.py).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deployments.segmenter.sam3.fp8_calibration import calibrate_vit, calibration_photos  # noqa: E402
from deployments.segmenter.sam3.fp8_linear import (  # noqa: E402
    STATIC_HEADROOM, Fp8Linear, fp8_problem, record_input_amax, use_fp8_linears)
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from sam3d_common.errors import ModelUnavailable  # noqa: E402
from tests.support.sam3_testing import mask_agreement, write_tiny_checkpoint  # noqa: E402
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
    with pytest.raises(ValueError, match="one of"):
        Fp8Linear(linear, scaling="column")


def test_static_scaling_uses_the_calibrated_range_and_saturates_beyond_it():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32))
    net.requires_grad_(False)
    x = torch.randn(5, 64)
    amax = record_input_amax(net, lambda: net(x))
    assert amax == pytest.approx({"0": float(x.abs().max()), "2": float(net[1](net[0](x)).abs().max())})
    assert not any(m._forward_pre_hooks for m in net.modules())  # the hooks are gone
    want = net(x)
    assert use_fp8_linears(net, "static", amax) == 2
    assert {m.scaling for m in net if isinstance(m, Fp8Linear)} == {"static"}
    assert net[0].input_scale.dim() == 0
    assert (net(x) - want).norm() / want.norm() < 0.05
    # Beyond the headroom an input saturates: 10x the calibrated range reads as the range's edge.
    edge = float(x.abs().max()) * STATIC_HEADROOM
    big = torch.zeros(1, 64)
    big[0, 0] = 10 * edge
    at_edge = big.clone()
    at_edge[0, 0] = edge
    assert torch.equal(net[0](big), net[0](at_edge))


def test_static_scaling_needs_a_range_for_every_layer():
    net = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(48, 16))
    with pytest.raises(ValueError, match="needs the calibrated"):
        use_fp8_linears(net, "static")
    with pytest.raises(ValueError, match="no calibrated input range for 1"):
        use_fp8_linears(net, "static", {"0": 1.0})
    with pytest.raises(ValueError, match="only for it"):
        Fp8Linear(net[0], "tensor", input_amax=1.0)


def test_settings_refuse_fp8_scalings_and_calibration_that_would_do_nothing():
    assert Sam3Settings(vit_fp8=True).fp8_scaling == "static"  # the default: the fast one
    again = Sam3Settings(**Sam3Settings().model_dump())  # how a replica receives its settings
    assert again.vit_fp8_scaling is None and again.fp8_scaling == "static"
    for scaling in ("row", "tensor", "static"):
        with pytest.raises(ValueError, match="vit_fp8 is off"):
            Sam3Settings(vit_fp8_scaling=scaling)
        assert Sam3Settings(vit_fp8=True, vit_fp8_scaling=scaling).vit_fp8_scaling == scaling
    with pytest.raises(ValueError, match="vit_fp8_calibration"):
        Sam3Settings(vit_fp8=True, vit_fp8_scaling="tensor", vit_fp8_calibration="/photos")
    with pytest.raises(ValueError, match="vit_fp8_calibration"):
        Sam3Settings(vit_fp8_calibration="/photos")
    assert Sam3Settings(vit_fp8=True, vit_fp8_calibration="/photos").vit_fp8_calibration == "/photos"


def test_calibration_photos_come_from_a_folder_or_the_bundled_four(tmp_path):
    from PIL import Image

    assert [p.ndim for p in calibration_photos(None)] == [3] * 4
    with pytest.raises(ModelUnavailable, match="not a folder"):
        calibration_photos(str(tmp_path / "missing"))
    with pytest.raises(ModelUnavailable, match="no .jpg"):
        calibration_photos(str(tmp_path))
    Image.new("L", (40, 30), 128).save(tmp_path / "grey.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    photos = calibration_photos(str(tmp_path))
    assert len(photos) == 1 and photos[0].shape == (30, 40, 3)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ModelUnavailable, match="broken.jpg is not a readable photo"):
        calibration_photos(str(tmp_path))


def test_only_linears_with_sizes_in_multiples_of_16_are_replaced():
    net = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(),
                              torch.nn.Sequential(torch.nn.Linear(48, 10), torch.nn.Linear(10, 16)))
    assert use_fp8_linears(net) == 1
    assert isinstance(net[0], Fp8Linear) and type(net[2][0]) is torch.nn.Linear


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny"))
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu", "embedding_cache_mb": 0}
    return {scaling: Sam3Segmenter(Sam3Settings(**common, **({"vit_fp8": True, "vit_fp8_scaling": scaling}
                                                             if scaling else {})))
            for scaling in (None, "row", "tensor", "static")}


def test_calibration_covers_every_fp8_suited_linear_of_the_vit(pair):
    models = pair[None].models
    backbone = models.detector.vision_encoder.backbone
    amax = calibrate_vit(models)
    suited = {n for n, m in backbone.named_modules()
              if isinstance(m, torch.nn.Linear) and m.in_features % 16 == 0 and m.out_features % 16 == 0}
    assert suited and set(amax) == suited and all(v > 0 for v in amax.values())


def _assert_nearly_the_same_masks(plain: Sam3Segmenter, fp8: Sam3Segmenter, scaling: str, rel_bound: float) -> None:
    """fp8's ViT has Fp8Linear layers of `scaling`, plain's none; embeddings of three photos within
    rel_bound (relative norm) and ≥ 98 % of mask pixels the same for three point prompts each."""
    assert {m.scaling for m in fp8.models.detector.modules() if isinstance(m, Fp8Linear)} == {scaling}
    n = sum(isinstance(m, Fp8Linear) for m in fp8.models.detector.vision_encoder.backbone.modules())
    assert n > 0 and not any(isinstance(m, Fp8Linear) for m in plain.models.detector.modules())
    rel, same = mask_agreement(plain, fp8)
    assert rel < rel_bound and same >= 0.98, (rel, same)


@pytest.mark.parametrize("scaling", ["row", "tensor", "static"])
def test_fp8_vit_gives_nearly_the_same_masks(pair, scaling):
    _assert_nearly_the_same_masks(pair[None], pair[scaling], scaling, rel_bound=0.1)


@pytest.mark.gpu
@pytest.mark.parametrize("scaling", ["row", "tensor", "static"])
def test_fp8_vit_on_cuda_gives_nearly_the_same_masks(tmp_path_factory, scaling):
    """The same check through cuBLASLt's FP8 kernels (bf16 model on the GPU), the path the
    full-size bench times; bf16's own rounding widens the embedding bound."""
    if fp8_problem(torch.device("cuda")):
        pytest.skip(fp8_problem(torch.device("cuda")))
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny_cuda"))
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cuda", "embedding_cache_mb": 0}
    plain = Sam3Segmenter(Sam3Settings(**common))
    fp8 = Sam3Segmenter(Sam3Settings(**common, vit_fp8=True, vit_fp8_scaling=scaling))
    assert fp8.models.dtype == torch.bfloat16
    _assert_nearly_the_same_masks(plain, fp8, scaling, rel_bound=0.15)
