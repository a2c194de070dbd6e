"""Every event of the stream, its fields, and how it is framed as Server-Sent Events.

An event is a flat JSON object. Always present:
  type         one of EVENT_TYPES
  request_id   the id the ingress gave the request (also the artifact id)
  seq          0, 1, 2 ... per stream, no gaps in what the server produced
  stage        the pipeline stage the event belongs to (STAGES)
  step         1-based step within the stage (0 for stage-level events)
  total_steps  steps the stage runs (0 when not known / not stepped)
  progress     overall progress 0..1, never decreasing within a stream
  t            seconds since the request was accepted, on the server clock
Per type, the extra fields are listed in EVENT_FIELDS.
"""
from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1

EVENT_TYPES = (
    "loading",
    "geometry",
    "appearance",
    "mesh_preview",
    "glb_ready",
    "texture_ready",
    "complete",
    "error",
)

STAGES = (
    "request",
    "prompt_enhancer",
    "image_generator",
    "segmenter",
    "queue",
    "geometry",
    "appearance",
    "mesh_baker",
    "store",
)

# Fields each event type adds to those every event has (type, request_id, seq, stage, step,
# total_steps, progress, t; see make_event). Voxel frames carry the fields of
# their encoding (see full_codec / compact codec) in addition.
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    # stage `queue`: while the request waits for a reconstructor slot, `queue_position` (1 = next)
    # and `queue_length` (requests of this ingress replica waiting), sent when they change; then
    # one event with step 1/1 and queue_position 0 when a replica takes the request.
    "loading": ("message", "queue_position", "queue_length"),
    # `key_frame: true` marks the frame a resumed job stream (GET /v1/jobs/{id}/events)
    # sends after the missed events: the whole current picture, whatever its seq.
    "geometry": ("encoding", "voxel_count", "grid_size", "key_frame"),
    "appearance": ("encoding", "voxel_count", "grid_size", "key_frame"),
    "mesh_preview": (
        "vertices_data", "faces_data", "vertex_colors_data",
        "vertex_count", "face_count", "bounds_min", "bounds_max",
    ),
    "glb_ready": ("artifact", "url", "size_bytes"),
    # Only when the request asked for `texture` and the backend decodes a mesh: after
    # glb_ready, before complete; artifact = model_textured.glb (also in complete's artifacts).
    "texture_ready": ("artifact", "url", "size_bytes", "texture_size"),
    # `pose` and `model` only from backends that decode their own assets (SAM 3D Objects):
    # pose = {rotation_wxyz, translation, scale, convention}; model = {source, faces,
    # faces_full, vertices, gaussians, compression}.
    "complete": ("artifacts", "model_glb_url", "gaussian_splat_url", "mask_url",
                 "coalesced_frames", "timings", "pose", "model"),
    # retry_after_s: only where sending the same request again may succeed (a replica died,
    # the queue was full), as the Retry-After header of a 503 answer says.
    "error": ("code", "message", "retry_after_s"),
}

FRAME_EVENTS = ("geometry", "appearance")
# Stages that run once the reconstructor has taken the request or holds it in its queue.
RECONSTRUCTOR_STAGES = ("queue", "geometry", "appearance")


def make_event(type_: str, *, stage: str, step: int = 0, total_steps: int = 0, **fields: Any) -> dict:
    """Build an event with its stage fields; request_id, seq, progress and t are stamped later."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    return {"type": type_, "stage": stage, "step": int(step), "total_steps": int(total_steps), **fields}


def format_sse(event: dict, event_id: int | None = None) -> bytes:
    """One SSE message: `event:` names the type, `id:` is seq (or `event_id`: a resumed job's
    key frame repeats an older seq but must not move the client's Last-Event-ID back),
    `data:` the whole JSON object.

    The type is also inside the JSON so clients that read only `data:` lines (like the
    seed's frontend) still see it.
    """
    data = json.dumps(event, separators=(",", ":"))
    sse_id = event.get("seq", 0) if event_id is None else event_id
    return f"event: {event['type']}\nid: {sse_id}\ndata: {data}\n\n".encode()


def parse_sse(text: str) -> list[dict]:
    """Parse a complete SSE body into events (comments and heartbeats skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data_lines = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if data_lines:
            events.append(json.loads("\n".join(data_lines)))
    return events


class SSEParser:
    """Incremental parser: feed bytes as they arrive, get complete events back."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, chunk: bytes | str) -> list[dict]:
        self._buf += chunk.decode() if isinstance(chunk, bytes) else chunk
        self._buf = self._buf.replace("\r\n", "\n")
        *blocks, self._buf = self._buf.split("\n\n")
        return parse_sse("\n\n".join(blocks) + "\n\n") if blocks else []
