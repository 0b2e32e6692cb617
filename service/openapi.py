"""The published contract: /openapi.json, /docs and /redoc, made from the routes and fitted to this server's settings.

Generated clients and fuzzers (schemathesis) read /openapi.json, so it must say what THIS server does:
- X-API-Key appears (as a security scheme) only when a key is set: the app factory gives the routes the key
  dependency only then;
- /predict/batch declares at most PATCHCORE_MAX_BATCH_FILES files (more get 413);
- ?index= is required when the server holds several indexes (else 400), and their names are its examples;
- every error body, 422 included, is ErrorBody {"detail": "..."} (service/errors.py).
With a key set, /openapi.json, /docs and /redoc need it too, unless PATCHCORE_PUBLIC_DOCS=true.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, JSONResponse

from service.settings import Settings


def fit_to_server(schema: dict, settings: Settings, names: list[str]) -> dict:
    """Add what the routes cannot know when they are declared: limits from the settings, the loaded index names."""
    body = schema["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    files = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["properties"]["files"]
    files["maxItems"] = settings.max_batch_files
    files["description"] += f"; 1 to {settings.max_batch_files} files of at most {settings.max_upload_bytes} bytes each"
    for path in ("/predict", "/predict/batch"):
        for param in schema["paths"][path]["post"]["parameters"]:
            if param["name"] == "index" and names:
                param["required"] = len(names) > 1
                param["examples"] = {name: {"value": name} for name in names}
    return schema


def install_docs(app: FastAPI, settings: Settings, dependencies: Sequence[Depends]) -> None:
    """Serve the fitted schema and its two viewers; ``dependencies`` guard them (the API key, or nothing)."""

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        registry = app.state.registry
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema = fit_to_server(schema, settings, registry.names)
        if registry.ready:  # the index names are final: keep it
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  (FastAPI's documented way to customise the schema)
    guarded = list(dependencies)

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    async def openapi_json() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False, dependencies=guarded)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")
