"""A payload or a prompt against an embedding waits for that embedding's encoder pass and for nothing
queued after it on the encoder's stream (the next batch, at full load)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deployments.segmenter.base import Point, SegmentPrompt  # noqa: E402
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from deployments.segmenter.sam3.encoder import after_encoding  # noqa: E402
from sam3d_common.settings import Sam3Settings  # noqa: E402
from tests.support.sam3_testing import write_tiny_checkpoint  # noqa: E402

BATCH_B_CYCLES = 2_000_000_000  # about a second of one GPU thread spinning: "the next batch"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny"))


def test_without_an_event_the_block_runs_as_it_is(ckpt):
    seg = Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), device="cpu", score_threshold=0.0))
    emb = seg.encode_batch([np.zeros((64, 64, 3), np.uint8)], ["cpu"])[0]
    with after_encoding(emb):
        assert emb.ready is None


@pytest.mark.gpu
def test_payload_and_prompt_skip_the_batch_queued_after_theirs(ckpt):
    gpu = Sam3Segmenter(Sam3Settings(local_dir=str(ckpt), device="cuda", compile="off", score_threshold=0.0,
                                     embedding_cache_mb=0))
    image = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    prompt = SegmentPrompt(points=[Point(80, 60, 1)])
    warm = gpu.encode_batch([image], ["warm"])[0]  # lazily made things (handles, workspaces of the side
    gpu.embedding_payload(warm)  # stream, which may synchronise the device once) made now
    gpu.segment_with_embedding(warm, prompt)
    torch.cuda.synchronize()

    torch.cuda._sleep(BATCH_B_CYCLES // 10)  # work queued before batch A: A's embedding is not ready yet
    emb = gpu.encode_batch([image], ["a"])[0]  # batch A, queued
    torch.cuda._sleep(BATCH_B_CYCLES)  # batch B, queued after A on the same stream
    b_done = torch.cuda.Event()
    b_done.record()
    payload = gpu.embedding_payload(emb)
    assert emb.ready.query(), "the payload waited for batch A"
    assert not b_done.query(), "the payload did not wait for batch B"
    mask = gpu.segment_with_embedding(emb, prompt).mask
    assert not b_done.query(), "the prompt did not wait for batch B"

    torch.cuda.synchronize()  # the same, with every queue drained: they read A's finished tensors
    assert payload == gpu.embedding_payload(emb)
    np.testing.assert_array_equal(mask, gpu.segment_with_embedding(emb, prompt).mask)
