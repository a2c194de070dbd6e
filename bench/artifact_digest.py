"""SHA-256 of every artifact (GLB, splat PLY, previews, mask) and of the encoded frame stream
for the benchmark photos, through the in-process pipeline (no Serve, no HTTP, no pacing).

Two runs of this script on two commits print the same lines when the outputs are byte for
byte the same (a refactoring check):

    python -m bench.artifact_digest > before.txt
"""
from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
from pathlib import Path

import yaml

from serve_app.local import LocalClients
from serve_app.schemas import GenerateRequest
from serve_app.prepare import prepare_job
from serve_app.run import start_run
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore
from serve_app.wire import FrameWriter
from tests.photos import ROCKET_BOX, photo_bytes

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = {"coffee": {}, "chelsea": {}, "astronaut": {}, "rocket": {"box_prompts": [ROCKET_BOX]}}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


async def digest(name: str, encoding: str, store_dir: str) -> list[str]:
    cfg = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    args = cfg["applications"][0]["args"]
    args["store"] = {"url": store_dir}
    args["reconstructor"]["inflation"]["min_step_s"] = 0.0
    settings = load_settings(args)
    store = ArtifactStore(store_dir)
    service = GenerateService(settings, LocalClients(settings, store), store)
    req = GenerateRequest.model_validate({**PHOTOS[name], "encoding": encoding})
    job = await prepare_job(service, req, image_bytes=photo_bytes(name))
    writer = FrameWriter(job.encoding, settings.stream)
    frames = hashlib.sha256()
    n = 0
    stream = await start_run(service, job)
    try:
        async for ev in stream.events:
            ev, _ = writer.python(ev)
            if ev["type"] in ("geometry", "appearance"):
                n += 1
                for key in sorted(ev):
                    if key not in ("t", "request_id"):
                        frames.update(f"{key}={ev[key]!r};".encode())
            elif ev["type"] == "error":
                raise RuntimeError(ev["message"])
    finally:
        await stream.close()
    lines = [f"{name:<10} {encoding:<8} frames {n} stream {frames.hexdigest()[:16]}"]
    folder = Path(store_dir) / job.request_id
    for path in sorted(folder.iterdir()):
        lines.append(f"{name:<10} {encoding:<8} {path.name:<24} {path.stat().st_size:>9} {_sha(path.read_bytes())}")
    return lines


def main() -> None:
    encodings = sys.argv[1:] or ["compact", "seed"]
    for name in PHOTOS:
        for encoding in encodings:
            with tempfile.TemporaryDirectory() as store_dir:
                print("\n".join(asyncio.run(digest(name, encoding, store_dir))), flush=True)


if __name__ == "__main__":
    main()
