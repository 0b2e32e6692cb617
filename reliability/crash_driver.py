"""patchcore-build-index with probes: named points of a build that announce themselves, where it can be frozen.

    python -u -m reliability.crash_driver NAME:N:MODE -- --data DIR --out DIR [patchcore-build-index options]

Every call of a probed function prints ``PROBE <name> <count>`` on stdout. The N-th call of probe NAME then, by
MODE: ``at`` freezes before the call, ``after`` freezes after it returned, ``pass`` goes on (the harness kills
after a delay). A frozen builder prints ``FROZEN`` and waits for a line on stdin: the harness either SIGKILLs it
there (reliability/crash_build.py) or lets it go on (the concurrent-writer test). No production code knows.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable

# name -> (module, attribute, owner class or None): the build's stages in order, then the save's steps.
PROBES = {
    "load_model": ("model.features", "__init__", "PatchEmbedder"),  # building the backbone
    "embed": ("model.features", "embed_pixels", "PatchEmbedder"),  # a batch of patch embeddings (extract, calibration)
    "coreset": ("index_store.build", "select_coreset", None),
    "index": ("model.knn", "build_index", None),  # the FAISS index of the memory bank
    "calibrate": ("model.detector", "patch_scores", "Detector"),  # scoring held-out good images
    "write_index": ("faiss", "write_index", None),  # save: index.faiss into the temporary folder
    "fsync": ("index_store.store", "fsync_file", None),  # save: 1 index.faiss, 2 metadata.json on disk
    "metadata": ("index_store.metadata", "to_json", "IndexMetadata"),  # save: metadata.json about to be written
    "exchange": ("index_store.store", "exchange", None),  # save: the atomic swap of old and new
    "remove_tree": ("index_store.store", "remove_tree", None),  # save: the old index (or leftovers) removed
}


def _freeze() -> None:
    print("FROZEN", flush=True)
    sys.stdin.readline()  # the harness kills us here, or sends a line to go on


def _probe(name: str, fn: Callable, target: tuple[str, int, str]) -> Callable:
    calls = 0

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        print(f"PROBE {name} {calls}", flush=True)
        hit = (name, calls) == target[:2]
        if hit and target[2] == "at":
            _freeze()
        result = fn(*args, **kwargs)
        if hit and target[2] == "after":
            _freeze()
        return result

    return wrapper


def install(target: tuple[str, int, str]) -> None:
    for name, (module_name, attr, owner) in PROBES.items():
        module = importlib.import_module(module_name)
        holder = getattr(module, owner) if owner else module
        setattr(holder, attr, _probe(name, getattr(holder, attr), target))


def main(argv: list[str]) -> int:
    spec, sep, rest = argv[0], argv[1], argv[2:]
    if sep != "--":
        raise SystemExit(__doc__)
    name, count, mode = spec.split(":")
    if name not in PROBES or mode not in ("at", "after", "pass"):
        raise SystemExit(f"unknown probe {spec!r}; probes: {', '.join(PROBES)}; modes: at, after, pass")
    install((name, int(count), mode))
    from index_store.cli import main as build_main

    return build_main(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
