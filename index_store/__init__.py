"""Persistence and build: index folders on disk (index.faiss + metadata.json) and the builder. Knows model/, never HTTP."""

from importlib import metadata as _metadata


def package_version() -> str:
    try:
        return _metadata.version("patchcore-service")
    except _metadata.PackageNotFoundError:
        return "0+unknown"
