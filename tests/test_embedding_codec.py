"""The browser payload: format round trips, size at the full SAM 3 shapes, and mask fidelity.

Fidelity is measured with random weights (no checkpoint is reachable here): the click decoder decodes
masks once from the features as the server holds them and once from the same features after encode →
decode, and the binary masks are compared pixel by pixel. That measures the codec's fidelity, not
segmentation quality. On CPU the tiny random model runs end to end; the GPU test (and the benchmark,
bench/results/sam3_encoder_*.txt) use the full-size model: 32-layer ViT at 1008 px and its decoder.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import zlib

import numpy as np
import pytest

from deployments.segmenter.sam3 import embedding_codec as codec

FULL = {"image_embed": (1, 256, 72, 72), "high_res_feats_0": (1, 32, 288, 288), "high_res_feats_1": (1, 64, 144, 144)}
GOAL_BYTES = 4_000_000


def features(shapes=FULL, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        # Channels of different scales and offsets, as FPN features have.
        scale = rng.uniform(0.01, 2.0, (1, shape[1], 1, 1)).astype(np.float32)
        shift = rng.normal(0, 0.5, (1, shape[1], 1, 1)).astype(np.float32)
        out[name] = (rng.standard_normal(shape, dtype=np.float32) * scale + shift).astype(np.float32)
    return out


SMALL = {"image_embed": (1, 8, 12, 12), "high_res_feats_0": (1, 3, 48, 47), "high_res_feats_1": (1, 4, 24, 24)}


def roundtrip(feats, profile):
    data = codec.encode(feats, embedding_id="e1", original_size=(480, 640), input_size=1008, profile=profile)
    header, out = codec.decode(data)
    return data, header, out


def test_exact_and_half_profiles():
    feats = features(SMALL)
    _, header, out = roundtrip(feats, "fp32")
    assert header["embedding_id"] == "e1" and header["original_size"] == [480, 640] and header["input_size"] == 1008
    for name in feats:
        np.testing.assert_array_equal(out[name], feats[name])
    _, _, out = roundtrip(feats, "fp16")
    for name in feats:
        np.testing.assert_allclose(out[name], feats[name], rtol=1e-3, atol=1e-4)


def test_range_rule_error_is_within_half_a_step():
    feats = features(SMALL, seed=3)
    data, header, out = roundtrip(feats, "int8")
    assert codec.read_header(data)[0]["profile"] == "int8"
    for t in header["tensors"]:
        assert t["encoding"] == "u8" and t["rule"] == {"clip": 1e-4}
        x = feats[t["name"]][0].reshape(t["shape"][1], -1)
        y = out[t["name"]][0].reshape(t["shape"][1], -1)
        lo, hi = np.quantile(x, [1e-4, 1 - 1e-4], axis=1)
        step = (hi - lo) / 255
        # Values inside each channel's range come back within half a step; those outside are clamped.
        assert (np.abs(np.clip(x, lo[:, None], hi[:, None]) - y) <= step[:, None] / 2 + 1e-6).all()


def test_sigma_rule_steps_and_never_clamps():
    feats = features(SMALL, seed=4)
    feats["image_embed"][0, 0, 0, 0] = 1e3  # an outlier widens its channel's step instead of being clamped
    _, header, out = roundtrip(feats, "compact")
    for t in header["tensors"]:
        assert t["encoding"] == "u8" and t["rule"] == {"sigma_steps": 14.0}
        x = feats[t["name"]][0].reshape(t["shape"][1], -1).astype(np.float64)
        y = out[t["name"]][0].reshape(t["shape"][1], -1)
        step = np.maximum(x.std(axis=1) / 14, (x.max(axis=1) - x.min(axis=1)) / 255)
        assert (np.abs(x - y) <= step[:, None] * 0.5001 + 1e-6).all()
    assert abs(out["image_embed"][0, 0, 0, 0] - 1e3) < 3


def test_over_budget_payloads_are_encoded_coarser():
    feats = features(seed=5)
    full = codec.encode(feats, embedding_id="e", original_size=(1, 1), input_size=1008, profile="compact")
    small = codec.encode(feats, embedding_id="e", original_size=(1, 1), input_size=1008, profile="compact",
                         max_bytes=len(full) - 300_000)
    header, _ = codec.decode(small)
    assert len(small) <= len(full) - 300_000
    assert all(t["rule"]["sigma_steps"] < 14.0 for t in header["tensors"])


def test_full_size_payload_sizes():
    feats = features()
    fp16 = codec.raw_nbytes(feats, np.float16)
    assert fp16 == 10_616_832  # the 10.6 MB a browser would need in fp16
    sizes = {p: len(roundtrip(feats, p)[0]) for p in ("fp16", "int8", "compact")}
    print("payload bytes at full size:", sizes)
    # Gaussian features are the worst case of the sigma rule for a given std (the largest entropy).
    assert sizes["compact"] <= GOAL_BYTES
    assert sizes["int8"] < sizes["fp16"] / 2


def test_malformed_payloads_are_rejected():
    data, _, _ = roundtrip(features(SMALL), "compact")
    with pytest.raises(codec.CodecError, match="magic"):
        codec.decode(b"XXXX" + data[4:])
    with pytest.raises(codec.CodecError, match="length"):
        codec.decode(data[:-3])
    with pytest.raises(codec.CodecError, match="version"):
        codec.decode(data[:4] + b"\x09\x00" + data[6:])
    with pytest.raises(codec.CodecError, match="short"):
        codec.decode(b"S3")
    with pytest.raises(codec.CodecError, match="profile"):
        codec.encode(features(SMALL), embedding_id="x", original_size=(1, 1), input_size=1, profile="nope")


def _synthetic_image(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([xx, yy, 0.5 + 0.5 * np.sin(9 * xx) * np.cos(7 * yy)], axis=-1)
    image[size // 3 : 2 * size // 3, 3 * size // 8 : 5 * size // 7] = (0.9, 0.1, 0.2)
    return (image * 255).astype(np.uint8)


def test_compact_payload_keeps_masks_of_the_tiny_model(tmp_path):
    """CPU: the tiny random SAM 3 end to end (its own encoder, decoder and feature sizes)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from deployments.segmenter.sam3.backend import Sam3Segmenter
    from tests.support.sam3_fidelity import codec_fidelity, random_prompts
    from tests.support.sam3_testing import write_tiny_checkpoint
    from sam3d_common.settings import Sam3Settings

    seg = Sam3Segmenter(Sam3Settings(local_dir=str(write_tiny_checkpoint(tmp_path / "tiny")), device="cpu"))
    feats = seg.embed(_synthetic_image(300)).click_features()
    size = seg.input_size
    result = codec_fidelity(seg.models.tracker, feats, size, "compact", random_prompts(size, count=32))
    print("codec fidelity, tiny random model:", result)
    assert result["pixel_agreement"] >= 0.98


