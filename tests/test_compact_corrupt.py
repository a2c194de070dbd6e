"""Corrupt compact frame messages: every truncation, flipped bits (the CRC), mutations behind a
recomputed CRC, bytes after a deflated body and malformed event fields fail with the codec's
own errors (docs/frame-format.md).
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from serve_app.protocol import (FrameFormatError, ResyncNeeded, StreamDecoder, StreamEncoder,
                                VoxelFrame)
from serve_app.protocol.compact_codec import read_header
from tests.support.compact_frames import shell


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
