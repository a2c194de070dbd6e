"""Write the shared test vectors of the compact voxel frame format (docs/frame-format.md).

    python tests/vectors/make_vectors.py          # rewrites tests/vectors/*.json and container.bin

Every vector is a JSON file:
    {"name", "description", "encoder": {key_every, zlib_level} | null,
     "messages": [{"data": base64 of one message, "expect": EXPECT}, ...]}
decoded in order by ONE decoder. EXPECT is either a frame
    {"stream_id", "grid_size", "frame_seq", "base_seq" (null for key frames), "key",
     "compressed", "voxel_count", "coords": [x0, y0, z0, x1, ...] sorted by x + N*y + N*N*z,
     "colors": [r0, g0, b0, ...] | null}
or {"error": "resync"} (the decoder must raise its resync error and keep its state) or
{"error": "format", "reason": ...} (a corrupt message: FrameFormatError, state kept).
Expected voxels come from the encoder's input frames, never from a decoder.

seed_events.json holds seed-encoding events with the integer voxels they decode to;
container.bin is a binary (octet-stream) transport stream described by container.json.

Deterministic: seeded numpy generators only. Messages that are not deflated are byte-exact
across machines; deflated ones depend on the zlib build but decode the same.
"""
from __future__ import annotations

import base64
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serve_app.protocol import VoxelFrame, full_codec  # noqa: E402
from serve_app.protocol.binary_transport import (RecordKind, pack_event, pack_frame_event,  # noqa: E402
                                                 pack_message, stream_header)
from serve_app.protocol.compact_codec import (_HEADER, FLAG_COLORS, FLAG_DEFLATE, FLAG_KEY,  # noqa: E402
                                              FORMAT_VERSION, MAGIC, StreamEncoder,
                                              encode_event_fields, read_header)

OUT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- frames

def ellipsoid_shell(n: int, radii, centre=None) -> np.ndarray:
    """Boolean (n,n,n) [x,y,z]: the one-voxel surface of a solid ellipsoid."""
    c = np.asarray(centre if centre is not None else [(n - 1) / 2] * 3, float)
    g = np.indices((n, n, n)).transpose(1, 2, 3, 0) - c
    solid = ((g / np.asarray(radii, float)) ** 2).sum(-1) <= 1.0
    inner = solid.copy()
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(solid, shift, axis=axis)
    # np.roll wraps round; anything on the grid boundary is surface anyway.
    for axis in range(3):
        idx = [slice(None)] * 3
        idx[axis] = 0
        inner[tuple(idx)] = False
        idx[axis] = -1
        inner[tuple(idx)] = False
    return solid & ~inner


def photo_colours(n: int, sharpness: float) -> np.ndarray:
    """(n,n,n,3) uint8 colours that, like the reconstructor's, sharpen step by step:
    a smooth gradient plus detail and a fixed texture that grow with `sharpness`."""
    g = np.indices((n, n, n)).transpose(1, 2, 3, 0).astype(float) / max(n - 1, 1)
    smooth = np.stack([200 * g[..., 0] + 30, 180 * g[..., 1] + 40, 120 - 80 * g[..., 2]], -1)
    detail = 60 * np.sin(9 * g[..., 0] + 5 * g[..., 1])[..., None] * np.array([1.0, -0.5, 0.7])
    noise = np.random.default_rng(n).normal(0, 6, smooth.shape)
    return np.clip(smooth + sharpness * (detail + noise), 0, 255).astype(np.uint8)


def frame(occ: np.ndarray, cols: np.ndarray | None = None) -> VoxelFrame:
    return VoxelFrame.from_occupancy(occ, cols)


def coords_frame(n: int, coords, colors=None) -> VoxelFrame:
    return VoxelFrame(n, np.asarray(coords, np.int64).reshape(-1, 3),
                      None if colors is None else np.asarray(colors, np.uint8).reshape(-1, 3))


# ----------------------------------------------------------------------------- vectors

