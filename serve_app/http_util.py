"""What every route answers the same way: JSON errors, exception → status, JSON bodies.

Errors are `{"error": {"code", "message"}}` with the stage error's status; a 503 carries
Retry-After; Starlette's own 4xx (a malformed multipart body) keep their status and reason;
anything else is logged and answered as a bare 500, so no stack trace or internal detail
reaches a client.

Request bodies are read here under explicit limits: a JSON body is `application/json` and no
other type, at most `max_bytes`, nested at most MAX_JSON_DEPTH deep, integers of at most
MAX_INT_DIGITS digits and finite numbers only; multipart bodies have at most MAX_FORM_FIELDS
fields and MAX_FORM_FILES files, each text field at most MAX_FIELD_BYTES.
"""
from __future__ import annotations

import json
import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from sam3d_common.errors import BadInput, as_stage_error

log = logging.getLogger("sam3d.http")

MAX_JSON_DEPTH = 16
MAX_INT_DIGITS = 32
MAX_FORM_FIELDS = 64
MAX_FORM_FILES = 16
MAX_FIELD_BYTES = 1024 * 1024

RETRY_AFTER_S = 5  # seconds a 503 answer (and a retryable error event) asks a client to wait


# Input errors all carry the code `bad_input`; the status tells which kind.
class UnsupportedMediaType(BadInput):
    status = 415


class PayloadTooLarge(BadInput):
    status = 413


class MalformedBody(BadInput):
    status = 400


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def send_error(send, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    """The same JSON error, sent straight on an ASGI `send` (for middlewares)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def exception_response(exc: BaseException) -> JSONResponse:
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        return error_response(exc.status_code, "bad_input", str(exc.detail))
    err = as_stage_error(exc)
    if err is None:
        log.exception("request failed", exc_info=exc)
        return error_response(500, "internal", "internal error")
    return error_response(err.status, err.code, err.message,
                          {"Retry-After": str(RETRY_AFTER_S)} if err.status == 503 else None)


def validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "body")
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise MalformedBody(f"integers in the body may have at most {MAX_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise MalformedBody("numbers in the body must be finite")
    return value


def _constant(name: str):
    raise MalformedBody(f"{name} is not a JSON number; numbers must be finite")


def _depth(value, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping as soon as it passes `limit`."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `max_bytes` (chunked or not)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_bytes}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes | str, what: str = "the JSON body"):
    """json.loads under the limits above; MalformedBody (400) with the reason otherwise."""
    try:
        value = json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        value = None
        deep = True
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise MalformedBody(f"{what} is not valid JSON") from None
    else:
        deep = _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH
    if deep:
        raise MalformedBody(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


async def json_object(request: Request, max_bytes: int = 64 * 1024 * 1024) -> dict:
    if media_type(request) != "application/json":
        raise UnsupportedMediaType("send Content-Type: application/json")
    body = parse_json(await read_body(request, max_bytes))
    if not isinstance(body, dict):
        raise BadInput("the JSON body must be an object")
    return body


async def form_data(request: Request) -> FormData:
    """The multipart body under the field, file and size limits above; a malformed one is a 400."""
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMediaType("send Content-Type: multipart/form-data")
    try:
        return await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS,
                                  max_part_size=MAX_FIELD_BYTES)
    except HTTPException as exc:
        raise MalformedBody(f"malformed multipart body: {exc.detail}") from None
