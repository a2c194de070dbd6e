"""The interface every segmenter backend (GrabCut, SAM 3) implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sam3d_common.errors import BadInput


@dataclass(frozen=True)
class Point:
    x: float  # pixel column in the original image
    y: float  # pixel row
    label: int = 1  # 1 = object, 0 = background


@dataclass(frozen=True)
class Box:
    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass
class SegmentPrompt:
    """What the caller knows about the object. Any combination may be given; all may be empty."""

    label: str | None = None
    points: list[Point] = field(default_factory=list)
    box: Box | None = None
    mask: np.ndarray | None = None  # HxW bool, a user mask to use or refine


def check_clicks_inside(points, size: tuple[int, int]) -> None:
    """Raises BadInput for a click (anything with .x, .y) outside an image of size (h, w)."""
    h, w = size
    for p in points:
        if not (0 <= p.x < w and 0 <= p.y < h):
            raise BadInput(f"click ({p.x:g}, {p.y:g}) lies outside the {w}x{h} image")


@dataclass
class SegmentResult:
    mask: np.ndarray  # HxW bool, the chosen object
    score: float | None  # backend's confidence in [0, 1], None where it has none; see each backend
    instances: list[tuple[np.ndarray, float]] = field(default_factory=list)  # other candidates
    backend: str = ""
    # The embedding the answer came from (SAM 3: the image's content id, usable as /v1/segment's
    # embedding_id); None where no embedding was made (other backends, a mask-only prompt).
    embedding_id: str | None = None


class SegmenterBackend(Protocol):
    name: str

    def segment(self, image: np.ndarray, prompt: SegmentPrompt) -> SegmentResult:
        """image: HxWx3 uint8 RGB. Raises sam3d_common.errors.BadInput when nothing is found."""
        ...
