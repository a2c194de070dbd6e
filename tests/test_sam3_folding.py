"""segmenter.sam3.encoder_folding: the patch embedding as a matrix multiply and the click neck's linear
convolutions folded (deployments/segmenter/sam3/folding.py) compute what the layers they replace compute,
to float32 rounding, on the CPU. Random weights: equivalence only. The speed is measured on a GPU by
bench/bench_sam3_encoder.py (lever `unfolded`) and bench/bench_sam3_neck.py.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from torch import nn  # noqa: E402

from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from deployments.segmenter.sam3.encoder import encode_core, tracker_features, upload_pixels  # noqa: E402
from deployments.segmenter.sam3.folding import (  # noqa: E402
    ClickNeck, PatchMatmul, fold_conv_then_1x1, fold_transpose_then_1x1, set_patch_matmul)
from sam3d_common.settings import Sam3Settings  # noqa: E402
from tests.support.sam3_testing import (  # noqa: E402
    block_photo, mask_agreement, random_init_models, tiny_video_config, write_tiny_checkpoint)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("height,width", [(70, 84), (75, 90)], ids=["whole_patches", "remainder_dropped"])
def test_patch_matmul_is_the_conv(height, width):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 14, stride=14, bias=False)
    x = torch.randn(2, 3, height, width)
    want = conv(x)
    patch = PatchMatmul(3, 16, 14, stride=14, bias=False)
    patch.weight = conv.weight
    got = patch(x)
    assert got.shape == want.shape
    close(got, want)
    close(got.flatten(2).transpose(1, 2), want.flatten(2).transpose(1, 2))  # as the ViT reads it


def test_set_patch_matmul_swaps_and_restores_sharing_the_weight():
    models = random_init_models(tiny_video_config())
    backbone = models.detector.vision_encoder.backbone
    conv = backbone.embeddings.patch_embeddings.projection
    assert type(conv) is nn.Conv2d
    assert set_patch_matmul(backbone, True)
    swapped = backbone.embeddings.patch_embeddings.projection
    assert type(swapped) is PatchMatmul and swapped.weight is conv.weight
    assert set_patch_matmul(backbone, True)  # idempotent
    assert backbone.embeddings.patch_embeddings.projection is swapped
    assert not set_patch_matmul(backbone, False)
    restored = backbone.embeddings.patch_embeddings.projection
    assert type(restored) is nn.Conv2d and restored.weight is conv.weight
    assert set(backbone.state_dict()) == set(models.tracker.vision_encoder.backbone.state_dict())
    assert not set_patch_matmul(nn.Linear(3, 4), True)  # no patch embedding: left alone


def test_transposed_conv_then_1x1_folds():
    torch.manual_seed(1)
    up, proj = nn.ConvTranspose2d(12, 8, 2, stride=2), nn.Conv2d(8, 6, 1)
    x = torch.randn(2, 12, 5, 7)
    close(fold_transpose_then_1x1(up, proj)(x), proj(up(x)))
    with pytest.raises(ValueError, match="non-overlapping"):
        fold_transpose_then_1x1(nn.ConvTranspose2d(12, 8, 3, stride=2), proj)


def test_3x3_then_1x1_folds_with_the_border_padding():
    torch.manual_seed(2)
    conv, proj = nn.Conv2d(8, 10, 3, padding=1), nn.Conv2d(10, 4, 1)
    x = torch.randn(2, 8, 9, 6)
    close(fold_conv_then_1x1(conv, proj)(x), proj(conv(x)))
    extra = torch.randn(1, 1, 10)
    close(fold_conv_then_1x1(conv, None, extra_bias=extra)(x), conv(x) + extra.reshape(1, -1, 1, 1))


def test_click_neck_gives_tracker_features():
    models = random_init_models(tiny_video_config())
    torch.manual_seed(3)
    with torch.no_grad():  # the random init leaves no_memory_embedding at zero: give it something to fold
        models.tracker.no_memory_embedding.normal_()
    neck = ClickNeck(models.tracker, models.dtype)
    g = models.pixels.size // 14
    tokens = torch.randn(2, g, g, 32).permute(0, 3, 1, 2)  # channels-last, as encode_core passes it
    with torch.inference_mode():
        want = tracker_features(models, tokens.contiguous())
        got = neck(tokens)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.is_contiguous()
        close(a, b)


def test_encode_core_folded_equals_unfolded():
    models = random_init_models(tiny_video_config())
    px = upload_pixels(models, [block_photo(160, 200, 0), block_photo(120, 90, 1)])
    with torch.inference_mode():
        want = encode_core(models, px)
        set_patch_matmul(models.detector.vision_encoder.backbone, True)
        models.click_neck = ClickNeck(models.tracker, models.dtype)
        got = encode_core(models, px)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        close(a, b)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny_fold"))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled_encoder_scope"])
def test_folded_backend_gives_the_unfolded_masks(ckpt, compiled):
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu", "embedding_cache_mb": 0}
    compile_opts = {"compile": "on", "compile_backend": "aot_eager", "compile_scope": "encoder"} if compiled else {}
    plain = Sam3Segmenter(Sam3Settings(**common, encoder_folding=False))
    assert plain.models.click_neck is None and not plain.describe()["encoder_folding"]
    folded = Sam3Segmenter(Sam3Settings(**common, **compile_opts))  # on by default
    assert folded.describe()["encoder_folding"]
    worst, agree = mask_agreement(plain, folded)
    assert worst < 1e-5 and agree == 1.0


def test_one_shared_model_follows_the_last_backends_setting(ckpt):
    common = {"local_dir": str(ckpt), "device": "cpu", "embedding_cache_mb": 0}
    folded = Sam3Segmenter(Sam3Settings(**common))
    projection = folded.models.detector.vision_encoder.backbone.embeddings.patch_embeddings.projection
    assert isinstance(folded.models.click_neck, ClickNeck) and type(projection) is PatchMatmul
    Sam3Segmenter(Sam3Settings(**common, encoder_folding=False), models=folded.models)
    projection = folded.models.detector.vision_encoder.backbone.embeddings.patch_embeddings.projection
    assert folded.models.click_neck is None and type(projection) is nn.Conv2d


@pytest.mark.gpu
def test_folded_on_cuda_in_bf16_keeps_the_masks(ckpt):
    """On CUDA with the defaults around it (bf16, compiled, frozen, CUDA graphs): cuDNN's channels-last
    convolutions and the matrix-multiply patch embedding round differently from the layers they replace,
    and nothing more."""
    common = {"local_dir": str(ckpt), "device": "cuda", "score_threshold": 0.0, "embedding_cache_mb": 0}
    plain = Sam3Segmenter(Sam3Settings(**common, encoder_folding=False), max_batch_size=1)
    folded = Sam3Segmenter(Sam3Settings(**common), max_batch_size=1)
    assert folded.describe()["encoder_folding"] and folded.describe()["compiled_vit"]["cuda_graph"]["batch_sizes"] == [1]
    worst, agree = mask_agreement(plain, folded)
    assert worst < 0.05 and agree >= 0.99, (worst, agree)
