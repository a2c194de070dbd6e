import numpy as np
import pytest

from serve_app.protocol import (EVENT_TYPES, SSEParser, VoxelFrame, format_sse, make_event,
                                parse_sse, full_codec)


def test_sse_round_trip_and_incremental_parse():
    evs = [dict(make_event(t, stage="request"), seq=i) for i, t in enumerate(EVENT_TYPES)]
    body = b"".join(format_sse(e) for e in evs)
    assert body.startswith(b"event: loading\nid: 0\ndata: {")
    assert parse_sse(body.decode()) == evs
    p, got = SSEParser(), []
    for i in range(0, len(body), 7):  # arbitrary chunk boundaries
        got += p.feed(body[i:i + 7])
    assert got == evs


def test_unknown_event_or_stage_is_refused():
    with pytest.raises(ValueError):
        make_event("voxels", stage="geometry")
    with pytest.raises(ValueError):
        make_event("geometry", stage="nowhere")


def test_full_codec_round_trip_on_64_grid():
    rng = np.random.default_rng(0)
    occ = rng.random((64, 64, 64)) < 0.05
    cols = rng.integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    frame = VoxelFrame.from_occupancy(occ, cols)
    fields = full_codec.encode(frame)
    assert fields["encoding"] == "binary_uint8_xyzrgb" and fields["voxel_count"] == frame.count
    coords, colors = full_codec.decode(fields)
    assert (np.rint(coords).astype(int) == frame.coords).all()
    assert (colors == frame.colors).all()


def test_full_codec_fills_missing_colours_with_128():
    frame = VoxelFrame(8, np.array([[0, 0, 0], [7, 3, 1]]))
    _, colors = full_codec.decode(full_codec.encode(frame))
    assert (colors == 128).all()


def test_voxel_frame_validates():
    with pytest.raises(ValueError):
        VoxelFrame(8, np.array([[8, 0, 0]]))
    with pytest.raises(ValueError):
        VoxelFrame(300, np.zeros((0, 3)))
    occ = np.zeros((4, 4, 4), bool)
    occ[1, 2, 3] = occ[3, 0, 0] = True
    f = VoxelFrame.from_occupancy(occ)
    assert (f.to_occupancy() == occ).all()
    assert list(f.linear_indices()) == sorted(f.linear_indices())