def expect_frame(msg: bytes, f: VoxelFrame) -> dict:
    h = read_header(msg)
    s = f.sorted()
    lin = s.linear_indices()
    first = np.concatenate(([True], np.diff(lin) != 0)) if len(lin) else np.zeros(0, bool)
    coords = s.coords[first]
    colors = None if s.colors is None else s.colors[first]
    return {"stream_id": h.stream_id, "grid_size": f.grid_size, "frame_seq": h.frame_seq,
            "base_seq": None if h.key else h.base_seq, "key": h.key, "compressed": h.compressed,
            "voxel_count": int(len(coords)), "coords": coords.ravel().tolist(),
            "colors": None if colors is None else colors.ravel().tolist()}


def b64(msg: bytes) -> str:
    return base64.b64encode(msg).decode("ascii")


class Vector:
    def __init__(self, name: str, description: str, key_every: int | None = 16,
                 zlib_level: int | None = None):
        self.name, self.description = name, description
        self.encoder = None if key_every is None else StreamEncoder(key_every, zlib_level)
        self.options = None if key_every is None else {"key_every": key_every, "zlib_level": zlib_level}
        self.messages: list[dict] = []

    def send(self, f: VoxelFrame, stream_id: str = "voxels", deliver: bool = True) -> bytes:
        msg = self.encoder.encode(f, stream_id)
        if deliver:
            self.messages.append({"data": b64(msg), "expect": expect_frame(msg, f)})
        return msg

    def raw(self, msg: bytes, expect: dict) -> None:
        self.messages.append({"data": b64(msg), "expect": expect})

    def json(self) -> dict:
        return {"name": self.name, "description": self.description, "encoder": self.options,
                "messages": self.messages}


def v_empty_and_single() -> Vector:
    v = Vector("empty_and_single", "Empty frame, single voxels, colours appearing, back to empty; "
               "a 1^3 grid in a second stream")
    v.send(coords_frame(64, np.zeros((0, 3))))
    v.send(coords_frame(64, [[5, 6, 7]]))
    v.send(coords_frame(64, [[5, 6, 7]], [[10, 200, 30]]))
    v.send(coords_frame(64, [[63, 0, 63]], [[255, 0, 128]]))
    v.send(coords_frame(64, np.zeros((0, 3)), np.zeros((0, 3))))
    v.send(coords_frame(1, [[0, 0, 0]], [[1, 2, 3]]), stream_id="tiny")
    v.send(coords_frame(1, np.zeros((0, 3))), stream_id="tiny")
    v.send(coords_frame(64, [[0, 0, 0]]))
    return v


def v_growth(zlib_level: int | None, key_every: int) -> Vector:
    kind = "raw" if zlib_level is None else "deflate"
    v = Vector(f"growth_{kind}", "Reconstruction-like stream on a 24^3 grid: an ellipsoid shell "
               "swells over 6 geometry steps (no colours), then 4 appearance steps add and sharpen "
               f"colours; key frame every {key_every}", key_every, zlib_level)
    n = 24
    for k in range(1, 7):
        s = 0.45 + 0.55 * k / 6
        v.send(frame(ellipsoid_shell(n, (10, 9 * s, 8 * s))))
    surface = ellipsoid_shell(n, (10, 9, 8))
    for k in range(4):
        v.send(frame(surface, photo_colours(n, k / 3)))
    return v


def v_colour_changes() -> Vector:
    v = Vector("colour_changes", "Fixed voxels on a 16^3 grid: colours set, a few changed, all "
               "nudged, voxels added with colours, colours dropped and set again", 16, None)
    rng = np.random.default_rng(11)
    n = 16
    occ = rng.random((n, n, n)) < 0.08
    cols = rng.integers(0, 256, (n, n, n, 3), dtype=np.uint8)
    v.send(frame(occ, cols))
    few = cols.copy()
    pick = rng.random((n, n, n)) < 0.03
    few[pick] = rng.integers(0, 256, (int(pick.sum()), 3), dtype=np.uint8)
    v.send(frame(occ, few))
    nudged = (few.astype(int) + rng.integers(-3, 4, few.shape)).clip(0, 255).astype(np.uint8)
    v.send(frame(occ, nudged))
    grown = occ | (rng.random((n, n, n)) < 0.01)
    shrunk = grown & ~(rng.random((n, n, n)) < 0.05)
    v.send(frame(shrunk, nudged))
    v.send(frame(shrunk))
    v.send(frame(shrunk, cols))
    v.send(frame(shrunk, cols))  # unchanged
    return v


