"""SAM 3 preprocessing (deployments/segmenter/sam3/encoder.py): uint8 photos of any size → the encoder's
uploaded pixels (one upload per batch, the identity resize skipped) → normalised in the encoder, as
transformers' Sam3 image processor prepares them. Tiny random checkpoint on the CPU.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from deployments.segmenter.sam3.encoder import pixel_values, upload_pixels  # noqa: E402
from tests.support.sam3_testing import write_tiny_checkpoint  # noqa: E402
from sam3d_common.settings import Sam3Settings  # noqa: E402


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny_pre"))
    return Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), score_threshold=0.0, device="cpu"))


def photo(h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _resized_reference(m, images):
    """The resize as transformers' image processor does it, image by image, always resizing: B x 3 x S x S
    float32 holding whole levels 0..255."""
    import torch.nn.functional as F

    out = []
    for image in images:
        t = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(m.pixels.size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        out.append(t.round_().clamp_(0, 255))
    return torch.cat(out)


def _pixel_values_reference(m, images):
    """The preprocessing as transformers' image processor does it: resized, scaled, normalised."""
    mean = torch.tensor(m.pixels.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.pixels.std).view(1, 3, 1, 1)
    return ((_resized_reference(m, images) / 255.0 - mean) / std).to(m.dtype)


def test_preprocessing_uploads_once_and_skips_the_identity_resize(seg):
    """Already model-sized images (no resize), other sizes and read-only arrays all give the reference pixels."""
    m = seg.models
    s = m.pixels.size
    native = [photo(s, s, seed=2), photo(s, s, seed=3)]
    mixed = [photo(s, s, seed=4), photo(90, 70, seed=5)]
    mixed[1].setflags(write=False)  # as arrays from Ray's object store arrive
    for images in (native, mixed, [native[0]]):
        assert torch.equal(pixel_values(m, images), _pixel_values_reference(m, images))


def test_the_encoder_is_given_the_resized_uint8_pixels(seg):
    """upload_pixels: what the (compiled) encoder takes, B x S x S x 3 uint8, the reference resize's levels;
    its normalisation happens inside the encoder (encode_core), as pixel_values does it."""
    m = seg.models
    s = m.pixels.size
    images = [photo(s, s, seed=9), photo(90, 70, seed=10), photo(33, 200, seed=11)]
    up = upload_pixels(m, images)
    assert up.dtype == torch.uint8 and tuple(up.shape) == (3, s, s, 3)
    assert torch.equal(up.permute(0, 3, 1, 2).float(), _resized_reference(m, images))
    assert torch.equal(upload_pixels(m, images[:1])[0], torch.from_numpy(images[0]))  # not resized: as sent


def test_resize_is_within_one_level_of_the_image_processors_cpu_path(seg):
    """transformers' Sam3 image processor resizes with torchvision, which on the CPU runs torch's native
    uint8 antialiased bilinear kernel (fixed point) and elsewhere the float path this encoder runs on every
    device (interpolate in float32, round). On real photos the two differ by at most one level."""
    import torch.nn.functional as F
    from skimage import data

    m = seg.models
    s = m.pixels.size
    for image in (data.astronaut(), data.coffee(), data.rocket(), photo(90, 70, seed=12)):
        ours = upload_pixels(m, [image])[0].permute(2, 0, 1).int()
        native = F.interpolate(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None], size=(s, s),
                               mode="bilinear", align_corners=False, antialias=True)[0].int()
        diff = (ours - native).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.25, (image.shape, diff.float().mean())


def test_normalisation_constants_are_made_once(seg):
    """pixel_values reuses its mean/std tensors: made per call on CUDA, each would be a copy from pageable
    memory that waits for the GPU's queued work (the next test checks that on a GPU)."""
    from deployments.segmenter.sam3.encoder import _normalisation

    m = seg.models
    pixel_values(m, [photo(seed=6)])
    made = _normalisation.cache_info().misses
    pixel_values(m, [photo(seed=7)])
    pixel_values(m, [photo(seed=8)])
    assert _normalisation.cache_info().misses == made
    mean, std = _normalisation(m.pixels.mean, m.pixels.std, m.device)
    assert mean is _normalisation(m.pixels.mean, m.pixels.std, m.device)[0] and not mean.is_inference()
