"""SAM 3 backend on a tiny random checkpoint saved in the official (sam3_video) layout.

Random weights: these tests check wiring, shapes, equivalence with transformers' own forward passes and
error handling — never mask quality.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sam3d_common.errors import BadInput, ModelUnavailable, NotConfigured  # noqa: E402
from deployments.segmenter import Segmenter  # noqa: E402
from deployments.segmenter.base import Box, Point, SegmentPrompt  # noqa: E402
from deployments.segmenter.sam3.embedding_cache import EmbeddingCache  # noqa: E402
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from deployments.segmenter.sam3.encoder import detector_vision_embeds, finished, pixel_values  # noqa: E402
from tests.support.sam3_testing import write_tiny_checkpoint  # noqa: E402
from sam3d_common.settings import Sam3Settings  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny"))


@pytest.fixture(scope="module")
def seg(ckpt):
    return Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), score_threshold=0.0, device="cpu"))


def photo(h=120, w=160, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = (200, 40, 40)
    return img


def test_loads_official_layout_once_with_shared_backbone(seg, ckpt):
    from safetensors.torch import load_file

    m = seg.models
    assert m.source == str(ckpt) and m.device.type == "cpu" and m.dtype == torch.float32
    assert m.tracker.vision_encoder.backbone is m.detector.vision_encoder.backbone
    assert m.tokenizer is not None and m.pixels.size == 224 == seg.input_size
    saved = load_file(str(ckpt / "model.safetensors"))
    # The tracker's decoder and neck come from the checkpoint, not from a fresh random init.
    for ours, key in [
        (m.tracker.mask_decoder.iou_token.weight, "tracker_model.mask_decoder.iou_token.weight"),
        (m.tracker.prompt_encoder.point_embed.weight, "tracker_model.prompt_encoder.point_embed.weight"),
        (m.tracker.vision_encoder.neck.fpn_layers[0].proj2.weight, "tracker_neck.fpn_layers.0.proj2.weight"),
        (m.detector.vision_encoder.neck.fpn_layers[0].proj2.weight, "detector_model.vision_encoder.neck.fpn_layers.0.proj2.weight"),
    ]:
        assert torch.equal(ours.detach(), saved[key])


def test_loads_what_save_pretrained_wrote(tmp_path):
    """transformers 5.23 saves the tracker as tracker_model.tracker_model.*; that loads too, completely."""
    from safetensors import safe_open

    folder = write_tiny_checkpoint(tmp_path / "raw", seed=3, hub_layout=False)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    seg = Sam3Segmenter(Sam3Settings(local_dir=str(folder), device="cpu"))  # raises if anything is missing
    key = next(k for k in keys if k.endswith("mask_decoder.iou_token.weight") and k.startswith("tracker_model."))
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert torch.equal(seg.models.tracker.mask_decoder.iou_token.weight.detach(), f.get_tensor(key))


def test_one_encoder_pass_matches_transformers_forward(seg):
    """Our single ViT pass must give what the tracker and the detector each compute from pixels."""
    m = seg.models
    images = [photo(), photo(90, 70, seed=1)]
    embs = seg.encode_batch(images)
    px = pixel_values(m, images)
    with torch.no_grad():
        ref = m.tracker.get_image_embeddings(px)
        tok = m.tokenizer(["red mug"] * 2, padding="max_length", max_length=32, return_tensors="pt")
        direct = m.detector(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask)
    for i, emb in enumerate(embs):
        for got, want in zip((emb.high_res_feats_0, emb.high_res_feats_1, emb.image_embed), ref):
            torch.testing.assert_close(got[0], want[i], rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            reused = m.detector(
                vision_embeds=detector_vision_embeds(m, emb.backbone),
                input_ids=tok.input_ids[i : i + 1],
                attention_mask=tok.attention_mask[i : i + 1],
            )
        torch.testing.assert_close(reused.pred_masks[0], direct.pred_masks[i], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(reused.pred_logits[0], direct.pred_logits[i], rtol=1e-4, atol=1e-4)
    # A batch of two gives each image what it gets alone.
    alone = seg.encode_batch([images[1]])[0]
    torch.testing.assert_close(alone.image_embed, embs[1].image_embed, rtol=1e-4, atol=1e-5)
    assert embs[1].original_size == (90, 70)


PROMPTS = {
    "text": SegmentPrompt(label="red mug"),
    "one click": SegmentPrompt(points=[Point(80, 60, 1)]),
    "clicks +/-": SegmentPrompt(points=[Point(80, 60, 1), Point(10, 10, 0)]),
    "box": SegmentPrompt(box=Box(50, 30, 110, 90)),
    "click + box": SegmentPrompt(points=[Point(80, 60, 1)], box=Box(50, 30, 110, 90)),
    "label + box": SegmentPrompt(label="mug", box=Box(50, 30, 110, 90)),
    "refine a mask": SegmentPrompt(points=[Point(80, 60, 1)], mask=np.ones((120, 160), bool)),
}


@pytest.fixture(scope="module")
def deployment(ckpt, tmp_path_factory):
    """The Serve deployment's class, instantiated in-process (no Ray) with the SAM 3 backend."""
    cfg = {"backend": "sam3", "sam3": {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu",
                                       "onnx_cache_dir": str(tmp_path_factory.mktemp("onnx"))}}
    return Segmenter.func_or_class(cfg)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompts_through_the_deployment(deployment, name):
    image = photo()
    result = asyncio.run(deployment.segment(image, PROMPTS[name]))
    assert result.backend == "sam3"
    assert result.mask.shape == image.shape[:2] and result.mask.dtype == bool
    assert 0.0 <= result.score <= 1.0
    for mask, score in result.instances:
        assert mask.shape == image.shape[:2] and 0.0 <= score <= 1.0
    if name == "one click":  # the two other multimask candidates, best first
        assert len(result.instances) == 2
    if name == "text":  # threshold 0: every query of the tiny detector (8) up to max_instances
        assert len(result.instances) == 7
        assert all(result.score >= s for _, s in result.instances)


def test_image_is_encoded_once_for_many_prompts(deployment):
    image = photo(seed=7)
    before = deployment.backend.images_encoded
    for prompt in PROMPTS.values():
        asyncio.run(deployment.segment(image, prompt))
    out = asyncio.run(deployment.embed(image))
    assert deployment.backend.images_encoded == before + 1
    assert out["encoded"] is False and out["embedding_id"] == deployment.backend.image_id(image)
    result = asyncio.run(deployment.segment_cached(out["embedding_id"], PROMPTS["box"]))
    assert result.mask.shape == image.shape[:2]
    assert deployment.backend.images_encoded == before + 1


def test_concurrent_requests_for_one_new_image_share_one_encoder_run(deployment):
    image = photo(seed=11)
    before = deployment.backend.images_encoded

    async def both():
        return await asyncio.gather(deployment.embed(image), deployment.segment(image, PROMPTS["one click"]))

    embedded, _ = asyncio.run(both())
    assert deployment.backend.images_encoded == before + 1
    assert embedded["payload"][:4] == b"S3EB"


def test_bad_prompts_are_bad_input(seg):
    image = photo()
    with pytest.raises(BadInput, match="needs something"):
        seg.segment(image, SegmentPrompt())
    # Clicks against a photo are checked by the app, which holds it as sent; against a cached
    # embedding, whose size only the segmenter knows, here.
    with pytest.raises(BadInput, match="outside the 160x120 image"):
        seg.segment_with_embedding(seg.embed(image), SegmentPrompt(points=[Point(500, 5, 1)]))
    with pytest.raises(BadInput, match="labels"):
        seg.segment(image, SegmentPrompt(points=[Point(5, 5, 2)]))
    with pytest.raises(BadInput, match="empty or outside"):
        seg.segment(image, SegmentPrompt(box=Box(50, 50, 40, 60)))
    with pytest.raises(BadInput, match="HxWx3"):
        seg.segment(image[:, :, 0], SegmentPrompt(label="cat"))


def test_text_prompt_with_nothing_above_threshold(ckpt):
    strict = Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), score_threshold=1.0, device="cpu"))
    with pytest.raises(BadInput, match="found no 'cat'"):
        strict.segment(photo(), SegmentPrompt(label="cat"))


def test_missing_local_weights_name_hub_id_path_and_gating(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelUnavailable) as err:
        Sam3Segmenter(Sam3Settings(local_dir=str(missing), device="cpu"))
    msg = str(err.value)
    for part in (str(missing), "facebook/sam3", "gated", "hf download", "local_dir"):
        assert part in msg
    assert err.value.status == 503


def test_unreachable_hub_names_hub_id_and_gating(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailable) as err:
        Sam3Segmenter(Sam3Settings(model_id="example-org/sam3-not-here", device="cpu"))
    msg = str(err.value)
    for part in ("example-org/sam3-not-here", "no local_dir configured", "gated", "HF_HUB_OFFLINE"):
        assert part in msg


def test_detector_only_checkpoint_is_refused(tmp_path, ckpt):
    import json
    import shutil

    shutil.copytree(ckpt, tmp_path / "det", dirs_exist_ok=True)
    cfg = json.loads((tmp_path / "det" / "config.json").read_text())
    (tmp_path / "det" / "config.json").write_text(json.dumps({**cfg["detector_config"], "model_type": "sam3"}))
    with pytest.raises(ModelUnavailable, match="sam3_video"):
        Sam3Segmenter(Sam3Settings(local_dir=str(tmp_path / "det"), device="cpu"))


def test_grabcut_deployment_refuses_sam3_methods():
    dep = Segmenter.func_or_class({})
    with pytest.raises(NotConfigured, match="backend: sam3"):
        asyncio.run(dep.embed(photo()))
    with pytest.raises(NotConfigured):
        asyncio.run(dep.segment_cached("abc", SegmentPrompt(label="x")))
    with pytest.raises(NotConfigured):
        asyncio.run(dep.click_decoder_onnx())


class _Blob:
    def __init__(self, n):
        self.nbytes = n


def test_cache_is_lru_and_bounded_by_bytes():
    cache = EmbeddingCache(100)
    for key, size in [("a", 40), ("b", 40), ("c", 10)]:
        assert cache.put(key, _Blob(size))
    assert cache.get("a") is not None  # a becomes the most recent
    cache.put("d", _Blob(40))  # 130 > 100: the least recent (b) goes
    assert "b" not in cache and "a" in cache and cache.nbytes == 90
    assert not cache.put("huge", _Blob(101)) and "huge" not in cache
    assert EmbeddingCache(0).put("x", _Blob(1)) is False


def test_backend_cache_respects_its_memory_bound(ckpt):
    small = Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), device="cpu", embedding_cache_mb=1))
    per_image = small.embed(photo(seed=100)).nbytes
    for seed in range(101, 110):
        small.embed(photo(seed=seed))
    stats = small.cache.stats()
    assert stats["bytes"] <= 1024 * 1024 and stats["entries"] == (1024 * 1024) // per_image
    assert stats["evictions"] == 10 - stats["entries"]


@pytest.mark.gpu
def test_bf16_on_cuda(ckpt):
    gpu = Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), device="cuda", score_threshold=0.0))
    assert gpu.models.dtype in (torch.bfloat16, torch.float16)
    for prompt in PROMPTS.values():
        assert gpu.segment(photo(), prompt).mask.shape == (120, 160)


def test_cudnn_benchmark_leaves_the_cpu_alone(ckpt):
    torch.backends.cudnn.benchmark = False
    Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), device="cpu", cudnn_benchmark=True))
    assert torch.backends.cudnn.benchmark is False  # on CUDA only: a CPU replica has no cuDNN to tune


@pytest.mark.gpu
def test_cudnn_benchmark_on_cuda_keeps_the_masks(ckpt):
    common = {"local_dir": str(ckpt), "device": "cuda", "score_threshold": 0.0, "embedding_cache_mb": 0}
    torch.backends.cudnn.benchmark = False
    plain = Sam3Segmenter(Sam3Settings(**common))
    try:
        tuned = Sam3Segmenter(Sam3Settings(**common, cudnn_benchmark=True))
        assert torch.backends.cudnn.benchmark is True
        same = total = 0
        for seed in range(3):
            image = photo(seed=seed)
            a, b = plain.encode_batch([image], ["a"])[0], tuned.encode_batch([image], ["b"])[0]
            torch.testing.assert_close(b.backbone.float(), a.backbone.float(), rtol=0.05, atol=0.05)
            for prompt in PROMPTS.values():
                ma, mb = plain.segment_with_embedding(a, prompt).mask, tuned.segment_with_embedding(b, prompt).mask
                same += int((ma == mb).sum())
                total += ma.size
        assert same / total >= 0.99, same / total  # other convolution algorithms, the same convolutions
    finally:
        torch.backends.cudnn.benchmark = False


@pytest.mark.gpu
def test_encode_batch_on_cuda_never_waits_for_the_gpu(ckpt):
    """The encoder thread only queues work: no call in encode_batch synchronises with the GPU (a pageable
    copy, .item(), a stream sync), so it can prepare the next batch while one runs. torch's sync debug
    mode turns any such call into an error; compiled and graphed, as the defaults run on CUDA."""
    gpu = Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), device="cuda", embedding_cache_mb=0), max_batch_size=2)
    size = gpu.models.pixels.size
    batches = [[photo(size, size, seed=1)], [photo(size, size, seed=2), photo(90, 70, seed=3)]]
    for images in batches:  # once before: anything lazily made on a first call is made now
        gpu.encode_batch(images, [f"w{i}" for i in range(len(images))])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images in batches:
            out = gpu.encode_batch(images, [f"e{i}" for i in range(len(images))])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(out) == 2 and out[1].original_size == (90, 70)
    assert out[0].ready is out[1].ready  # one event per batch, recorded after its last copy
    asyncio.run(finished(out))
    assert out[0].ready.query()


def test_finished_waits_for_every_ready_event(seg):
    """finished() returns once each embedding's event says done; CPU embeddings carry none."""
    assert seg.encode_batch([photo(seed=8)], ["cpu"])[0].ready is None

    class Event:
        def __init__(self, polls):
            self.polls = polls

        def query(self):
            self.polls -= 1
            return self.polls < 0

    first, second = Event(3), Event(5)
    items = [type("E", (), {"ready": e})() for e in (first, second, second)] + [object()]
    asyncio.run(finished(items, poll_s=0.0))
    assert first.polls == -1 and second.polls == -1  # each polled until done, the shared one once through


def test_encode_batch_hashes_only_without_ids(seg, monkeypatch):
    """With ids (the deployment's path) the encoder thread hashes nothing; a batch of one is not copied."""
    from deployments.segmenter.sam3 import backend as sam3_module

    calls = []
    monkeypatch.setattr(sam3_module, "image_id", lambda im: calls.append(1) or "x")
    img = photo(seed=6)
    emb = seg.encode_batch([img], ["given"])[0]
    assert calls == [] and emb.embedding_id == "given"
    assert seg.encode_batch([img])[0].embedding_id == "x" and calls == [1]
    pair = seg.encode_batch([img, photo(seed=7)], ["a", "b"])
    torch.testing.assert_close(pair[0].image_embed, emb.image_embed, rtol=1e-4, atol=1e-5)
    assert pair[0].image_embed.untyped_storage().data_ptr() != pair[1].image_embed.untyped_storage().data_ptr()