def v_grid_change() -> Vector:
    v = Vector("grid_change", "Grid size 32 → 48 → 8: each change makes a key frame", 16, 6)
    v.send(frame(ellipsoid_shell(32, (12, 10, 9))))
    v.send(frame(ellipsoid_shell(32, (13, 11, 9))))
    v.send(frame(ellipsoid_shell(48, (18, 15, 14))))
    v.send(frame(ellipsoid_shell(48, (19, 15, 14))))
    v.send(frame(ellipsoid_shell(8, (3, 3, 2))))
    return v


def v_corners_256() -> Vector:
    v = Vector("corners_256", "N=256: the eight corners and the centre, then an edge line; "
               "indices up to 256^3 - 1 need 4-byte varints", 16, None)
    corners = [[x, y, z] for z in (0, 255) for y in (0, 255) for x in (0, 255)] + [[128, 128, 128]]
    colours = [[(37 * i) % 256, (91 * i) % 256, (173 * i) % 256] for i in range(len(corners))]
    v.send(coords_frame(256, corners, colours))
    moved = [c for c in corners if c != [255, 255, 255]] + [[254, 255, 255]]
    v.send(coords_frame(256, moved, colours))
    line = [[x, 255, 255] for x in range(256)]
    v.send(coords_frame(256, line, [[x, 255 - x, 7] for x in range(256)]))
    v.send(coords_frame(256, line[::2], [[x, 255 - x, 7] for x in range(0, 256, 2)]))
    return v


def v_missing_frame() -> Vector:
    v = Vector("missing_frame", "Frame 2 never arrives: the deltas 3 and 4 need a resync error; "
               "the server then sends a key frame on request and deltas apply again", 16, 6)
    n = 32
    shell = ellipsoid_shell(n, (12, 11, 10)).ravel()
    extra = np.random.default_rng(9).permutation(np.flatnonzero(~shell))
    frames = []
    for k in range(7):
        occ = shell.copy()
        occ[extra[:15 * k]] = True
        frames.append(frame(occ.reshape(n, n, n)))
    v.send(frames[0])
    v.send(frames[1])
    v.send(frames[2], deliver=False)
    for k in (3, 4):
        msg = v.encoder.encode(frames[k])
        assert not read_header(msg).key
        v.raw(msg, {"error": "resync"})
    v.encoder.request_key()
    assert v.send(frames[5])[3] & FLAG_KEY
    assert not v.send(frames[6])[3] & FLAG_KEY
    return v


def v_random(zlib_level: int | None) -> Vector:
    kind = "raw" if zlib_level is None else "deflate"
    v = Vector(f"random_{kind}", "Seeded random frames in two interleaved streams: dense grids "
               "(bitmap), solid boxes (runs), sparse sets (gaps), wholesale changes that make the "
               "encoder choose a key frame, key frame every 5", 5, zlib_level)
    rng = np.random.default_rng(2024)
    b_occ = rng.random((8, 8, 8)) < 0.3
    b_cols = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    for step in range(12):
        n = int(rng.choice([6, 12, 20]))
        if step < 6:
            n = 12
        kind_ = step % 3
        if kind_ == 0:
            occ = rng.random((n, n, n)) < 0.5
        elif kind_ == 1:
            occ = np.zeros((n, n, n), bool)
            lo = rng.integers(0, n // 2, 3)
            hi = lo + rng.integers(1, n // 2 + 1, 3)
            occ[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        else:
            occ = rng.random((n, n, n)) < 0.02
        cols = rng.integers(0, 256, (n, n, n, 3), dtype=np.uint8) if step % 2 else None
        v.send(frame(occ, cols), stream_id="a")
        flip = rng.random((8, 8, 8)) < 0.06 * (step % 4)
        recolour = rng.random((8, 8, 8)) < 0.1 * (step % 3)
        b_cols[recolour] = rng.integers(0, 256, (int(recolour.sum()), 3), dtype=np.uint8)
        v.send(frame(b_occ ^ flip, b_cols), stream_id="b")
    return v


def craft(body: bytes, *, flags: int, n: int, count: int, seq: int = 0, base: int = 0,
          sid: bytes = b"voxels", magic: bytes = MAGIC, version: int = FORMAT_VERSION) -> bytes:
    """A message with any header and body, sealed with a correct CRC."""
    msg = _HEADER.pack(magic, version, flags, n, seq, base, count, len(sid)) + sid + body
    return msg + struct.pack("<I", zlib.crc32(msg))


def split(msg: bytes) -> tuple[bytes, bytes]:
    h = read_header(msg)
    return msg[:h.body_offset], msg[h.body_offset:h.body_end]


def reseal(head: bytes, body: bytes) -> bytes:
    msg = head + body
    return msg + struct.pack("<I", zlib.crc32(msg))


def v_errors() -> Vector:
    v = Vector("errors", "One decoder meets a delta before any key frame, then a key frame, then "
               "corrupt messages (each must fail cleanly and leave the state alone), then the "
               "valid delta", 16, None)
    n = 8
    f0 = coords_frame(n, [[1, 1, 1], [2, 1, 1], [3, 5, 7]], [[10, 20, 30], [40, 50, 60], [70, 80, 90]])
    f1 = coords_frame(n, [[1, 1, 1], [3, 5, 7], [7, 7, 7]], [[10, 20, 31], [70, 80, 90], [1, 2, 3]])
    k0 = v.encoder.encode(f0)
    d1 = v.encoder.encode(f1)
    v.raw(d1, {"error": "resync"})
    v.raw(k0, expect_frame(k0, f0))
    head, body = split(d1)
    kh, kbody = split(k0)

    def bad(msg: bytes, reason: str) -> None:
        v.raw(msg, {"error": "format", "reason": reason})

    bad(d1[:-5], "truncated (CRC mismatch)")
    bad(d1[:10], "shorter than a header")
    flipped = bytearray(d1)
    flipped[len(head) + 1] ^= 0x40
    bad(bytes(flipped), "a flipped bit (CRC mismatch)")
    bad(reseal(b"VY" + head[2:], body), "bad magic")
    bad(reseal(head[:2] + bytes([2]) + head[3:], body), "format version 2")
    bad(reseal(head[:3] + bytes([head[3] | 0x08]) + head[4:], body), "unknown flag 0x08")
    bad(reseal(head[:4] + struct.pack("<H", 0) + head[6:], body), "grid size 0")
    bad(reseal(head[:4] + struct.pack("<H", 300) + head[6:], body), "grid size 300")
    bad(reseal(head[:14] + struct.pack("<I", 4) + head[18:], body), "voxel count off by one")
    bad(reseal(head[:14] + struct.pack("<I", 1000) + head[18:], body), "more voxels than the grid holds")
    bad(reseal(head[:18] + bytes([6]) + b"\xff\xfe\xfd\xfc\xfb\xfa", body), "stream id not UTF-8")
    bad(reseal(head[:18] + bytes([200]) + b"voxels", body), "stream id longer than the message")
    bad(reseal(head, body + b"\x00"), "a byte after the body")
    bad(reseal(head, body[:-1]), "body one byte short")
    bad(reseal(head, bytes([7]) + body[1:]), "unknown index set method")
    bad(reseal(head, bytes([1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01])), "varint longer than 5 bytes")
    bad(reseal(head, bytes([1, 0x80, 0x80, 0x80, 0x80, 0x10])), "varint above 32 bits")
    bad(reseal(head, bytes([1, 2, 0x90, 0x03, 0xC8, 0x01])), "runs past the end of the grid")
    bad(reseal(head, bytes([2, 1, 0xff, 0x03])), "gap index past the end of the grid")
    bad(craft(bytes([0, 0, 0, 0, 0x40]), flags=FLAG_KEY, n=3, count=1), "bitmap bit past the range")
    bad(craft(bytes([1, 0, 5]), flags=FLAG_KEY | FLAG_COLORS, n=n, count=0), "unknown colour mode")
    bad(craft(bytes([1, 2, 0, 1, 1, 1, 0, 9, 9, 9]), flags=FLAG_KEY | FLAG_COLORS, n=n, count=1),
        "temporal colours in a key frame")
    # Delta adding voxel 0 with a temporal colour section that lists nothing.
    bad(craft(bytes([2, 1, 0, 1, 1, 0]), flags=FLAG_COLORS, n=n, count=4, seq=1, base=0),
        "a new voxel without a colour")
    deflated = zlib.compress(body)
    bad(reseal(head[:3] + bytes([head[3] | FLAG_DEFLATE]) + head[4:], deflated[:-3]),
        "deflated body truncated")
    bad(reseal(head[:3] + bytes([head[3] | FLAG_DEFLATE]) + head[4:], b"\x01\x02\x03\x04"),
        "deflated body is not zlib")
    bad(reseal(kh[:3] + bytes([kh[3] & ~FLAG_COLORS]) + kh[4:], kbody), "colours present but flag clear")
    v.raw(d1, expect_frame(d1, f1))
    return v


def seed_events() -> dict:
    rng = np.random.default_rng(5)
    events = []
    for occ_p, coloured in ((0.05, True), (0.01, False)):
        occ = rng.random((64, 64, 64)) < occ_p
        cols = rng.integers(0, 256, (64, 64, 64, 3), dtype=np.uint8) if coloured else None
        f = frame(occ, cols)
        ev = {"type": "geometry", "stage": "geometry", **full_codec.encode(f)}
        colors = f.colors if f.colors is not None else np.full((f.count, 3), 128, np.uint8)
        events.append({"event": ev, "coords": f.coords.ravel().tolist(), "colors": colors.ravel().tolist()})
    single = coords_frame(64, [[9, 9, 9]], [[1, 2, 3]])
    events.append({"event": {"type": "geometry", "stage": "geometry", **full_codec.encode(single)},
                   "coords": [9, 9, 9], "colors": [1, 2, 3]})
    return {"name": "seed_events", "description": "Seed-encoding (binary_uint8_xyzrgb) events on a "
            "64^3 grid; coords are the integer voxels the rounded decode gives", "events": events}


def container() -> tuple[bytes, dict]:
    enc = StreamEncoder(key_every=16, zlib_level=6)
    n = 16
    frames = [frame(ellipsoid_shell(n, (5 + k, 4 + k, 4))) for k in range(3)]
    frames.append(frame(ellipsoid_shell(n, (7, 6, 4)), photo_colours(n, 1.0)))
    records, expect = [stream_header()], []
    loading = {"type": "loading", "request_id": "r1", "seq": 0, "stage": "request", "step": 0,
               "total_steps": 0, "progress": 0.0, "t": 0.0, "message": "loading"}
    records.append(pack_event(loading))
    expect.append({"kind": 1, "event": loading})
    for i, f in enumerate(frames):
        msg = enc.encode(f)
        meta = {"type": "geometry" if f.colors is None else "appearance", "request_id": "r1",
                "seq": i + 1, "stage": "geometry" if f.colors is None else "appearance",
                "step": i + 1, "total_steps": len(frames), "progress": round((i + 1) / 6, 3),
                "t": 0.1 * (i + 1), **encode_event_fields(msg, with_data=False)}
        records.append(pack_frame_event(meta, msg))
        expect.append({"kind": 2, "event": meta, "frame": expect_frame(msg, f)})
    unknown = b"a record of a kind this reader does not know"
    records.append(pack_message(9, unknown))
    expect.append({"kind": 9, "payload_bytes": len(unknown)})
    done = {"type": "complete", "request_id": "r1", "seq": 5, "stage": "store", "step": 0,
            "total_steps": 0, "progress": 1.0, "t": 0.6, "artifacts": {}}
    records.append(pack_event(done))
    expect.append({"kind": int(RecordKind.EVENT), "event": done})
    data = b"".join(records)
    return data, {"name": "container", "description": "container.bin: an octet-stream transport "
                  "stream: header, a loading event, four frame records, a record of unknown kind 9, "
                  "a complete event", "bytes": len(data), "records": expect}


def build() -> dict[str, object]:
    """name → JSON content (and container.bin as bytes)."""
    vectors = [v_empty_and_single(), v_growth(None, 16), v_growth(6, 4), v_colour_changes(),
               v_grid_change(), v_corners_256(), v_missing_frame(), v_random(None), v_random(6),
               v_errors()]
    out: dict[str, object] = {f"{v.name}.json": v.json() for v in vectors}
    out["seed_events.json"] = seed_events()
    data, meta = container()
    out["container.bin"] = data
    out["container.json"] = meta
    return out


def main() -> None:
    for name, content in build().items():
        path = OUT / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(json.dumps(content, separators=(",", ":")) + "\n")
        print(f"{path.relative_to(ROOT)}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
