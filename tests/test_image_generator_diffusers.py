"""Diffusers image generator: a tiny randomly initialised Stable Diffusion pipeline, built from
configs in code (UNet, VAE, CLIP text encoder, a CLIP BPE tokenizer over a vocabulary written
here), saved with save_pretrained and loaded through DiffusersGenerator(local_dir=...), the
same path real weights take. The pictures are noise; only the plumbing is checked.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from sam3d_common.errors import BadInput, ModelUnavailable
from sam3d_common.settings import ImageGeneratorSettings

SIZE = 64


def _write_tokenizer_files(folder) -> tuple[str, str, int]:
    """A CLIP BPE vocabulary of single letters plus a few whole words, and no merges."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    for word in ("a", "red", "teapot", "blue", "chair"):
        vocab.setdefault(word + "</w>", len(vocab))
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return str(folder / "vocab.json"), str(folder / "merges.txt"), len(vocab)


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e .[models])")
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-sd")
    vocab_file, merges_file, vocab_size = _write_tokenizer_files(root / "vocab")
    tokenizer = CLIPTokenizer(vocab_file, merges_file, model_max_length=77)
    with torch.random.fork_rng():  # seeded weight init, leaving other tests' global RNG alone
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, projection_dim=32))
        unet = UNet2DConditionModel(
            sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4, norm_num_groups=32, sample_size=SIZE)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    out = root / "pipeline"
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def generator(tiny_pipeline_dir):
    from deployments.image_generator.diffusers_backend import DiffusersGenerator

    return DiffusersGenerator(ImageGeneratorSettings(
        backend="diffusers", model_id="tiny/sd-test", local_dir=str(tiny_pipeline_dir),
        steps=2, size=SIZE, device="cpu"))


def test_loads_through_the_factory(tiny_pipeline_dir):
    from deployments.image_generator import make_backend

    backend = make_backend(ImageGeneratorSettings(
        backend="diffusers", local_dir=str(tiny_pipeline_dir), steps=2, size=SIZE))
    assert backend.name == "diffusers" and backend.available
    import torch

    assert backend.dtype == torch.float32  # auto on a CPU-only machine
    assert backend.pipe.unet.dtype == torch.float32


def test_generate_shape_dtype_and_seeding(generator):
    import torch

    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    a = generator.generate("a red teapot", seed=7)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert a.flags.c_contiguous
    assert torch.equal(torch.get_rng_state(), global_state), "generate touched the global RNG"
    b = generator.generate("a red teapot", seed=7)
    assert np.array_equal(a, b), "same seed, same image"
    c = generator.generate("a red teapot", seed=8)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0, "another seed, another image"
    d = generator.generate("a blue chair", seed=None)
    assert d.shape == (SIZE, SIZE, 3)


def test_empty_prompt_is_bad_input(generator):
    with pytest.raises(BadInput):
        generator.generate("  ", seed=1)


def test_missing_local_dir_names_path_hub_id_and_download(tmp_path):
    pytest.importorskip("diffusers")
    from deployments.image_generator.diffusers_backend import DiffusersGenerator

    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelUnavailable) as err:
        DiffusersGenerator(ImageGeneratorSettings(
            backend="diffusers", model_id="stabilityai/sdxl-turbo", local_dir=str(missing),
            device="cpu"))
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "stabilityai/sdxl-turbo" in msg
    assert "hf download stabilityai/sdxl-turbo" in msg and "local_dir" in msg

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="has no model_index.json"):
        DiffusersGenerator(ImageGeneratorSettings(
            backend="diffusers", local_dir=str(tmp_path / "empty"), device="cpu"))


def test_broken_weights_folder_is_model_unavailable(tmp_path):
    pytest.importorskip("diffusers")
    from deployments.image_generator.diffusers_backend import DiffusersGenerator

    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(ModelUnavailable) as err:
        DiffusersGenerator(ImageGeneratorSettings(
            backend="diffusers", model_id="x/y", local_dir=str(tmp_path), device="cpu"))
    assert f"from {tmp_path}" in str(err.value)


def test_missing_diffusers_package_names_the_extra(monkeypatch):
    from deployments.image_generator.diffusers_backend import DiffusersGenerator

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers → ImportError
    with pytest.raises(ModelUnavailable) as err:
        DiffusersGenerator(ImageGeneratorSettings(backend="diffusers"))
    assert "pip install -e .[models]" in str(err.value)


def test_size_must_suit_the_vae():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ImageGeneratorSettings(size=100)
