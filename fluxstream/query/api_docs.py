"""The interactive API docs, served entirely from this process (air-gapped installs have no CDN).

Swagger UI's assets come from the ``swagger-ui-bundle`` package and are served under
``/docs/assets``; the page references nothing outside this origin. The OpenAPI document
carries the package version, a tag per route group, and the API-key schemes of
``query.auth`` (``Authorization: Bearer`` or ``X-API-Key``) so "Authorize" works from the page.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"

TAGS = [
    {"name": "search", "description": "BM25, vector and hybrid search; batches; read-your-writes via min_position"},
    {"name": "answer", "description": "Retrieval-augmented answers with citations, and feedback on them"},
    {"name": "documents", "description": "What the index holds for one document"},
    {"name": "admin", "description": "Collections, cache and usage statistics (API keys with the admin scope)"},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics (no key needed)"},
]

# Documentation of query.auth's headers: the values are read there (either header is accepted), these
# only declare the schemes (auto_error=False: a missing key is query.auth's 401, not FastAPI's 403).
BEARER = HTTPBearer(auto_error=False, scheme_name="bearerAuth",
                    description="`Authorization: Bearer <key>` (a key from `fluxstream api-key`)")
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKeyHeader",
                       description="`X-API-Key: <key>`, the same keys as the bearer scheme")


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and its assets; the app must be created with ``docs_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=swagger_ui_path), name="swagger-ui-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy prefix, still same-origin
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"), title=f"{app.title} — API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )
