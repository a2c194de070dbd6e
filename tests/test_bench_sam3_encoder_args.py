"""bench_sam3_encoder refuses a --compile-variants typo before loading anything, so a misspelt flag
can't spend device time measuring the default variant under the misspelt name."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.parametrize("variants", ["default:vit:freeze", "reduce-overhead:vit"])
def test_unknown_compile_variant_is_refused_up_front(variants):
    done = subprocess.run([sys.executable, "-m", "bench.bench_sam3_encoder", "--tiny", "--cpu",
                           "--compile-variants", variants], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--compile-variants" in done.stderr and repr(variants) in done.stderr
    assert "first_request" not in done.stdout


def test_known_variants_pass_the_check():
    from bench.bench_sam3_encoder import bad_variant

    assert bad_variant("default:vit,default:vit:frozen,default:vit:cudnn:frozen,max-autotune-no-cudagraphs:encoder,"
                       "default:vit:frozen:dynamic") is None
    assert "flags in" in bad_variant("default:vit:cudnnn")


def test_unknown_lever_scope_is_refused_up_front():
    done = subprocess.run([sys.executable, "-m", "bench.bench_sam3_encoder", "--tiny", "--cpu", "--fp8-static",
                           "--lever-scopes", "vit,neck"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--lever-scopes: neck is not a compile_scope" in done.stderr
    assert "first_request" not in done.stdout


def test_summary_reads_the_lever_the_default_settings_serve():
    from bench.bench_sam3_encoder import summary

    levers = {name: {"encode_bs1": {"p50_ms": p50}, "serve_batch": {"images_per_s": 1000 / p50}}
              for name, p50 in (("hot_path", 27.4), ("compile_default_graph", 15.9),
                                ("compile_default_frozen_graph", 15.2))}
    assert summary({"levers": levers})["encode_lever"] == "compile_default_frozen_graph"  # compile_freezing is on
    del levers["compile_default_frozen_graph"]
    assert summary({"levers": levers})["encode_lever"] == "hot_path"  # an unfrozen compile is not what serves


@pytest.mark.parametrize("serve_max", ["8,32", "8,x"])
def test_serve_max_batch_beyond_the_buckets_is_refused_up_front(serve_max):
    done = subprocess.run([sys.executable, "-m", "bench.bench_sam3_encoder", "--tiny", "--cpu", "--max-batch", "16",
                           "--serve-max-batch", serve_max], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--serve-max-batch" in done.stderr
    assert "first_request" not in done.stdout


def test_summary_lists_serve_figures_per_max_batch_in_the_table_mode():
    from bench.bench_sam3_encoder import summary
    from bench.sam3_encoder_levers import serve_key

    lever = {"encode_bs1": {"p50_ms": 12.0}}
    for mode in ("pipelined", "enqueue"):
        for i, mb in enumerate((8, 16)):
            key = serve_key(None if mode == "pipelined" else mode, mb if i else None)
            lever[key] = {"images_per_s": mb * (10 if mode == "pipelined" else 9), "mode": mode, "max_batch": mb}
    assert set(lever) >= {"serve_batch", "serve_batch_mb16", "serve_batch_enqueue", "serve_batch_enqueue_mb16"}
    out = summary({"levers": {"hot_path": lever}})
    assert out["serve_batch_images_per_s"] == 80
    assert out["serve_batch_images_per_s_by_max_batch"] == {"8": 80, "16": 160}


def test_summary_files_read_back_by_summary():
    """A run's headline file (bench/results/*_summary.json) carries the levers it names, so summary()
    over it gives its top-level figures again: a reader of the file finds the measured lever."""
    import json
    from pathlib import Path

    from bench.bench_sam3_encoder import summary

    files = sorted(Path(__file__).parent.parent.joinpath("bench", "results").glob("sam3_encoder_*_summary.json"))
    assert files
    for path in files:
        report = json.loads(path.read_text())
        again = summary(report)
        assert again["encode_p50_ms"] is not None, path.name
        for key in ("encode_lever", "encode_p50_ms", "serve_batch_images_per_s", "compact_payload_ms"):
            assert again[key] == report[key], (path.name, key)
        assert report["fp8_static_opt_in_lever"] in report["levers"], path.name
