"""What POST /v1/generate answers, byte for byte, through the app's routes in process (no Serve):
the SSE and binary bodies of the coffee photo in each encoding, a multipart request with a
box, and a set of bad requests. For a refactoring check, as bench/artifact_digest.py is for
the artifacts: two runs on two commits print the same lines when the answers are the same.

Each event is printed as JSON with `t` and `timings` left out (clock readings) and the request
id replaced by RID; frame payloads are printed as SHA-256 prefixes. The pacer runs at its
highest rate and byte budget, so no frame is coalesced and the event list does not depend on
timing; the reconstructor's steps are not slowed.

    python -m bench.http_digest > before.txt
"""
from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path

import yaml
from starlette.testclient import TestClient

from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore
from serve_app.ingress import build_fastapi_app
from serve_app.local import LocalClients
from serve_app.protocol.binary_transport import BinaryStreamReader, RecordKind, split_frame_payload
from serve_app.service import GenerateService
from tests.photos import ROCKET_BOX, photo_bytes

ROOT = Path(__file__).resolve().parents[1]
# The response headers that carry no information about the answer (ids, dates, lengths).
VARYING_HEADERS = {"x-sam3d-request-id", "content-length", "date", "x-request-id"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _event(ev: dict, rid: str | None) -> str:
    """The event without clock readings, its request id as RID, inline frame data hashed."""
    ev = {k: v for k, v in ev.items() if k not in ("t", "timings")}
    frame = {k: ev.pop(k) for k in ("voxel_data", "frame_data") if k in ev}
    text = json.dumps(ev, sort_keys=True) + (f" {_sha(json.dumps(frame, sort_keys=True).encode())}" if frame else "")
    return text.replace(rid, "RID") if rid else text


def sse_lines(text: str, rid: str | None) -> list[str]:
    """One line per SSE message: its `event:` and `id:` lines as sent, then its data."""
    out = []
    for block in filter(str.strip, text.split("\n\n")):
        parts = [f"data {_event(json.loads(line[6:]), rid)}" if line.startswith("data: ") else line
                 for line in block.split("\n")]
        out.append(" | ".join(parts))
    return out


def binary_lines(body: bytes, rid: str | None) -> list[str]:
    """One line per binary record: its kind, its event, a frame record's message hashed."""
    out = []
    for kind, payload in BinaryStreamReader().feed(body):
        if kind == RecordKind.FRAME:
            ev, msg = split_frame_payload(payload)
            out.append(f"frame {_event(ev, rid)} {_sha(msg)}")
        else:
            out.append(f"event {_event(json.loads(payload), rid)}")
    return out


def _short(line: str) -> str:
    return line if len(line) <= 400 else f"{line[:400]}...{_sha(line.encode())}"


def main() -> None:
    with tempfile.TemporaryDirectory() as store_dir:
        cfg = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
        args = cfg["applications"][0]["args"]
        args["store"] = {"url": store_dir}
        args["reconstructor"]["inflation"]["min_step_s"] = 0.0
        args.setdefault("stream", {}).update(max_frames_per_s=1000, max_bytes_per_s=10**9)
        settings = load_settings(args)
        store = ArtifactStore(store_dir)
        client = TestClient(build_fastapi_app(GenerateService(settings, LocalClients(settings, store), store)))
        coffee = base64.b64encode(photo_bytes("coffee")).decode()
        for encoding in ("compact", "full", "seed"):
            for accept in ("text/event-stream", "application/octet-stream"):
                r = client.post("/v1/generate", json={"image_b64": coffee, "encoding": encoding},
                                headers={"accept": accept})
                rid = r.headers.get("x-sam3d-request-id")
                headers = {k: v for k, v in r.headers.items() if k not in VARYING_HEADERS}
                print("###", encoding, accept, r.status_code, json.dumps(headers, sort_keys=True))
                lines = sse_lines(r.text, rid) if accept == "text/event-stream" else binary_lines(r.content, rid)
                print("\n".join(map(_short, lines)))
        for body in ({"image_b64": coffee, "point_prompts": [{"x": 900, "y": 10}]},
                     {"image_b64": coffee, "box_prompts": [{"x_min": 900, "y_min": 10, "x_max": 950, "y_max": 20}]},
                     {"image_b64": coffee, "encoding": "morse"}, {"prompt": "a cup"}, {"image_b64": "!!!"}, {}):
            r = client.post("/v1/generate", json=body)
            print("###", r.status_code, r.text[:300])
        r = client.post("/v1/generate", content=b"x", headers={"content-type": "text/plain"})
        print("###", r.status_code, r.text[:300])
        r = client.post("/v1/generate", files={"image": ("p.png", photo_bytes("rocket"), "image/png")},
                        data={"box_prompts": json.dumps([ROCKET_BOX])})
        print("### multipart", r.status_code)
        print("\n".join(map(_short, sse_lines(r.text, r.headers.get("x-sam3d-request-id")))))


if __name__ == "__main__":
    main()
