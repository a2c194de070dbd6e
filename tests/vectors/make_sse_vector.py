"""Write sse_stream.txt: container.bin's events as the SSE transport carries them.

    python tests/vectors/make_sse_vector.py

The same stream as container.bin (see make_vectors.py), written with serve_app.protocol.format_sse:
frame events carry their compact message base64 in `frame_data`; records of unknown kind are left
out (SSE has no such thing); comments and a heartbeat are added, as a server or proxy may.
JS (tests/js/stream.test.mjs) and Python (tests/test_viewer_vectors.py) must read the two files
to the same events.
"""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(OUT.parents[1]))

from serve_app.protocol import BinaryStreamReader, RecordKind, format_sse, split_frame_payload  # noqa: E402


def container_events() -> list[dict]:
    """The EVENT and FRAME records of container.bin as SSE events (frame_data added)."""
    reader = BinaryStreamReader()
    events = []
    for kind, payload in reader.feed((OUT / "container.bin").read_bytes()):
        if kind == RecordKind.EVENT:
            events.append(json.loads(payload))
        elif kind == RecordKind.FRAME:
            event, msg = split_frame_payload(payload)
            events.append({**event, "frame_data": base64.b64encode(msg).decode("ascii")})
    reader.close()
    return events


def sse_text() -> bytes:
    parts = [b": sam3d-serve test stream\n\n"]
    for i, ev in enumerate(container_events()):
        parts.append(format_sse(ev))
        if i == 1:
            parts.append(b":heartbeat\n\n")
    return b"".join(parts)


if __name__ == "__main__":
    (OUT / "sse_stream.txt").write_bytes(sse_text())
    print("tests/vectors/sse_stream.txt written")
