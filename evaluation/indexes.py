"""Where each category's index comes from: built from its training good images, or reused with --index.

A reused index is loaded exactly as the server loads it (store.load: the detector is rebuilt from the config stored
in its metadata). A built one is saved to OUT/CAT/index first and then loaded back the same way, so a later run
with --index gives identical scores.

--index accepts an index folder (holds metadata.json; one category only) or a parent with one folder per category:
PARENT/CAT/metadata.json, or PARENT/CAT/index/metadata.json (the --out folder of an earlier evaluation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from evaluation.datasets import Category
from evaluation.runner import EvaluationError
from index_store import store
from index_store.build import BuildOptions, build_index
from model.config import PatchCoreConfig

DEFAULT_CONFIG = PatchCoreConfig()


@dataclass(frozen=True)
class IndexSource:
    bundle: store.IndexBundle
    reused: bool
    seconds: float  # build + save + load, or load only
    build_stage_seconds: dict[str, float]  # empty when reused


def find_index_dir(index_arg: Path, category: str, n_categories: int) -> Path:
    """The index folder of `category` under --index (see the module docstring)."""
    index_arg = Path(index_arg)
    if (index_arg / store.METADATA_FILE).is_file():
        if n_categories != 1:
            raise EvaluationError(f"--index {index_arg} is a single index but {n_categories} categories are being "
                                  "evaluated; pass one name with --categories, or a parent folder with one index "
                                  "folder per category")
        return index_arg
    if not index_arg.is_dir():
        raise EvaluationError(f"--index {index_arg} does not exist; pass an index folder (with metadata.json) or a "
                              "parent folder with one index folder per category")
    for candidate in (index_arg / category, index_arg / category / "index"):
        if (candidate / store.METADATA_FILE).is_file():
            return candidate
    found = sorted(p.name for p in index_arg.iterdir()
                   if (p / store.METADATA_FILE).is_file() or (p / "index" / store.METADATA_FILE).is_file())
    raise EvaluationError(f"no index for category {category!r} under --index {index_arg}: expected "
                          f"{index_arg / category / store.METADATA_FILE}; indexes found there: {found or 'none'}. "
                          "Drop --index to build one")


def reuse(index_dir: Path, config: PatchCoreConfig, device: str, runtime: str = "auto") -> IndexSource:
    """Load an existing index; model options given on the command line must not contradict its stored config."""
    started = time.perf_counter()
    bundle = store.load(index_dir, device, runtime=runtime)
    if config != DEFAULT_CONFIG and config != bundle.metadata.config:
        raise EvaluationError(f"the model options given differ from the config stored in {index_dir} "
                              f"({_difference(config, bundle.metadata.config)}); a reused index always runs with "
                              "its own config: drop the model options, or drop --index to build a new index")
    return IndexSource(bundle, True, round(time.perf_counter() - started, 3), {})


def build(category: Category, root: Path, config: PatchCoreConfig, options: BuildOptions,
          out_dir: Path) -> IndexSource:
    """Build from the category's training good images, save to out_dir (replacing it) and load it back."""
    started = time.perf_counter()
    result = build_index(category.train, config, options, root=root)
    store.save_result(out_dir, result, force=True)
    bundle = store.load(out_dir, options.device)
    return IndexSource(bundle, False, round(time.perf_counter() - started, 3), dict(result.stage_seconds))


def _difference(given: PatchCoreConfig, stored: PatchCoreConfig) -> str:
    a, b = given.to_dict(), stored.to_dict()
    return ", ".join(f"{key}: given {a[key]!r}, index {b[key]!r}" for key in sorted(a) if a[key] != b[key])
