"""The parse step of POST /v1/generate and POST /v1/jobs: a JSON or multipart body → the
validated GenerateRequest plus the uploaded image and mask files."""
from __future__ import annotations

from fastapi import Request

from sam3d_common.errors import BadInput
from serve_app.http_util import UnsupportedMediaType, form_data, json_object, media_type, parse_json
from serve_app.schemas import GenerateRequest

# Fields a multipart form carries as JSON text.
_JSON_LIST_FIELDS = ("point_prompts", "box_prompts", "mask_b64")


async def parse_generate(request: Request, max_json_bytes: int) -> tuple[GenerateRequest, bytes | None, list[bytes]]:
    ctype = media_type(request)
    image_bytes, masks = None, []
    if ctype == "multipart/form-data":
        form = await form_data(request)
        fields: dict = {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                data = await value.read()
                if key == "image":
                    image_bytes = data
                elif key == "mask":
                    masks.append(data)
                else:
                    raise BadInput(f"unexpected file field {key!r}; use `image` and `mask`")
            elif key in _JSON_LIST_FIELDS:
                fields[key] = parse_json(value, key)
            elif value != "":
                fields[key] = value
    elif ctype == "application/json":
        fields = await json_object(request, max_json_bytes)
    else:
        raise UnsupportedMediaType("send application/json or multipart/form-data")
    return GenerateRequest.model_validate(fields), image_bytes, masks


# The multipart body of both routes, for the OpenAPI document.
MULTIPART_BODY = {"type": "object", "properties": {
    "image": {"type": "string", "format": "binary", "description": "the photo"},
    "mask": {"type": "array", "items": {"type": "string", "format": "binary"},
             "description": "object mask PNG(s), repeatable"},
    **{k: {"type": "string", "description": "JSON text, as in the JSON body"} for k in _JSON_LIST_FIELDS},
}, "additionalProperties": {"type": "string", "description": "any other GenerateRequest field, as text"}}
