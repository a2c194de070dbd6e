"""The compact voxel frame codec's stream encoder and decoder (docs/frame-format.md): exact round
trips, key or delta frames, independent streams, colour modes, deflate, and resync after a lost
frame. The vectors, corrupt input and the transports are in the other tests/test_compact_*.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from serve_app.protocol import (FrameFormatError, ResyncNeeded, StreamDecoder, StreamEncoder,
                                VoxelFrame, encode_event_fields, frame_encoder, full_codec)
from serve_app.protocol.compact_codec import inspect_message, read_header
from tests.support.compact_frames import assert_same, shell


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


def test_a_key_request_made_during_an_encode_is_kept_for_the_next_frame(monkeypatch):
    """The ingress encodes a stream's frames in a worker thread while its event loop may take a key
    request (POST /v1/streams/{id}/keyframe): one that arrives mid-encode is not cleared by it."""
    from serve_app.protocol import compact_codec

    spread = np.random.default_rng(6).integers(0, 8, (30, 3))
    f, g = VoxelFrame(8, spread), VoxelFrame(8, np.concatenate([spread, [[4, 4, 4]]]))
    enc = StreamEncoder(key_every=100)
    assert read_header(enc.encode(f)).key
    held = compact_codec._Held

    def held_after_a_request(*args):  # the request lands once this (delta) frame is decided
        enc.request_key()
        return held(*args)

    monkeypatch.setattr(compact_codec, "_Held", held_after_a_request)
    assert not read_header(enc.encode(g)).key  # decided before the request came
    monkeypatch.setattr(compact_codec, "_Held", held)
    assert read_header(enc.encode(f)).key  # the request was kept
    assert not read_header(enc.encode(g)).key  # and then cleared


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

