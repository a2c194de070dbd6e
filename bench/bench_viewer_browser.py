"""The viewer in headless Chromium: voxel frame decode + upload, click → mask, GLB orbit frame rate.

    python -m bench.bench_viewer_browser [--out bench/results/viewer_browser.json]

Starts tests/viewer_server.py with a tiny random-weight SAM 3 (so clicks are decoded in the browser),
puts the benchmark inputs in its artifact store, and runs bench/viewer_browser.mjs in the system
Chromium (WebGL through SwiftShader: a CPU rasteriser, so draw figures are CPU-bound and far below a
real GPU's; decode and buffer-fill figures are the browser's JavaScript and hold on any machine):

1. a 30,000-voxel 64^3 frame (bench_codec's photo-painted shell; key frame and the next delta frame,
   deflated at the server's default level 1): decode (VoxelStreamDecoder), fill of the InstancedMesh
   matrices and colours (Scene.setVoxels), and draw with the upload (render + a 1-pixel readback);
2. click → mask with onnxruntime-web (wasm; threads as the page sets them): the tiny decoder of the
   test checkpoint on a real embedding, and the full-size decoder (random weights, 17 MB) on random
   full-size features (1x256x72x72, 1x32x288x288, 1x64x144x144): first click (session warm-up
   included), 20 more, alternating between the graphs: the pair the page uses (export v4,
   onnx_decoder_photo: its photo graph once per photo, photo_ms), the previous single graph
   (page_v3, onnx_decoder_fast, features laid out once per photo: photo_ms) and the tracker's modules
   exported as they are (reference), with the share of mask pixels on which each agrees with the
   reference (random weights: agreement, not quality);
   click → overlay drawn for a 4032x3024 phone photo, decoding at the photo's size vs at the view
   size the page uses (segment.js viewSize);
3. frames per second while orbiting a 200,000-triangle meshopt-compressed GLB (model.glb's default
   face budget), and the same GLB's load time.

Raw output: the JSON the page measured, plus machine facts. Nothing is asserted.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.bench_codec import frames_30k  # noqa: E402
from tests.meshopt_glb import meshopt_glb, sphere  # noqa: E402
from tests.photos import DATA  # noqa: E402
from serve_app.protocol import StreamEncoder  # noqa: E402
from sam3d_common.store import ArtifactStore  # noqa: E402

BENCH_ID = "0000000000000000000000000000beef"


def full_size_decoder(path: Path, graph: str = "photo") -> Path:
    """The click decoder at full SAM 3 size (256-wide, 72² embedding, 1008 px input), random weights:
    only its prompt encoder and mask decoder are built, which is all the ONNX graph holds. graph: as
    export_click_decoder's ("photo" also writes onnx_decoder.photo_graph_path(path))."""
    import types

    import torch
    import transformers.models.sam3_tracker.modeling_sam3_tracker as tracker_modules
    from transformers import Sam3TrackerConfig

    from deployments.segmenter.sam3.onnx_decoder import export_click_decoder

    torch.manual_seed(0)
    cfg = Sam3TrackerConfig()
    parts = types.SimpleNamespace(
        config=cfg,
        prompt_encoder=tracker_modules.Sam3TrackerPromptEncoder(cfg.prompt_encoder_config),
        mask_decoder=tracker_modules.Sam3TrackerMaskDecoder(cfg.mask_decoder_config),
        shared_image_embedding=tracker_modules.Sam3TrackerPositionalEmbedding(cfg.prompt_encoder_config))
    return export_click_decoder(parts, path, graph=graph)


def prepare(store_dir: Path) -> dict:
    store = ArtifactStore(str(store_dir))
    key, nxt = frames_30k()["photo-painted shell"]
    enc = StreamEncoder(key_every=16, zlib_level=1)
    key_msg, delta_msg = enc.encode(key), enc.encode(nxt)
    store.put(BENCH_ID, "frame-key.bin", key_msg)
    store.put(BENCH_ID, "frame-delta.bin", delta_msg)
    pos, faces, colors = sphere(224)
    store.put(BENCH_ID, "big.glb", meshopt_glb(pos, faces, colors))
    from deployments.segmenter.sam3.onnx_decoder import photo_graph_path

    paths = {name: full_size_decoder(store_dir / f"decoder-{name}.onnx", graph=graph)
             for name, graph in (("page", "photo"), ("page_v3", "tokens"), ("reference", "reference"))}
    paths["page_photo"] = photo_graph_path(paths["page"])
    urls, sizes = {}, {}
    for name, path in paths.items():
        store.put(BENCH_ID, f"decoder-{name}.bin", path.read_bytes())
        urls[name], sizes[name] = f"/v1/artifacts/{BENCH_ID}/decoder-{name}.bin", path.stat().st_size
    return {"full_decoder_bytes": sizes, "full_decoder_urls": urls,
            "voxels": key.count, "key_bytes": len(key_msg), "delta_bytes": len(delta_msg),
            "glb_triangles": len(faces), "glb_url": f"/v1/artifacts/{BENCH_ID}/big.glb",
            "key_url": f"/v1/artifacts/{BENCH_ID}/frame-key.bin", "delta_url": f"/v1/artifacts/{BENCH_ID}/frame-delta.bin"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/viewer_browser.json")
    opts = parser.parse_args()
    node = shutil.which("node")
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if node is None or not Path(chromium).exists():
        sys.exit("needs node and Chromium (apt-get install chromium; npm ci)")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        inputs = prepare(store)
        server = subprocess.Popen([sys.executable, str(ROOT / "tests/viewer_server.py"), str(store), "--sam3"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        try:
            info = json.loads(server.stdout.readline())
            (Path(tmp) / "in.json").write_text(json.dumps({**inputs, "url": info["url"]}))
            load_before = os.getloadavg()
            t0 = time.time()
            proc = subprocess.run([node, str(ROOT / "bench/viewer_browser.mjs"), str(Path(tmp) / "in.json"),
                                   str(DATA / "coffee.png")],
                                  capture_output=True, text=True, timeout=900, cwd=ROOT,
                                  env={**os.environ, "CHROMIUM": chromium})
        finally:
            server.terminate()
            server.wait(timeout=20)
    if proc.returncode != 0:
        sys.exit(f"the browser bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    chromium_version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "browser": chromium_version,
                       "webgl": "SwiftShader (CPU)", "seconds": round(time.time() - t0, 1),
                       "load_average_1m_at_start": round(load_before[0], 1),
                       "load_average_1m_at_end": round(os.getloadavg()[0], 1)},
           "inputs": {k: v for k, v in inputs.items() if not k.endswith(("_url", "_urls"))}, **result}
    opts.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
