"""The HTTP adapter: a thin FastAPI layer over index_store and model. The only package that imports FastAPI.

    settings.py    PATCHCORE_* settings (pydantic-settings), read when Settings() is called
    app.py         create_app(settings); the lifespan loads, warms up and serves every index in the index folder
    routes.py      POST /predict, POST /predict/batch, GET /indexes, /healthz, /readyz, /metrics
    schemas.py     response models (the OpenAPI schema at /docs)
    inference.py   one request's work on an inference thread: decode -> score -> optional anomaly map
    errors.py      domain errors -> HTTP status codes, in one place
    cli.py         patchcore-serve
"""
