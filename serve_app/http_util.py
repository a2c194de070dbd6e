"""What every route answers the same way: JSON errors, exception → status, JSON bodies.

Errors are `{"error": {"code", "message"}}` with the stage error's status; a 503 carries
Retry-After; anything that is not a StageError is logged and answered as a bare 500, so no
stack trace or internal detail reaches a client.
"""
from __future__ import annotations

import json
import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from deployments.errors import BadInput, as_stage_error

log = logging.getLogger("sam3d.http")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def exception_response(exc: BaseException) -> JSONResponse:
    err = as_stage_error(exc)
    if err is None:
        log.exception("request failed", exc_info=exc)
        return error_response(500, "internal", "internal error")
    return error_response(err.status, err.code, err.message,
                          {"Retry-After": "5"} if err.status == 503 else None)


def validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "body")
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


async def json_object(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadInput("the JSON body must be an object")
    return body
