"""The SAM 3 ViT with fc1 and GELU in one call (segmenter.sam3.vit_fused_gelu) against the same model
without, on the tiny random checkpoint on the CPU (where the fused call computes GELU's exact form, so
the two must agree to float rounding). The full-size figure on a GPU, where the epilogue uses GELU's
tanh form, comes from bench/bench_sam3_encoder.py; random weights, not a quality claim.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deployments.segmenter.base import Point, SegmentPrompt  # noqa: E402
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from deployments.segmenter.sam3.fused_gelu import FusedGeluMlp, use_fused_gelu  # noqa: E402
from sam3d_common.settings import Sam3Settings  # noqa: E402
from tests.support.sam3_testing import block_photo, mask_agreement, write_tiny_checkpoint  # noqa: E402


class _Mlp(torch.nn.Module):
    def __init__(self, act: torch.nn.Module, bias: bool = True):
        super().__init__()
        self.fc1, self.fc2, self.activation_fn = torch.nn.Linear(16, 40, bias=bias), torch.nn.Linear(40, 16), act

    def forward(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)))


def test_fused_mlp_equals_the_mlp_it_replaces():
    torch.manual_seed(0)
    net = torch.nn.Sequential(_Mlp(torch.nn.GELU()), torch.nn.Sequential(_Mlp(torch.nn.GELU())))
    x = torch.randn(2, 5, 7, 16)
    want = net(x)
    assert use_fused_gelu(net) == 2
    assert isinstance(net[0], FusedGeluMlp) and isinstance(net[1][0], FusedGeluMlp)
    torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-5)


def test_only_exact_gelu_mlps_with_a_bias_are_fused():
    net = torch.nn.Sequential(_Mlp(torch.nn.GELU(approximate="tanh")), _Mlp(torch.nn.ReLU()),
                              _Mlp(torch.nn.GELU(), bias=False))
    assert use_fused_gelu(net) == 0


def test_fused_gelu_and_fp8_are_refused_together():
    with pytest.raises(ValueError, match="turn one of them off"):
        Sam3Settings(vit_fp8=True, vit_fused_gelu=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny_gelu"))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fused_gelu_vit_gives_the_same_masks(ckpt, compiled):
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu", "embedding_cache_mb": 0}
    # compiled: aot_eager, the traced graph with the fused call in it, quick to build on the CPU
    compile_opts = {"compile": "on", "compile_backend": "aot_eager"} if compiled else {}
    plain = Sam3Segmenter(Sam3Settings(**common))  # the eager, unfused reference
    fused = Sam3Segmenter(Sam3Settings(**common, **compile_opts, vit_fused_gelu=True), max_batch_size=1)
    backbone = fused.models.detector.vision_encoder.backbone
    n = sum(isinstance(m, FusedGeluMlp) for m in backbone.modules())
    assert n == len(backbone.layers)  # every ViT layer's MLP
    assert not any(isinstance(m, FusedGeluMlp) for m in plain.models.detector.modules())
    image = block_photo(160, 200, 3)
    a, b = plain.encode_batch([image], ["a"])[0], fused.encode_batch([image], ["b"])[0]
    torch.testing.assert_close(b.backbone.float(), a.backbone.float(), rtol=1e-4, atol=1e-4)
    for point in ((100, 80), (30, 30), (150, 120)):
        prompt = SegmentPrompt(points=[Point(*point, 1)])
        assert (plain.segment_with_embedding(a, prompt).mask == fused.segment_with_embedding(b, prompt).mask).all()


@pytest.mark.gpu
def test_fused_gelu_vit_on_cuda_gives_the_same_masks(ckpt):
    """On the GPU the fused call is cuBLASLt's GELU epilogue (tanh form) in bf16: embeddings close,
    masks nearly all the same (the full-size agreement is in bench/results/)."""
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cuda", "embedding_cache_mb": 0}
    plain = Sam3Segmenter(Sam3Settings(**common))
    fused = Sam3Segmenter(Sam3Settings(**common, vit_fused_gelu=True))
    assert fused.models.dtype == torch.bfloat16
    assert any(isinstance(m, FusedGeluMlp) for m in fused.models.detector.vision_encoder.backbone.modules())
    rel, same = mask_agreement(plain, fused)
    assert rel < 0.05 and same >= 0.98, (rel, same)
