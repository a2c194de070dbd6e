"""The full-size SAM 3 click decoder in onnxruntime-web's wasm build, CPU time per click.

    python bench/bench_click_decoder_cpu.py [--reps 15] [--baseline REV] [--out bench/results/click_decoder_cpu_v5.json]
    python bench/bench_click_decoder_cpu.py --profile [--reps 6] [--out bench/results/click_decoder_profile_v4.json]

Exports the decoder at full size with random weights (bench_viewer_browser.full_size_decoder) three
ways: `reference` (the tracker's modules as they are, NCHW features: the export before version 3),
`page` (onnx_decoder_photo: a photo graph run once per photo, then a low-rank click graph; what the
page runs) and `page_v3` (onnx_decoder_fast, the single graph of export version 3), plus with
--baseline REV `page_before`: the page's pair as the source tree of git revision REV exports it (git
archive into a temporary folder, exported there in a subprocess), for before/after in one run; then runs
bench/click_decoder_cpu.mjs: one thread, clicks alternating between the three, CPU time per click
(robust to the other work on a shared machine, unlike wall time; both are recorded), the per-photo CPU
time (photo graph, or the token layout of v3) and the share of low-resolution mask pixels on which
each agrees with `reference`, with the largest difference of the shown mask's logits over their scale
(random weights: agreement, never a quality figure). Raw output: the
script's JSON plus machine facts, with the load average before and after. Nothing is asserted.

--profile: where the time goes instead. bench/click_decoder_profile.mjs runs each click graph with
onnxruntime-web's session profiler (one thread, random inputs of the graph's shapes, one click), and
the kernel time is summed per operator type (per node the median of the runs after the first). The
profiler's own cost and the other work on a shared machine inflate every figure: compare shares within
one run, and take times per click from the plain run.
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


def summarize(stdout: str) -> dict:
    """The profiler's events per graph → kernel ms per operator type (per node: the median of the runs
    after the first) and the costliest nodes."""
    per_graph: dict[str, dict[str, dict]] = {}
    nodes = None
    for line in stdout.splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("@@graph "):
            nodes = per_graph.setdefault(line.split(" ", 1)[1], {})
        elif line.startswith('{"cat"') and nodes is not None:
            e = json.loads(line)
            if e["cat"] == "Node" and e["name"].endswith("_kernel_time"):
                n = nodes.setdefault(e["name"][: -len("_kernel_time")],
                                     {"op": e["args"]["op_name"], "out": e["args"].get("output_type_shape"), "durs": []})
                n["durs"].append(e["dur"])
    out = {}
    for graph, nodes in per_graph.items():
        ms = {k: sorted(v["durs"][1:] or v["durs"])[len(v["durs"][1:] or v["durs"]) // 2] / 1000 for k, v in nodes.items()}
        by_op: dict[str, float] = {}
        for k, v in ms.items():
            by_op[nodes[k]["op"]] = by_op.get(nodes[k]["op"], 0.0) + v
        total = sum(by_op.values())
        out[graph] = {"kernel_ms": round(total, 1),
                      "by_op": {k: {"ms": round(v, 1), "share": round(v / total, 3)}
                                for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
                      "top_nodes": [{"node": k, "op": nodes[k]["op"], "ms": round(v, 2), "out": nodes[k]["out"]}
                                    for k, v in sorted(ms.items(), key=lambda kv: -kv[1])[:12]]}
    return out


def baseline_pair(revision: str, tmp: Path) -> Path:
    """The page's full-size pair as git revision `revision` exports it (random weights, the same seed):
    its source tree from `git archive`, the export in a subprocess with that tree first on the path."""
    src = tmp / "baseline-src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    out = tmp / "page_before.onnx"
    code = ("import sys; from pathlib import Path; from bench.bench_viewer_browser import full_size_decoder; "
            "full_size_decoder(Path(sys.argv[1]), graph='photo')")
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, env=env, check=True, capture_output=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=None, help="clicks per graph (15; 6 with --profile)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="per-operator kernel time instead of CPU time per click")
    parser.add_argument("--baseline", default=None, help="git revision whose page pair also runs, as page_before")
    opts = parser.parse_args()
    opts.reps = opts.reps or (6 if opts.profile else 15)
    opts.out = opts.out or ROOT / f"bench/results/click_decoder_{'profile' if opts.profile else 'cpu'}_v5.json"
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules/onnxruntime-web").is_dir():
        sys.exit("needs node and `npm ci`")
    from deployments.segmenter.sam3.onnx_decoder import photo_graph_path

    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: full_size_decoder(Path(tmp) / f"{name}.onnx", graph=graph)
                 for name, graph in (("reference", "reference"), ("page", "photo"), ("page_v3", "tokens"))}
        if opts.baseline:
            paths["page_before"] = baseline_pair(opts.baseline, Path(tmp))
        pairs = {"page", "page_before"}
        specs = {k: f"{photo_graph_path(v)}+{v}" if k in pairs and not opts.profile else str(v) for k, v in paths.items()}
        load_before = os.getloadavg()
        script = "click_decoder_profile.mjs" if opts.profile else "click_decoder_cpu.mjs"
        proc = subprocess.run([node, str(ROOT / "bench" / script), str(opts.reps),
                               *(f"{k}={v}" for k, v in specs.items())],
                              capture_output=True, text=True, timeout=1800, cwd=ROOT)
        sizes = {k: v.stat().st_size for k, v in paths.items()}
        sizes["page_photo_graph"] = photo_graph_path(paths["page"]).stat().st_size
    if proc.returncode != 0:
        sys.exit(f"the node bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if opts.profile:
        out = {"machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": round(load_before[0], 1),
                           "load_average_1m_at_end": round(os.getloadavg()[0], 1)},
               "reps": opts.reps, "threads": 1, "graphs": summarize(proc.stdout)}
        opts.out.write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out, indent=1))
        return
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    load = os.getloadavg()
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "node": subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip(),
                       "load_average_1m_at_start": round(load_before[0], 1),
                       "load_average_1m_at_end": round(load[0], 1)},
           "decoder_bytes": sizes, "baseline_revision": opts.baseline, **result}
    d = result["decoders"]
    for name in [n for n in ("reference", "page_v3", "page_before") if n in d]:
        for stat in ("median", "min"):
            out[f"cpu_{stat}_ratio_{name}_over_page"] = round(d[name]["cpu_ms"][stat] / d["page"]["cpu_ms"][stat], 2)
    opts.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
