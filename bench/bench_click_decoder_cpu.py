"""The full-size SAM 3 click decoder in onnxruntime-web's wasm build, CPU time per click.

    python bench/bench_click_decoder_cpu.py [--reps 15] [--out bench/results/click_decoder_cpu.json]

Exports the decoder at full size with random weights (bench_viewer_browser.full_size_decoder) three
ways: `reference` (the tracker's modules as they are, NCHW features: the export before version 3),
`page` (onnx_decoder_fast, what the page runs) and `page_int8` (the page graph through onnxruntime's
dynamic quantization, constant matrices in 8 bits; a variant the page does not use), then runs
bench/click_decoder_cpu.mjs: one thread, clicks alternating between the three, CPU time per click
(robust to the other work on a shared machine, unlike wall time; both are recorded) and the share of
low-resolution mask pixels on which each agrees with `reference` (random weights: agreement, never a
quality figure). Raw output: the script's JSON plus machine facts. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_viewer_browser import full_size_decoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/click_decoder_cpu.json")
    opts = parser.parse_args()
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules/onnxruntime-web").is_dir():
        sys.exit("needs node and `npm ci`")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"reference": full_size_decoder(Path(tmp) / "reference.onnx", fast=False),
                 "page": full_size_decoder(Path(tmp) / "page.onnx", fast=True)}
        paths["page_int8"] = Path(tmp) / "page_int8.onnx"
        quantize_dynamic(str(paths["page"]), str(paths["page_int8"]), weight_type=QuantType.QUInt8)
        proc = subprocess.run([node, str(ROOT / "bench/click_decoder_cpu.mjs"), str(opts.reps),
                               *(f"{k}={v}" for k, v in paths.items())],
                              capture_output=True, text=True, timeout=1800, cwd=ROOT)
        sizes = {k: v.stat().st_size for k, v in paths.items()}
    if proc.returncode != 0:
        sys.exit(f"the node bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    load = os.getloadavg()
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "node": subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip(),
                       "load_average_1m_at_end": round(load[0], 1)},
           "decoder_bytes": sizes, **result}
    d = result["decoders"]
    out["cpu_median_ratio_reference_over_page"] = round(d["reference"]["cpu_ms"]["median"] / d["page"]["cpu_ms"]["median"], 2)
    opts.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
