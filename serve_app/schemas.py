"""The request body of POST /v1/generate (JSON, or the same fields as multipart form)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from serve_app.protocol import Encoding

MAX_COORD = 1_000_000  # pixels; far beyond any image the limits let in


class RequestModel(BaseModel):
    """Unknown fields are errors, and so are JSON true/false where a number is expected
    (pydantic's lax mode would read them as 1/0). Multipart text such as "7" still parses."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value, info: ValidationInfo):
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError("must be a number, not true or false")
        return value


def coord(description: str = ""):
    return Field(..., ge=0, le=MAX_COORD, allow_inf_nan=False, description=description or None)


class PointPrompt(RequestModel):
    x: float = coord("pixel column in the uploaded image")
    y: float = coord("pixel row")
    label: Literal[0, 1] = Field(1, description="1 = on the object, 0 = background")


class BoxPrompt(RequestModel):
    x_min: float = coord()
    y_min: float = coord()
    x_max: float = coord()
    y_max: float = coord()

    @model_validator(mode="after")
    def _ordered(self):
        if self.x_max <= self.x_min or self.y_max <= self.y_min:
            raise ValueError("box needs x_max > x_min and y_max > y_min")
        return self


class GenerateRequest(RequestModel):
    """Give a text `prompt` (text-to-3D) or an image (photo-to-3D), not both."""

    prompt: str | None = Field(None, max_length=2000, description="text to turn into a 3D object")
    image_b64: str | None = Field(None, description="the photo, base64 (PNG/JPEG/WebP)")
    image_url: str | None = Field(None, max_length=40_000_000, description="http(s) or data: URL of the photo")
    mask_b64: list[str] = Field(default_factory=list, max_length=8,
                                description="object mask(s) as base64 PNG, same size as the photo; their union is used")
    refine_mask: bool = Field(False, description="let the segmenter refine the given mask (file, "
                              "mask_b64 or the photo's alpha channel); by default it is used as given")
    point_prompts: list[PointPrompt] = Field(default_factory=list, max_length=64)
    box_prompts: list[BoxPrompt] = Field(default_factory=list, max_length=1)
    segmentation_label: str | None = Field(None, max_length=100,
                                           description="what to cut out (text-prompted segmenters)")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stream_geometry_every: int = Field(1, ge=1, le=10, description="emit a geometry frame every N steps, at "
                                       "most stream.max_frames_per_s a second")
    stream_colors_every: int = Field(1, ge=1, le=10, description="emit an appearance frame every N steps, at "
                                     "most stream.max_frames_per_s a second")
    fast: bool = Field(False, description="fast mode: the reconstructor's distilled few-step "
                       "sampling without guidance, where the backend has it (SAM 3D Objects)")
    geometry_steps: int | None = Field(None, ge=1, le=100, description="geometry denoising steps "
                                       "(default: the deployment's, or its fast-mode value)")
    appearance_steps: int | None = Field(None, ge=1, le=100, description="appearance denoising steps")
    face_budget: int = Field(200_000, ge=1_000, le=5_000_000, description="most triangles in "
                             "model.glb; a larger decoded mesh is simplified to this (the full mesh "
                             "is kept as model_full.glb)")
    texture: bool = Field(False, description="also bake `model_textured.glb`: model.glb's mesh "
                          "UV-unwrapped (xatlas) with a texture baked on the CPU from the full mesh's "
                          "colours, announced by a `texture_ready` event before `complete`. Only for "
                          "backends that decode a mesh (SAM 3D Objects); the embedded backend ignores it")
    texture_size: int = Field(2048, ge=512, le=4096, description="width and height of the baked "
                              "texture in texels (with `texture`)")
    encoding: Encoding = Field("compact", description="voxel frame encoding: `compact` (default; see "
                               "docs/frame-format.md) or `full` (6 bytes per voxel, every frame whole; "
                               "`seed`, its former name, is accepted too)")

    @model_validator(mode="after")
    def _one_source(self):
        sources = sum(x is not None for x in (self.image_b64, self.image_url))
        if sources > 1:
            raise ValueError("give one of image_b64, image_url or an uploaded image, not several")
        return self
