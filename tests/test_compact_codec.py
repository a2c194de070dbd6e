"""The compact voxel frame codec, the binary transport and the shared vectors (docs/frame-format.md)."""
from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from serve_app.protocol import (ENCODINGS, BinaryStreamReader, FrameFormatError, RecordKind,
                                ResyncNeeded, StreamDecoder, StreamEncoder, VoxelFrame,
                                encode_event_fields, encode_frame, format_sse, frame_encoder,
                                make_event, pack_event, pack_frame_event, pack_message, parse_sse,
                                full_codec, split_frame_payload, stream_header)
from serve_app.protocol.compact_codec import inspect_message, read_header

VECTORS = Path(__file__).parent / "vectors"
STREAM_VECTORS = sorted(p for p in VECTORS.glob("*.json") if "messages" in json.loads(p.read_text()))


def canonical(frame: VoxelFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """What the decoder must give back: voxels sorted by linear index, first colour of a repeat."""
    lin = frame.linear_indices()
    order = np.argsort(lin, kind="stable")
    lin = lin[order]
    first = np.concatenate(([True], np.diff(lin) != 0)) if len(lin) else np.zeros(0, bool)
    cols = None if frame.colors is None else frame.colors[order][first]
    return frame.coords[order][first], cols


def assert_same(decoded: VoxelFrame, original: VoxelFrame) -> None:
    coords, cols = canonical(original)
    assert decoded.grid_size == original.grid_size
    assert np.array_equal(decoded.coords, coords)
    if cols is None:
        assert decoded.colors is None
    else:
        # Colours are exact: the stated error bound is 0 per channel.
        assert decoded.colors is not None
        assert int(np.abs(decoded.colors.astype(int) - cols.astype(int)).max(initial=0)) == 0


def shell(n: int, radii, centre=None) -> np.ndarray:
    from vectors.make_vectors import ellipsoid_shell

    return ellipsoid_shell(n, radii, centre)


# ----------------------------------------------------------------------------- vectors

def test_vectors_cover_the_cases_the_format_must_pin():
    names = {p.stem for p in STREAM_VECTORS}
    assert {"empty_and_single", "growth_raw", "growth_deflate", "colour_changes", "grid_change",
            "corners_256", "missing_frame", "random_raw", "random_deflate", "errors"} <= names
    infos = []
    for p in STREAM_VECTORS:
        dec = StreamDecoder()
        for m in json.loads(p.read_text())["messages"]:
            if "error" not in m["expect"]:
                msg = base64.b64decode(m["data"])
                dec.decode(msg)
                infos.append(inspect_message(msg))
    assert {i["occupancy"] for i in infos} == {"bitmap", "runs", "gaps"}
    assert {i.get("color_mode") for i in infos} >= {"spatial", "temporal"}
    assert {i.get("color_set") for i in infos} >= {"bitmap", "runs", "gaps"}
    assert any(i["compressed"] for i in infos) and any(not i["compressed"] for i in infos)
    assert any(i["key"] and i["grid_size"] == 256 for i in infos)
    assert any(not i["key"] and i["grid_size"] == 256 for i in infos)


@pytest.mark.parametrize("path", STREAM_VECTORS, ids=lambda p: p.stem)
def test_vector_decodes_to_expected_voxels(path):
    vector = json.loads(path.read_text())
    dec = StreamDecoder()
    for i, m in enumerate(vector["messages"]):
        msg, e = base64.b64decode(m["data"]), m["expect"]
        if "error" in e:
            held = {sid: dec.held_seq(sid) for sid in ("voxels", "a", "b", "tiny")}
            exc = ResyncNeeded if e["error"] == "resync" else FrameFormatError
            with pytest.raises(exc):
                dec.decode(msg)
            assert {sid: dec.held_seq(sid) for sid in held} == held, f"message {i} changed the state"
            continue
        frame = dec.decode(msg)
        h = dec.last_header
        assert (h.stream_id, h.frame_seq, h.key, h.compressed) == (e["stream_id"], e["frame_seq"], e["key"], e["compressed"])
        assert (None if h.key else h.base_seq) == e["base_seq"]
        assert frame.grid_size == e["grid_size"] and frame.count == e["voxel_count"]
        assert frame.coords.ravel().tolist() == e["coords"], f"message {i}"
        assert (None if frame.colors is None else frame.colors.ravel().tolist()) == e["colors"], f"message {i}"


def test_generator_reproduces_the_committed_vectors():
    from vectors.make_vectors import build

    for name, content in build().items():
        if isinstance(content, bytes):
            continue  # container.bin holds deflated frames; checked through container.json
        committed = json.loads((VECTORS / name).read_text())
        fresh = json.loads(json.dumps(content))
        if "messages" in fresh:
            assert len(fresh["messages"]) == len(committed["messages"]), name
            for new, old in zip(fresh["messages"], committed["messages"]):
                assert new["expect"] == old["expect"], name
                if not read_header_safe(base64.b64decode(old["data"]), "compressed"):
                    assert new["data"] == old["data"], f"{name}: the encoder's output changed"
        elif name == "container.json":
            assert [r.get("frame") for r in fresh["records"]] == [r.get("frame") for r in committed["records"]]
        else:
            assert fresh == committed, name


def read_header_safe(msg: bytes, attr: str):
    try:
        return getattr(read_header(msg), attr)
    except FrameFormatError:
        return None


def test_seed_vectors_and_seed_round_trip_on_64_grids():
    for item in json.loads((VECTORS / "seed_events.json").read_text())["events"]:
        coords, colors = full_codec.decode(item["event"])
        assert np.rint(coords).astype(int).ravel().tolist() == item["coords"]
        assert colors.ravel().tolist() == item["colors"]
    rng = np.random.default_rng(1)
    for p in (0.002, 0.05, 0.5):
        occ = rng.random((64, 64, 64)) < p
        f = VoxelFrame.from_occupancy(occ, rng.integers(0, 256, (64, 64, 64, 3), dtype=np.uint8))
        coords, colors = full_codec.decode(encode_frame(f, "full"))
        assert np.array_equal(np.rint(coords).astype(np.uint16), f.coords)
        assert np.array_equal(colors, f.colors)


# ----------------------------------------------------------------------------- round trips

def random_frame(rng: np.random.Generator, n: int, prev: VoxelFrame | None) -> VoxelFrame:
    kind = rng.integers(0, 7)
    coloured = rng.random() < 0.6
    if prev is not None and prev.grid_size == n and kind >= 4 and prev.count:
        # Edit the previous frame: drop some voxels, add some, recolour some.
        keep = rng.random(prev.count) > rng.choice([0.0, 0.02, 0.3])
        coords = prev.coords[keep]
        add = rng.integers(0, n, (int(rng.integers(0, 20)), 3))
        coords = np.concatenate([coords, add])
        if prev.colors is not None and coloured:
            cols = np.concatenate([prev.colors[keep], rng.integers(0, 256, (len(add), 3))]).astype(np.uint8)
            change = rng.random(len(cols)) < rng.choice([0.0, 0.05, 0.9])
            cols[change] = (cols[change].astype(int) + rng.integers(-4, 5, (int(change.sum()), 3))) % 256
        else:
            cols = rng.integers(0, 256, (len(coords), 3)) if coloured else None
        return VoxelFrame(n, coords, cols)
    if kind == 0:
        occ = rng.random((n, n, n)) < rng.choice([0.001, 0.05, 0.5, 0.97])
    elif kind == 1:
        occ = np.zeros((n, n, n), bool)
        lo = rng.integers(0, n, 3)
        hi = lo + rng.integers(1, n + 1, 3)
        occ[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    elif kind == 2:
        occ = shell(n, rng.uniform(0.2, 0.6, 3) * n)
    else:
        # Unsorted coordinates with repeats, the way a careless producer might send them.
        coords = rng.integers(0, n, (int(rng.integers(0, 60)), 3))
        coords = np.concatenate([coords, coords[: len(coords) // 3]])
        cols = rng.integers(0, 256, (len(coords), 3)) if coloured else None
        return VoxelFrame(n, coords, cols)
    cols = rng.integers(0, 256, (n, n, n, 3), dtype=np.uint8) if coloured else None
    return VoxelFrame.from_occupancy(occ, cols)


@pytest.mark.parametrize("seed", range(60))
def test_random_streams_round_trip_exactly(seed):
    rng = np.random.default_rng(seed)
    enc = StreamEncoder(key_every=int(rng.integers(1, 9)), zlib_level=rng.choice([None, 1, 6]))
    dec = StreamDecoder()
    n = int(rng.choice([1, 2, 5, 16, 33, 64]))
    prev = None
    since_key = 0
    for step in range(12):
        if rng.random() < 0.1:
            n = int(rng.choice([3, 16, 64]))
        f = random_frame(rng, n, prev)
        requested = rng.random() < 0.15
        if requested:
            enc.request_key()
        msg = enc.encode(f)
        h = read_header(msg)
        assert h.frame_seq == step
        if prev is None or requested or prev.grid_size != n or since_key + 1 >= enc.key_every:
            assert h.key
        if not h.key:
            assert h.base_seq == step - 1
        since_key = 0 if h.key else since_key + 1
        assert_same(dec.decode(msg), f)
        prev = f


def test_round_trip_on_256_grid_with_far_corners():
    rng = np.random.default_rng(3)
    enc, dec = StreamEncoder(), StreamDecoder()
    coords = np.concatenate([rng.integers(0, 256, (3000, 3)),
                             [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 255]]])
    cols = rng.integers(0, 256, (len(coords), 3))
    for step in range(4):
        f = VoxelFrame(256, coords, cols)
        assert_same(dec.decode(enc.encode(f)), f)
        coords = np.concatenate([coords[50:], rng.integers(0, 256, (40, 3))])
        cols = np.concatenate([cols[50:], rng.integers(0, 256, (40, 3))])


def test_swelling_then_colouring_stream_uses_deltas_never_larger_than_key_frames():
    from vectors.make_vectors import photo_colours

    n = 64
    frames = [VoxelFrame.from_occupancy(shell(n, (28, 24 * s, 20 * s)))
              for s in np.linspace(0.6, 1.0, 12)]
    surface = shell(n, (28, 24, 20))
    frames += [VoxelFrame.from_occupancy(surface, photo_colours(n, k / 7)) for k in range(8)]
    enc, dec = StreamEncoder(), StreamDecoder()
    seed_bytes = compact_bytes = 0
    keys = []
    for f in frames:
        msg = enc.encode(f)
        assert_same(dec.decode(msg), f)
        keys.append(read_header(msg).key)
        # Never larger than the key frame of the same voxels.
        assert len(msg) <= len(StreamEncoder().encode(f))
        seed_bytes += len(full_codec.encode(f)["voxel_data"])
        compact_bytes += len(encode_event_fields(msg)["frame_data"])
    # This shell swells everywhere at once, so geometry goes as (small) key frames;
    # the colour refinements go as deltas against the unchanged voxels.
    assert keys[0] and not any(keys[12:])
    # Synthetic per-voxel texture noise makes this harder than a photo (see the next test).
    assert compact_bytes * 6 <= seed_bytes


async def test_real_photo_reconstruction_stream_is_at_least_8x_smaller_than_seed():
    from deployments.reconstructor.base import ReconstructOptions, StepFrame
    from deployments.reconstructor.inflation import InflationReconstructor
    from deployments.segmenter.base import SegmentPrompt
    from deployments.segmenter.grabcut import GrabCutSegmenter
    from photos import photo_array

    image = photo_array("coffee")
    mask = GrabCutSegmenter().segment(image, SegmentPrompt()).mask
    enc, dec = frame_encoder("compact"), StreamDecoder()
    seed_bytes = compact_bytes = frames = 0
    async for item in InflationReconstructor().stream(image, mask, ReconstructOptions()):
        if isinstance(item, StepFrame):
            fields = enc.fields(item.frame)
            assert_same(dec.decode_event(fields), item.frame)
            seed_bytes += len(full_codec.encode(item.frame)["voxel_data"])
            compact_bytes += len(fields["frame_data"])
            frames += 1
    assert frames >= 10
    assert compact_bytes * 8 <= seed_bytes


def test_encoder_sends_a_key_frame_when_a_delta_would_be_larger():
    rng = np.random.default_rng(4)
    enc = StreamEncoder(key_every=100, zlib_level=None)
    a = VoxelFrame.from_occupancy(rng.random((16, 16, 16)) < 0.3)
    b = VoxelFrame.from_occupancy(rng.random((16, 16, 16)) < 0.3)
    enc.encode(a)
    small = VoxelFrame(16, np.concatenate([a.coords, [[0, 0, 0]]]))
    assert not read_header(enc.encode(small)).key
    assert read_header(enc.encode(b)).key  # everything moved: a key frame is smaller


def test_key_every_and_request_key_and_grid_change():
    spread = np.random.default_rng(5).integers(0, 8, (30, 3))
    f = VoxelFrame(8, spread)
    g = VoxelFrame(8, np.concatenate([spread, [[4, 4, 4]]]))
    enc = StreamEncoder(key_every=3)
    keys = [read_header(enc.encode(x)).key for x in (f, g, f, g, g, f, g)]
    assert keys == [True, False, False, True, False, False, True]
    enc.request_key()
    assert read_header(enc.encode(f)).key
    assert not read_header(enc.encode(g)).key
    assert read_header(enc.encode(VoxelFrame(9, g.coords))).key
    with pytest.raises(ValueError):
        StreamEncoder(key_every=0)


def test_streams_are_independent():
    enc, dec = StreamEncoder(), StreamDecoder()
    rng = np.random.default_rng(12)
    spread = rng.integers(0, 8, (40, 3))
    colours = rng.integers(0, 256, (41, 3))
    f = VoxelFrame(8, spread, colours[:40])
    g = VoxelFrame(8, np.concatenate([spread, [[2, 2, 2]]]), colours)
    a0, b0, a1 = enc.encode(f, "geometry"), enc.encode(g, "preview"), enc.encode(g, "geometry")
    assert [read_header(m).frame_seq for m in (a0, b0, a1)] == [0, 0, 1]
    assert_same(dec.decode(a0), f)
    assert_same(dec.decode(b0), g)
    assert_same(dec.decode(a1), g)
    enc.request_key("preview")
    assert not read_header(enc.encode(f, "geometry")).key
    assert read_header(enc.encode(f, "preview")).key


def test_colours_appear_change_and_vanish_across_deltas():
    n = 16
    occ = shell(n, (6, 5, 4))
    rng = np.random.default_rng(8)
    cols = rng.integers(0, 256, (n, n, n, 3), dtype=np.uint8)
    frames = [VoxelFrame.from_occupancy(occ), VoxelFrame.from_occupancy(occ, cols)]
    few = cols.copy()
    few[4:6] = 7
    frames += [VoxelFrame.from_occupancy(occ, few), VoxelFrame.from_occupancy(occ)]
    enc, dec = StreamEncoder(zlib_level=None), StreamDecoder()
    modes = []
    for f in frames:
        msg = enc.encode(f)
        modes.append(inspect_message(msg).get("color_mode"))
        assert_same(dec.decode(msg), f)
    assert modes == [None, "spatial", "temporal", None]


def test_deflate_is_used_only_when_it_shrinks_the_body():
    rng = np.random.default_rng(2)
    smooth = VoxelFrame.from_occupancy(shell(32, (12, 11, 10)))
    noisy = VoxelFrame(4, np.argwhere(np.ones((4, 4, 4))), rng.integers(0, 256, (64, 3)))
    assert read_header(StreamEncoder(zlib_level=6).encode(smooth)).compressed
    assert not read_header(StreamEncoder(zlib_level=None).encode(smooth)).compressed
    assert not read_header(StreamEncoder(zlib_level=9).encode(noisy)).compressed


# ----------------------------------------------------------------------------- resync

def test_missing_frame_raises_resync_until_a_key_frame():
    enc, dec = StreamEncoder(), StreamDecoder()
    base = np.argwhere(shell(16, (6, 5, 4)))
    frames = [VoxelFrame(16, np.concatenate([base, [[0, 0, k]]])) for k in range(6)]
    msgs = [enc.encode(f) for f in frames[:4]]
    dec.decode(msgs[0])
    dec.decode(msgs[1])
    with pytest.raises(ResyncNeeded) as info:
        dec.decode(msgs[3])  # msgs[2] was lost
    assert (info.value.stream_id, info.value.held_seq, info.value.base_seq) == ("voxels", 1, 2)
    assert "request a key frame" in str(info.value)
    assert dec.held_seq() == 1
    enc.request_key()
    assert_same(dec.decode(enc.encode(frames[4])), frames[4])
    assert_same(dec.decode(enc.encode(frames[5])), frames[5])
    with pytest.raises(ResyncNeeded) as info:
        StreamDecoder().decode(msgs[1])  # a late joiner's first message is a delta
    assert info.value.held_seq is None


def test_resync_is_not_a_format_error():
    assert not issubclass(ResyncNeeded, ValueError)
    assert issubclass(FrameFormatError, ValueError)


# ----------------------------------------------------------------------------- corrupt input

def sample_messages() -> list[bytes]:
    rng = np.random.default_rng(6)
    out = []
    for zl in (None, 6):
        enc = StreamEncoder(key_every=50, zlib_level=zl)
        occ = shell(20, (8, 7, 6))
        cols = rng.integers(0, 256, (20, 20, 20, 3), dtype=np.uint8)
        out.append(enc.encode(VoxelFrame.from_occupancy(occ, cols)))
        cols[3:5] = 1
        occ[0, 0, :5] = True
        out.append(enc.encode(VoxelFrame.from_occupancy(occ, cols)))
    return out


def test_every_truncation_raises_format_error():
    for msg in sample_messages():
        for cut in range(len(msg)):
            with pytest.raises(FrameFormatError):
                StreamDecoder().decode(msg[:cut])


def test_flipped_bits_are_caught_by_the_crc():
    rng = np.random.default_rng(0)
    for msg in sample_messages():
        for _ in range(200):
            bad = bytearray(msg)
            bad[int(rng.integers(0, len(bad)))] ^= 1 << int(rng.integers(0, 8))
            with pytest.raises(FrameFormatError):
                StreamDecoder().decode(bytes(bad))


def reseal(msg: bytes) -> bytes:
    return msg + struct.pack("<I", zlib.crc32(msg))


def test_resealed_mutations_fail_cleanly_or_decode_to_a_valid_frame():
    """Past the CRC, the parser itself must never fail with anything but its own errors."""
    rng = np.random.default_rng(1)
    msgs = sample_messages()
    outcomes = {"frame": 0, "format": 0, "resync": 0}
    for trial in range(1500):
        key, delta = msgs[0], msgs[1]
        target = bytearray((key if trial % 2 else delta)[:-4])
        for _ in range(int(rng.integers(1, 4))):
            op = rng.integers(0, 3)
            at = int(rng.integers(0, len(target)))
            if op == 0:
                target[at] = int(rng.integers(0, 256))
            elif op == 1:
                del target[at:at + int(rng.integers(1, 9))]
            else:
                target[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 5)), dtype=np.uint8))
        dec = StreamDecoder()
        dec.decode(key)
        try:
            frame = dec.decode(reseal(bytes(target)))
        except FrameFormatError:
            outcomes["format"] += 1
        except ResyncNeeded:
            outcomes["resync"] += 1
        else:
            assert isinstance(frame, VoxelFrame) and frame.count == dec.last_header.voxel_count
            outcomes["frame"] += 1
    assert outcomes["format"] > 1000


def test_deflated_body_with_trailing_bytes_is_refused():
    msg = sample_messages()[2]
    h = read_header(msg)
    assert h.compressed
    with pytest.raises(FrameFormatError, match="after the end"):
        StreamDecoder().decode(reseal(msg[:h.body_end] + b"\x00"))


def test_decode_event_checks_encoding_and_base64():
    with pytest.raises(FrameFormatError):
        StreamDecoder().decode_event({"encoding": "seed", "frame_data": ""})
    with pytest.raises(FrameFormatError):
        StreamDecoder().decode_event({"encoding": "compact", "frame_data": "@@@"})
    with pytest.raises(FrameFormatError):
        StreamDecoder().decode_event({"encoding": "compact"})


# ----------------------------------------------------------------------------- events and transport

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
