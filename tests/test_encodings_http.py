"""Both encodings and both transports over HTTP carry the same voxels; resync on request."""
from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from photos import photo_bytes
from serve_app.client import FrameDecoder, iter_events
from serve_app.protocol import (BinaryStreamReader, RecordKind, StreamDecoder, split_frame_payload)

pytestmark = pytest.mark.serve


def frames(events):
    return [ev for ev in events if ev["type"] in ("geometry", "appearance")]


def decoded(events):
    dec = FrameDecoder()
    return [dec.decode(ev) for ev in frames(events)]


@pytest.fixture(scope="module")
def both(local_app):
    base, _ = local_app
    seed = [ev for _, ev in iter_events(base, image=photo_bytes("coffee"), encoding="seed")]
    compact = [ev for _, ev in iter_events(base, image=photo_bytes("coffee"))]
    return seed, compact


def test_compact_is_the_default_and_decodes_to_the_same_final_voxels(both):
    seed, compact = both
    assert {ev["encoding"] for ev in frames(compact)} == {"compact"}
    assert {ev["encoding"] for ev in frames(seed)} == {"binary_uint8_xyzrgb"}
    for stage in ("geometry", "appearance"):
        (sc, scol), = [d for d, ev in zip(decoded(seed), frames(seed)) if ev["stage"] == stage][-1:]
        (cc, ccol), = [d for d, ev in zip(decoded(compact), frames(compact)) if ev["stage"] == stage][-1:]
        order_s, order_c = np.lexsort(sc.T), np.lexsort(cc.T)
        assert (sc[order_s] == cc[order_c]).all()
        if stage == "appearance":
            assert (scol[order_s] == ccol[order_c]).all()


def test_compact_stream_is_an_order_of_magnitude_smaller(both):
    seed, compact = both
    seed_bytes = sum(len(ev["voxel_data"]) for ev in frames(seed))
    compact_bytes = sum(len(ev["frame_data"]) for ev in frames(compact))
    print(f"frame payloads over SSE: seed {seed_bytes:,} B, compact {compact_bytes:,} B "
          f"({seed_bytes / compact_bytes:.1f}x)")
    assert compact_bytes * 8 <= seed_bytes
    assert any(not ev["key"] for ev in frames(compact))  # deltas are really used


def test_binary_transport_carries_the_same_events(local_app):
    base, _ = local_app
    with httpx.stream("POST", base + "/v1/generate", files={"image": ("c.png", photo_bytes("coffee"))},
                      headers={"accept": "application/octet-stream"}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        reader = BinaryStreamReader()
        records = []
        for chunk in r.iter_bytes():
            records += reader.feed(chunk)
    assert reader.version >= 1
    dec = StreamDecoder()
    types, counts = [], []
    import json
    for kind, payload in records:
        if kind == RecordKind.FRAME:
            event, msg = split_frame_payload(payload)
            frame = dec.decode(msg)
            assert frame.count == event["voxel_count"]
            counts.append(frame.count)
        else:
            event = json.loads(payload)
        types.append(event["type"])
    assert types[0] == "loading" and types[-1] == "complete"
    assert types.count("geometry") >= 2 and types.count("appearance") >= 2
    assert counts[-1] > 500


def test_key_frame_on_request(local_app):
    base, _ = local_app
    got = []
    asked = threading.Event()
    for _, ev in iter_events(base, image=photo_bytes("coffee")):
        got.append(ev)
        if ev["type"] == "geometry" and not asked.is_set() and len(frames(got)) == 2:
            r = httpx.post(f"{base}/v1/streams/{ev['request_id']}/keyframe")
            assert r.status_code == 202
            asked.set()
    keys = [ev["key"] for ev in frames(got)]
    # Key frames come first and every 16 frames; the one asked for comes in between.
    assert keys[0] and any(keys[2:15]), keys
    assert httpx.post(f"{base}/v1/streams/{'0' * 32}/keyframe").status_code == 404
