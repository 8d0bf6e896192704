"""The API page (/docs): Swagger UI served from static/vendor like htmx and uPlot, so it works offline.

FastAPI's built-in page loads Swagger UI from a CDN: with no internet (an air-gapped box, a laptop on a
train) the page stayed white ("SwaggerUIBundle is not defined"). ReDoc, also CDN-only, is not offered.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

VENDOR = "/static/vendor/swagger-ui"

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> HTMLResponse:
    """Swagger UI for this app's OpenAPI schema, every asset from this app."""
    return get_swagger_ui_html(
        openapi_url=str(request.app.openapi_url),
        title=f"{request.app.title} API",
        swagger_js_url=f"{VENDOR}/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui.css",
        swagger_favicon_url=f"{VENDOR}/favicon-32x32.png",
    )
