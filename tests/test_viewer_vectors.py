"""The SSE vector the viewer's stream client is tested on (tests/js/stream.test.mjs) is what the
protocol module writes today, and it carries the same events as the binary container vector."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from serve_app.protocol import BinaryStreamReader, RecordKind, parse_sse, split_frame_payload

VECTORS = Path(__file__).parent / "vectors"
sys.path.insert(0, str(VECTORS))

from make_sse_vector import sse_text  # noqa: E402


def test_sse_vector_is_current():
    assert (VECTORS / "sse_stream.txt").read_bytes() == sse_text(), "run python tests/vectors/make_sse_vector.py"


def test_sse_and_binary_vectors_hold_the_same_events():
    sse = parse_sse((VECTORS / "sse_stream.txt").read_text())
    reader = BinaryStreamReader()
    binary = []
    for kind, payload in reader.feed((VECTORS / "container.bin").read_bytes()):
        if kind == RecordKind.EVENT:
            binary.append(json.loads(payload))
        elif kind == RecordKind.FRAME:
            event, msg = split_frame_payload(payload)
            binary.append({**event, "frame_data": base64.b64encode(msg).decode()})
    assert sse == binary and len(sse) == 6
    assert sum("frame_data" in e for e in sse) == 4


def test_click_vectors_match_the_python_decoding():
    """embedding_small.* and click_masks.json (read by tests/js/sam3-click.test.mjs) are what the
    server's codec, select_mask and upsampling give today."""
    import numpy as np

    from deployments.segmenter.sam3.embedding_codec import decode
    from make_click_vectors import click_masks

    header, values = decode((VECTORS / "embedding_small.bin").read_bytes())
    want = json.loads((VECTORS / "embedding_small.json").read_text())
    assert header == want["header"]
    for name, v in values.items():
        np.testing.assert_allclose(v.ravel(), want["values"][name], rtol=1e-6)
    saved = json.loads((VECTORS / "click_masks.json").read_text())["cases"]
    for case, now in zip(saved, click_masks()["cases"]):
        assert case["index"] == now["index"]
        np.testing.assert_allclose(case["upsampled"], now["upsampled"], atol=1e-5)


def test_token_layout_vector_is_current():
    """token_layout.json (read by tests/js/sam3-click.test.mjs) is what token_layout gives today."""
    from make_token_layout_vector import vector

    assert json.loads((VECTORS / "token_layout.json").read_text()) == vector()


def test_viewer_progress_rows_are_the_protocol_stages():
    """serve_app/static/progress.js has one row per protocol stage, in the protocol's order."""
    import re

    from serve_app.protocol import STAGES

    js = (VECTORS.parents[1] / "serve_app/static/progress.js").read_text()
    block = js[js.index("export const STAGES"):js.index("];", js.index("export const STAGES"))]
    assert tuple(re.findall(r'\["(\w+)",', block)) == STAGES