@pytest.mark.gpu
def test_compact_payload_keeps_masks_of_the_full_size_model():
    """GPU: the full-size random tracker (32-layer ViT at 1008 px) and its decoder, in fp32."""
    import torch
    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    from tests.support.sam3_fidelity import codec_fidelity, random_prompts

    torch.manual_seed(0)
    with torch.device("cuda"):
        tracker = Sam3TrackerModel(Sam3TrackerConfig()).eval()
    size = tracker.config.prompt_encoder_config.image_size
    x = torch.tensor(_synthetic_image(size), dtype=torch.float32, device="cuda").permute(2, 0, 1)[None]
    with torch.no_grad():
        f0, f1, emb = tracker.get_image_embeddings((x / 255 - 0.5) / 0.5)
    feats = {"image_embed": emb.cpu().numpy(), "high_res_feats_0": f0.cpu().numpy(), "high_res_feats_1": f1.cpu().numpy()}
    assert {k: v.shape for k, v in feats.items()} == FULL
    result = codec_fidelity(tracker, feats, size, "compact", random_prompts(size, count=32))
    print("codec fidelity, full-size random model:", result)
    assert result["bytes"] <= GOAL_BYTES and result["pixel_agreement"] >= 0.98


@pytest.mark.parametrize("profile", ["int8", "compact", "fp16"])
def test_torch_tensors_encode_as_numpy_arrays_do(profile):
    """The server hands the codec its tensors (quantised where they live); the payload matches numpy's."""
    torch = pytest.importorskip("torch")
    feats = features(SMALL, seed=3)
    _, h_np, out_np = roundtrip(feats, profile)
    _, h_t, out_t = roundtrip({k: torch.from_numpy(v) for k, v in feats.items()}, profile)
    assert [t["shape"] for t in h_np["tensors"]] == [t["shape"] for t in h_t["tensors"]]
    for name, x in feats.items():
        # torch and numpy sum in different orders: lo/step agree to float32 rounding, a code may move by one
        # step (at most std/10 or the channel's range/255 in these profiles).
        c = x.reshape(x.shape[1], -1)
        tol = float((c.std(1) / 10 + (c.max(1) - c.min(1)) / 255).max()) + 1e-6
        assert np.abs(out_np[name] - out_t[name]).max() <= tol, name


