"""The compact encoding through events and transports: event fields over SSE, the encoding
registry beside the seed codec, and the binary stream container (any chunking, the committed
container vector, bad input) (docs/frame-format.md).
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from serve_app.protocol import (ENCODINGS, BinaryStreamReader, RecordKind, StreamDecoder,
                                VoxelFrame, encode_event_fields, encode_frame, format_sse,
                                frame_encoder, make_event, pack_event, pack_frame_event,
                                pack_message, parse_sse, full_codec, split_frame_payload,
                                stream_header)
from tests.support.compact_frames import VECTORS, assert_same, shell


def test_event_fields_through_sse_decode_to_the_frames():
    enc = frame_encoder("compact")
    dec = StreamDecoder()
    frames = [VoxelFrame.from_occupancy(shell(16, (5 + k, 5, 4))) for k in range(3)]
    body = b""
    for i, f in enumerate(frames):
        ev = make_event("geometry", stage="geometry", step=i + 1, total_steps=3, **enc.fields(f))
        body += format_sse(dict(ev, seq=i))
    events = parse_sse(body.decode())
    for i, (ev, f) in enumerate(zip(events, frames)):
        assert ev["encoding"] == "compact" and ev["voxel_count"] == f.count and ev["grid_size"] == 16
        assert ev["frame_seq"] == i and ev["key"] == (i == 0)
        assert ev["base_seq"] == (None if i == 0 else i - 1)
        assert_same(dec.decode_event(ev), f)


def test_registry_keeps_seed_and_adds_compact():
    f = VoxelFrame(8, np.array([[1, 2, 3], [0, 0, 7]]), np.array([[1, 2, 3], [4, 5, 6]]))
    assert ENCODINGS == ("full", "compact")
    assert encode_frame(f, "full") == full_codec.encode(f)
    fields = encode_frame(f, "compact")
    assert fields["key"] and fields["encoding"] == "compact"
    assert_same(StreamDecoder().decode_event(fields), f)
    assert frame_encoder("full").fields(f) == full_codec.encode(f)
    with pytest.raises(ValueError):
        encode_frame(f, "gzip")
    with pytest.raises(ValueError):
        frame_encoder("gzip")


def test_binary_stream_round_trip_at_any_chunking():
    enc = frame_encoder("compact")
    frames = [VoxelFrame.from_occupancy(shell(16, (4 + k, 5, 4))) for k in range(3)]
    loading = {"type": "loading", "seq": 0, "message": "warming up"}
    parts = [stream_header(), pack_event(loading)]
    metas = []
    for i, f in enumerate(frames):
        msg = enc.message(f)
        meta = {"type": "geometry", "seq": i + 1, **encode_event_fields(msg, with_data=False)}
        metas.append(meta)
        parts.append(pack_frame_event(meta, msg))
    parts.append(pack_message(200, b"future"))
    data = b"".join(parts)
    for size in (1, 5, 64, len(data)):
        reader = BinaryStreamReader()
        records = []
        for at in range(0, len(data), size):
            records += reader.feed(data[at:at + size])
        reader.close()
        assert reader.version == 1
        assert [k for k, _ in records] == [RecordKind.EVENT] + [RecordKind.FRAME] * 3 + [200]
        assert json.loads(records[0][1]) == loading
        dec = StreamDecoder()
        for (kind, payload), meta, f in zip(records[1:4], metas, frames):
            got_meta, msg = split_frame_payload(payload)
            assert got_meta == meta and "frame_data" not in got_meta
            assert_same(dec.decode(msg), f)


def test_committed_container_reads_and_decodes():
    data = (VECTORS / "container.bin").read_bytes()
    meta = json.loads((VECTORS / "container.json").read_text())
    reader = BinaryStreamReader()
    records = reader.feed(data)
    reader.close()
    assert [int(k) for k, _ in records] == [r["kind"] for r in meta["records"]]
    dec = StreamDecoder()
    for (kind, payload), e in zip(records, meta["records"]):
        if kind == RecordKind.EVENT:
            assert json.loads(payload) == e["event"]
        elif kind == RecordKind.FRAME:
            ev, msg = split_frame_payload(payload)
            assert ev == e["event"]
            f = dec.decode(msg)
            assert f.coords.ravel().tolist() == e["frame"]["coords"]
        else:
            assert len(payload) == e["payload_bytes"]


def test_binary_stream_refuses_bad_input():
    good = stream_header() + pack_event({"type": "loading"})
    with pytest.raises(ValueError, match="magic"):
        BinaryStreamReader().feed(b"XXXX" + good[4:])
    with pytest.raises(ValueError, match="version"):
        BinaryStreamReader().feed(stream_header(version=99) + good[8:])
    with pytest.raises(ValueError, match="exceeds"):
        BinaryStreamReader(max_payload=4).feed(good)
    r = BinaryStreamReader()
    r.feed(good[:-2])
    with pytest.raises(ValueError, match="inside a record"):
        r.close()
    with pytest.raises(ValueError, match="inside a header"):
        BinaryStreamReader().close()
    for bad in (b"\x01\x00", struct.pack("<I", 50) + b"{}", struct.pack("<I", 2) + b"[]"):
        with pytest.raises(ValueError):
            split_frame_payload(bad)
