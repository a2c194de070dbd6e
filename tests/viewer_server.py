"""Test helper: the HTTP app with in-process embedded backends (no Ray, no weights) on 127.0.0.1.

    python tests/viewer_server.py STORE_DIR [--sam3]

Prints one JSON line {"url": ..., "meshopt_glb": ..., "meshopt_triangles": ...} once it answers, then
serves until killed. --sam3 builds a tiny random-weight SAM 3 checkpoint so /v1/embed and the ONNX
click decoder exist and the page decodes clicks in the browser; without it the segmenter is GrabCut
and the page asks POST /v1/segment per click. The browser tests (tests/browser/) drive it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


from deployments.reconstructor.base import Started  # noqa: E402
from deployments.segmenter import Segmenter  # noqa: E402
from meshopt_glb import meshopt_glb, sphere  # noqa: E402
from serve_app.ingress import build_fastapi_app  # noqa: E402
from tests.support.http_thread import serve_in_thread  # noqa: E402
from serve_app.local import LocalClients  # noqa: E402
from serve_app.service import GenerateService  # noqa: E402
from sam3d_common.settings import load_settings  # noqa: E402
from sam3d_common.store import ArtifactStore  # noqa: E402

FAST = {"reconstructor": {"grid_size": 48, "inflation": {"geometry_steps": 8, "appearance_steps": 5,
                                                         "min_step_s": 0.05}},
        "segmenter": {"grabcut": {"max_side": 256, "iterations": 3}}}


class OneSlot(LocalClients):
    """The embedded reconstructor behind one slot, as a GPU replica is: a second request waits in line
    (hearing its place) until the first ends; it announces each start as the deployment does."""

    def __init__(self, settings, store):
        super().__init__(settings, store)
        self.slot = asyncio.Semaphore(1)

    async def reconstruct(self, image, mask, options):
        async with self.slot:
            yield Started()
            async for item in self.reconstructor.stream(image, mask, options):
                yield item


def build(store_dir: Path, sam3: bool):
    args = {**FAST, "store": {"url": str(store_dir)}}
    if sam3:
        from tests.support.sam3_testing import write_tiny_checkpoint

        ckpt = write_tiny_checkpoint(store_dir / "sam3_tiny", seed=9)
        args["segmenter"] = {"backend": "sam3", "sam3": {
            "local_dir": str(ckpt), "score_threshold": 0.0, "device": "cpu",
            "onnx_cache_dir": str(store_dir / "onnx")}}
    settings = load_settings(args)
    store = ArtifactStore(str(store_dir))
    service = GenerateService(settings, OneSlot(settings, store), store)
    segmenter = Segmenter.func_or_class(settings.segmenter.model_dump())
    return build_fastapi_app(service, segmenter), store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--sam3", action="store_true")
    opts = parser.parse_args()
    opts.store.mkdir(parents=True, exist_ok=True)
    app, store = build(opts.store, opts.sam3)
    pos, faces, colors = sphere()
    store.put("0000000000000000000000000000feed", "meshopt.glb", meshopt_glb(pos, faces, colors))
    url = serve_in_thread(app)
    print(json.dumps({"url": url, "meshopt_glb": "/v1/artifacts/0000000000000000000000000000feed/meshopt.glb",
                      "meshopt_triangles": len(faces)}), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
