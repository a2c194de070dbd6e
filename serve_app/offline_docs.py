"""/docs from files shipped in the package (serve_app/docs_ui), not from a CDN.

FastAPI's default /docs page loads Swagger UI from cdn.jsdelivr.net, so it is blank on a
machine without internet access; this serves the same page with the vendored assets.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from serve_app.http_util import error_response

ASSETS = Path(__file__).parent / "docs_ui"
_TYPES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
          "swagger-ui.css": "text/css; charset=utf-8", "favicon-32x32.png": "image/png"}


def add_offline_docs(app: FastAPI) -> None:
    """Call on an app built with docs_url=None and redoc_url=None."""

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API docs",
            swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-assets/favicon-32x32.png")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        if name not in _TYPES:  # a fixed list: no paths, nothing else from the folder
            return error_response(404, "not_found", f"no docs asset {name!r}")
        return FileResponse(ASSETS / name, media_type=_TYPES[name],
                            headers={"Cache-Control": "public, max-age=86400"})
