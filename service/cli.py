"""patchcore-serve: run the HTTP server on a folder of indexes.

    patchcore-serve --index-dir indexes --host 0.0.0.0 --port 8000 [--workers 2] [--device cuda] [--threads 4]
                    [--runtime auto|onnx|torch]

Every option also reads PATCHCORE_<NAME> from the environment (arguments win); the other settings (API key, upload
limits, default heatmap, ...) are environment-only, see service/settings.py.
Exit codes: 0 stopped normally, 1 an index or setting is unusable (the log says how to fix it), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from model.errors import PatchCoreError
from index_store.runtime import passive_openmp
from service.logs import configure_logging
from service.settings import Settings

log = logging.getLogger("service.cli")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="patchcore-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index-dir", type=Path, help="one index folder, or a folder of index folders")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--workers", type=int, help="server processes, each with its own copy of the indexes")
    parser.add_argument("--device", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--runtime", choices=("auto", "onnx", "torch"),
                        help="extractor runtime (default auto: onnx when the index has extractor.onnx)")
    parser.add_argument("--threads", type=int, help="torch/OpenMP/FAISS threads per process (default: cores/workers)")
    parser.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    parser.add_argument("--log-format", choices=("json", "text"), help="json lines (default) or key=value")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    if settings.workers > 1 and args.threads is None and "PATCHCORE_THREADS" not in os.environ:
        # Share the cores between the processes instead of oversubscribing them.
        settings = settings.model_copy(update={"threads": max(1, settings.threads // settings.workers)})
    return settings


def serve(settings: Settings) -> int:
    import uvicorn

    common = dict(host=settings.host, port=settings.port, log_config=None, access_log=False)
    if settings.workers == 1:
        from service.app import create_app

        try:
            uvicorn.run(create_app(settings), **common)
        except SystemExit as exc:  # uvicorn exits 3 when the lifespan fails; its log says why
            return 1 if exc.code else 0
        return 0
    from service.indexes import check

    check(settings.index_dir)  # fail here, once, rather than in every worker that uvicorn would restart
    os.environ.update(settings.to_env())  # the workers build their settings from the environment
    uvicorn.run("service.app:app_from_env", factory=True, workers=settings.workers, **common)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        if any(e["loc"] == ("index_dir",) and e["type"] == "missing" for e in exc.errors()):
            problems = "no index folder: pass --index-dir DIR or set PATCHCORE_INDEX_DIR"
        configure_logging()
        log.error("bad settings: %s", problems)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    passive_openmp()  # before torch / faiss load (service.app imports them); the workers inherit it
    try:
        return serve(settings)
    except PatchCoreError as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
