"""`segmenter.sam3.cuda_graph`: the compiled encoder replayed from one hand-captured CUDA graph per
batch bucket (deployments/segmenter/sam3/compile.py over deployments/cuda_graphs.py).

On the CPU: the setting is on by default and acts only where the encoder is compiled in the default
mode on CUDA, does nothing off CUDA (the encoder's output is bit for bit the compiled path's), and a
`threaded` CudaGraphReplay serialises
copy-in, replay and copy-out (shown with a stand-in graph whose replay is slow). On a GPU (marked):
the tiny model captures every bucket during the warm-up and replays from four threads at once, with
the outputs of the compiled function called without a graph.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deployments.cuda_graphs import CudaGraphReplay, _Captured  # noqa: E402
from deployments.segmenter.sam3.backend import Sam3Segmenter  # noqa: E402
from deployments.segmenter.sam3.compile import CompiledEncoder  # noqa: E402
from sam3d_common.settings import Sam3Settings, load_settings  # noqa: E402
from tests.support.sam3_testing import write_tiny_checkpoint  # noqa: E402

FEATURES = ("backbone", "image_embed", "high_res_feats_0", "high_res_feats_1")


def photo(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sam3_tiny_graph"))


def test_the_setting_is_on_by_default_and_acts_only_on_a_compiled_encoder_on_cuda():
    from deployments.segmenter.sam3.compile import cuda_graph_wanted

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert Sam3Settings().cuda_graph is True
    assert cuda_graph_wanted(Sam3Settings(), cuda)
    assert cuda_graph_wanted(Sam3Settings(compile="on"), cuda)
    assert not cuda_graph_wanted(Sam3Settings(), cpu)
    assert not cuda_graph_wanted(Sam3Settings(compile="on"), cpu)  # compiled on the CPU: no graphs
    assert not cuda_graph_wanted(Sam3Settings(compile="off"), cuda)
    assert cuda_graph_wanted(Sam3Settings(compile_mode="max-autotune-no-cudagraphs"), cuda)  # captured from it too
    assert not cuda_graph_wanted(Sam3Settings(cuda_graph=False), cuda)
    assert load_settings({"segmenter": {"backend": "sam3", "sam3": {"cuda_graph": False}}})


def test_on_the_cpu_the_setting_changes_nothing(checkpoint):
    """cuda_graph on the CPU: no graph object, nothing captured, the same bits as without it."""
    common = {"local_dir": str(checkpoint), "score_threshold": 0.0, "device": "cpu", "embedding_cache_mb": 0,
              "compile": "on", "compile_backend": "aot_eager"}
    plain = Sam3Segmenter(Sam3Settings(**common), max_batch_size=4)
    graphed = Sam3Segmenter(Sam3Settings(**common, cuda_graph=True), max_batch_size=4)
    assert graphed.models.compiled.graph is None
    assert graphed.describe()["compiled_vit"]["cuda_graph"] is None
    images = [photo(120, 160, 0), photo(224, 224, 1), photo(90, 70, 2)]
    for batch in (images, images[:1]):
        ids = [f"i{i}" for i in range(len(batch))]
        for p, g in zip(plain.encode_batch(batch, ids), graphed.encode_batch(batch, ids)):
            for name in FEATURES:
                assert torch.equal(getattr(g, name), getattr(p, name)), name
    # The encoder built with a graph directly (as on CUDA), warmed up on the CPU: nothing captured.
    enc = CompiledEncoder(plain.models, (1, 2), backend="aot_eager", cuda_graph=True)
    enc.warm_up(plain.models.pixels.size, plain.models.device)
    assert enc.graph is not None and enc.graph.captures == 0 and not enc.graphed and enc.graph_stats() is None


class _SlowGraph:
    """A stand-in CUDA graph: its replay reads the static input, waits, writes the static output,
    and counts how many replays overlap."""

    def __init__(self, static_in: torch.Tensor, static_out: torch.Tensor, overlap: dict):
        self.static_in, self.static_out, self.overlap = static_in, static_out, overlap

    def replay(self) -> None:
        with self.overlap["lock"]:
            self.overlap["now"] += 1
            self.overlap["most"] = max(self.overlap["most"], self.overlap["now"])
        x = self.static_in.clone()
        time.sleep(0.002)
        self.static_out.copy_(x * 2 + 1)
        with self.overlap["lock"]:
            self.overlap["now"] -= 1


class _StandInReplay(CudaGraphReplay):
    """CudaGraphReplay's bookkeeping and lock over CPU tensors and a stand-in graph."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.overlap = {"lock": threading.Lock(), "now": 0, "most": 0}

    def run(self, x):
        return x * 2 + 1

    def _graphable(self, tensors) -> bool:
        return self.enabled and not torch.is_grad_enabled() and bool(tensors)

    def _capture(self, leaves, spec) -> _Captured:
        static = [t.clone() for t in leaves if isinstance(t, torch.Tensor)]
        out = torch.empty_like(static[0])
        self.captures += 1
        return _Captured(_SlowGraph(static[0], out, self.overlap), static, out)


def test_threaded_replays_come_one_at_a_time_and_each_gets_its_own_result():
    replay = _StandInReplay(threaded=True, max_graphs=2)
    inputs = [torch.full((1 + i % 2, 4), float(i)) for i in range(48)]  # two shapes: two graphs

    def call(x):
        with torch.inference_mode():  # per thread, as encode_images sets it
            return replay(x)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(call, inputs))
    for x, y in zip(inputs, got):
        assert torch.equal(y, x * 2 + 1)
    assert replay.captures == 2 and replay.replays == 48 and replay.overlap["most"] == 1
    replay.reset()
    assert not replay._graphs


@pytest.mark.gpu
@pytest.mark.parametrize("dynamic", [False, True])
def test_on_cuda_every_bucket_is_captured_and_replays_from_several_threads(checkpoint, dynamic):
    """float32 so that the tolerance can be tight: the graph replays the compiled function's own
    kernels; only where a library picks its kernel per stream (the capture's stream) may the last
    bits differ, hence 1e-4 rather than bit equality. With compile_dynamic_batch, buckets 2 and 4
    are captured from the one graph compiled for both."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    settings = Sam3Settings(local_dir=str(checkpoint), device="cuda", dtype="float32", score_threshold=0.0,
                            embedding_cache_mb=0, compile="on", cuda_graph=True, compile_dynamic_batch=dynamic)
    seg = Sam3Segmenter(settings, max_batch_size=4)
    assert counters["stats"]["unique_graphs"] - before == (2 if dynamic else 3)
    enc = seg.models.compiled
    assert enc.graphed == {1, 2, 4} and enc.graph.captures == 3
    stats = seg.describe()["compiled_vit"]["cuda_graph"]
    assert stats["batch_sizes"] == [1, 2, 4] and stats["capture_s"] > 0
    size = seg.models.pixels.size
    g = torch.Generator(device="cuda").manual_seed(0)
    calls = [torch.randint(0, 256, (1 + i % 4, size, size, 3), device="cuda", generator=g, dtype=torch.uint8)
             for i in range(16)]  # uploaded pixels, batches of 1 to 4 (3 → 4)
    with torch.inference_mode():
        want = []
        for px in calls:  # the compiled function without a graph, padded as the encoder pads
            b = enc.bucket(px.shape[0])
            padded = torch.cat([px, px.new_zeros((b - px.shape[0], *px.shape[1:]))])
            want.append([t[: px.shape[0]].clone() for t in enc._fn(padded)])
        torch.cuda.synchronize()
        replays = enc.graph.replays

        def encode(px):
            with torch.inference_mode():
                return enc(px)

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(encode, calls))
        torch.cuda.synchronize()
    assert enc.graph.replays - replays == 16 and enc.graph.captures == 3  # nothing captured at request time
    for w, o in zip(want, got):
        for a, b in zip(w, o):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    # Through the backend's own entry point, from threads too: the graph's outputs are the caller's own.
    images = [photo(224, 224, s) for s in range(6)]
    with ThreadPoolExecutor(3) as pool:
        embs = list(pool.map(lambda im: seg.encode_batch([im])[0], images))
    for im, e in zip(images, embs):
        again = seg.encode_batch([im])[0]
        for name in FEATURES:
            torch.testing.assert_close(getattr(e, name), getattr(again, name), rtol=1e-4, atol=1e-4)
