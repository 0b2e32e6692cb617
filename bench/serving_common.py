"""What bench/bench_predict.py and bench/bench_serving.py share: the index, images, threads and baseline arguments,
and the baseline code exported as a tree.

No import side effects (unlike bench/common.py, which puts this tree on sys.path): bench_predict's workers import
this module while they run the BASELINE's code from PYTHONPATH.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", type=Path, required=True, help="a bottle index folder with extractor.onnx")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline-ref", default="main", help="git ref of today's code ('' to skip)")
    p.add_argument("--baseline-index", type=Path, help="the index the baseline serves (default: --index); one built "
                   "by the baseline code, where it cannot read this tree's metadata")


def export_tree(ref: str, dest: Path) -> Path:
    """The files of git ref `ref` of this repository, extracted into the new folder dest."""
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest
