"""The compiled SAM 3 ViT (torch.compile, padded to bucket batch sizes) gives eager's masks.

Tiny random checkpoint on the CPU, backend "aot_eager" (traces and runs the same graph machinery as
inductor without generating kernels, so CI stays fast). Random weights: equivalence only, not quality.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deployments.segmenter.base import Box, Point, SegmentPrompt  # noqa: E402
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from deployments.segmenter.sam3.compile import batch_buckets, compile_wanted  # noqa: E402
from tests.support.sam3_testing import block_photo, write_tiny_checkpoint  # noqa: E402
from sam3d_common.settings import Sam3Settings  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny"))
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu", "embedding_cache_mb": 0}
    eager = Sam3Segmenter(Sam3Settings(**common), max_batch_size=4)
    compiled = Sam3Segmenter(Sam3Settings(**common, compile="on", compile_backend="aot_eager"), max_batch_size=4)
    return eager, compiled


def test_buckets_and_the_auto_setting():
    assert batch_buckets(1) == (1,) and batch_buckets(8) == (1, 2, 4, 8) and batch_buckets(6) == (1, 2, 4, 6)
    assert not compile_wanted("auto", torch.device("cpu")) and compile_wanted("auto", torch.device("cuda"))
    assert compile_wanted("on", torch.device("cpu")) and not compile_wanted("off", torch.device("cuda"))


def test_compiled_is_off_by_default_on_cpu_and_warmed_up_when_on(pair):
    eager, compiled = pair
    assert eager.models.compiled is None and eager.describe()["compiled_vit"] is None
    assert compiled.models.compiled.buckets == (1, 2, 4)
    assert compiled.describe()["compiled_vit"]["warmup_s"] > 0  # compiled in the constructor
    # Requests of any batch size and image size after the warm-up compile nothing more.
    from torch._dynamo.utils import counters

    compiled_frames = counters["stats"]["unique_graphs"]
    compiled.encode_batch([block_photo(224, 224, 3), block_photo(60, 50, 4), block_photo(224, 224, 5)], ["a", "b", "c"])
    compiled.encode_batch([block_photo(224, 224, 6)], ["d"])
    assert counters["stats"]["unique_graphs"] == compiled_frames


PROMPTS = [
    SegmentPrompt(points=[Point(80, 60, 1)]),
    SegmentPrompt(points=[Point(80, 60, 1), Point(10, 10, 0)]),
    SegmentPrompt(box=Box(50, 30, 110, 90)),
    SegmentPrompt(label="red mug"),
]


def test_compiled_and_eager_give_the_same_masks(pair):
    """A batch of 3 (padded to 4) and a batch of 1: features within float tolerance, masks ≥ 99.9 % equal."""
    eager, compiled = pair
    images = [block_photo(120, 160, 0), block_photo(90, 70, 1), block_photo(224, 224, 2)]
    for batch in (images, images[:1]):
        ids = [f"i{i}" for i in range(len(batch))]
        e_embs, c_embs = eager.encode_batch(batch, ids), compiled.encode_batch(batch, ids)
        for e, c in zip(e_embs, c_embs):
            for name in ("backbone", "image_embed", "high_res_feats_0", "high_res_feats_1"):
                torch.testing.assert_close(getattr(c, name), getattr(e, name), rtol=1e-4, atol=1e-4)
    same = total = 0
    for e, c in zip(eager.encode_batch(images[:1], ["a"]), compiled.encode_batch(images[:1], ["a"])):
        for prompt in PROMPTS:
            me, mc = eager.segment_with_embedding(e, prompt).mask, compiled.segment_with_embedding(c, prompt).mask
            same += int((me == mc).sum())
            total += me.size
    assert same / total >= 0.999



def test_whole_encoder_compiled_matches_eager(tmp_path):
    """compile_scope "encoder" (ViT + tracker neck in one graph): the same features and masks as eager."""
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt")
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu", "embedding_cache_mb": 0}
    eager = Sam3Segmenter(Sam3Settings(**common), max_batch_size=2)
    whole = Sam3Segmenter(Sam3Settings(**common, compile="on", compile_backend="aot_eager", compile_scope="encoder"),
                          max_batch_size=2)
    assert whole.describe()["compiled_vit"]["scope"] == "encoder"
    images = [block_photo(120, 160, 0), block_photo(224, 224, 2)]
    e_embs, w_embs = eager.encode_batch(images, ["a", "b"]), whole.encode_batch(images, ["a", "b"])
    for e, w in zip(e_embs, w_embs):
        for name in ("backbone", "image_embed", "high_res_feats_0", "high_res_feats_1"):
            torch.testing.assert_close(getattr(w, name), getattr(e, name), rtol=1e-4, atol=1e-4)
    for prompt in PROMPTS[:3]:
        me, mw = eager.segment_with_embedding(e_embs[0], prompt).mask, whole.segment_with_embedding(w_embs[0], prompt).mask
        assert (me == mw).mean() >= 0.999


def test_frozen_inductor_compile_matches_eager(tmp_path):
    """compile_freezing with inductor itself (C++ on the CPU, one bucket): weights folded in as constants,
    the same features and masks as eager; the freezing option is on only while the buckets compile."""
    import torch._inductor.config as inductor_config

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt")
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu", "embedding_cache_mb": 0}
    eager = Sam3Segmenter(Sam3Settings(**common), max_batch_size=1)
    torch._dynamo.reset()
    frozen = Sam3Segmenter(Sam3Settings(**common, compile="on", compile_backend="inductor", compile_freezing=True),
                           max_batch_size=1)
    assert frozen.models.compiled.freezing and not inductor_config.freezing
    image = block_photo(224, 224, 3)
    e, f = eager.encode_batch([image], ["a"])[0], frozen.encode_batch([image], ["a"])[0]
    for name in ("backbone", "image_embed", "high_res_feats_0", "high_res_feats_1"):
        torch.testing.assert_close(getattr(f, name), getattr(e, name), rtol=1e-4, atol=1e-4)
    for prompt in PROMPTS[:3]:
        me, mf = eager.segment_with_embedding(e, prompt).mask, frozen.segment_with_embedding(f, prompt).mask
        assert (me == mf).mean() >= 0.999


def test_dynamic_batch_shares_one_graph_above_batch_1(tmp_path):
    """compile_dynamic_batch with inductor and freezing (what a GPU replica would run): buckets 1, 2, 4
    compile two graphs (batch 1 static, 2 and 4 one graph with a symbolic batch), a larger max batch
    compiles nothing more, and every batch size gives eager's features and masks."""
    from torch._dynamo.utils import counters

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt")
    common = {"local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu", "embedding_cache_mb": 0}
    eager = Sam3Segmenter(Sam3Settings(**common), max_batch_size=1)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    dyn = Sam3Segmenter(Sam3Settings(**common, compile="on", compile_backend="inductor", compile_freezing=True,
                                     compile_dynamic_batch=True), max_batch_size=4)
    assert counters["stats"]["unique_graphs"] - before == 2
    assert dyn.describe()["compiled_vit"]["dynamic_batch"] is True
    dyn.set_max_batch_size(8)
    assert dyn.models.compiled.buckets == (1, 2, 4, 8)
    assert counters["stats"]["unique_graphs"] - before == 2
    images = [block_photo(224, 224, i) for i in range(5)] + [block_photo(90, 70, 9)]
    for batch in (images[:1], images[:3], images):  # buckets 1, 4 and 8
        ids = [f"i{i}" for i in range(len(batch))]
        for e, d in zip(eager.encode_batch(batch, ids), dyn.encode_batch(batch, ids)):
            for name in ("backbone", "image_embed", "high_res_feats_0", "high_res_feats_1"):
                torch.testing.assert_close(getattr(d, name), getattr(e, name), rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] - before == 2
    e, d = eager.encode_batch(images[:1], ["m"])[0], dyn.encode_batch(images[:1], ["m"])[0]
    for prompt in PROMPTS[:3]:
        assert (eager.segment_with_embedding(e, prompt).mask == dyn.segment_with_embedding(d, prompt).mask).mean() >= 0.999
