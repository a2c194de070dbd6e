"""The compact frame format's shared vectors (tests/vectors, docs/frame-format.md): they cover the
cases the format must pin, decode to the stated voxels, are what the generator makes today; and
the seed encoding's vectors and round trips on 64 grids.
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from serve_app.protocol import (FrameFormatError, ResyncNeeded, StreamDecoder, VoxelFrame,
                                encode_frame, full_codec)
from serve_app.protocol.compact_codec import inspect_message, read_header
from tests.support.compact_frames import VECTORS

STREAM_VECTORS = sorted(p for p in VECTORS.glob("*.json") if "messages" in json.loads(p.read_text()))


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