@pytest.mark.gpu
def test_cuda_tensors_are_quantised_on_the_gpu_as_on_the_host():
    """GPU: the server's path (bf16 features quantised on the device) against numpy's, full-size shapes."""
    import torch

    feats = {k: torch.from_numpy(v).to("cuda", torch.bfloat16) for k, v in features().items()}
    host = {k: v.float().cpu().numpy() for k, v in feats.items()}
    _, h_gpu, out_gpu = roundtrip(feats, "compact")
    _, h_cpu, out_cpu = roundtrip(host, "compact")
    for name, x in host.items():
        c = x.reshape(x.shape[1], -1)
        tol = float((c.std(1) / 10 + (c.max(1) - c.min(1)) / 255).max()) + 1e-6
        assert np.abs(out_gpu[name] - out_cpu[name]).max() <= tol, name


@pytest.mark.parametrize("level,strategy", [(1, zlib.Z_HUFFMAN_ONLY), (1, zlib.Z_DEFAULT_STRATEGY),
                                            (-1, zlib.Z_DEFAULT_STRATEGY), (9, zlib.Z_FILTERED)])
def test_parallel_zlib_stream_is_one_standard_stream(tmp_path, level, strategy):
    """Chunks compressed on threads concatenate into one zlib stream that zlib and the
    browser's DecompressionStream("deflate") (here Node's) read back exactly."""
    from deployments.segmenter.sam3.embedding_codec import PARALLEL_CHUNK, zlib_stream

    rng = np.random.default_rng(7)
    body = (rng.normal(size=3 * PARALLEL_CHUNK + 12345) * 9 + 128).clip(0, 255).astype(np.uint8).tobytes()
    packed = zlib_stream(body, level, strategy)
    assert zlib.decompress(packed) == body
    single = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    assert len(packed) <= 1.01 * len(single.compress(body) + single.flush())
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    (tmp_path / "p.bin").write_bytes(packed)
    script = ("const fs=require('fs');const b=fs.readFileSync(process.argv[1]);"
              "new Response(new Blob([b]).stream().pipeThrough(new DecompressionStream('deflate')))"
              ".arrayBuffer().then(a=>{const h=require('crypto').createHash('sha256');"
              "h.update(Buffer.from(a));console.log(h.digest('hex'));});")
    out = subprocess.run([node, "-e", script, str(tmp_path / "p.bin")], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == hashlib.sha256(body).hexdigest()
