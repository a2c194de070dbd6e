"""The OpenAPI document: request bodies by reference and every status each route answers.

Routes parse their bodies by hand (JSON or multipart), so FastAPI cannot see the request
models; `install_openapi` puts them in `components/schemas` with references that resolve from
the document root (a model's own `#/$defs/...` would not). `errors(...)` declares the JSON
error body for the statuses a route answers, which also replaces FastAPI's default 422 schema
(ours is `{"error": {"code", "message"}}`, not FastAPI's `detail` list).
"""
from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    code: str = Field(..., description="stable code: bad_input, not_found, busy, stage_timeout, ...")
    message: str = Field(..., description="what went wrong and what to change; safe to show a user")


class ErrorBody(BaseModel):
    error: ErrorDetail


_REASONS = {
    400: "malformed body: JSON that does not parse or passes a limit, broken multipart",
    401: "no valid API key (when the deployment requires one)",
    404: "no such resource",
    413: "body larger than the configured limit",
    415: "unsupported Content-Type",
    422: "a field is missing, out of range or inconsistent",
    429: "over this API key's quota; see Retry-After",
    500: "internal error; the message names the request id to quote",
    501: "the configured backend cannot do this",
    503: "at capacity or a stage is unavailable; see Retry-After",
    504: "a stage took longer than its limit",
}


def errors(*statuses: int) -> dict[int | str, dict]:
    """`responses=` entries for these statuses, each with the JSON error body."""
    return {s: {"model": ErrorBody, "description": _REASONS.get(s, HTTPStatus(s).phrase)} for s in statuses}


def ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def install_openapi(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Make `app.openapi()` carry `models` (and the models they use) under components/schemas."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=REF)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
