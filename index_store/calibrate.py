"""Good images scored for the threshold at build time, as unseen good images would be scored.

- score_left_out: training images already in the memory bank, each scored as if it had been left out of the
  build (model.leave_out: its own bank vectors skipped, the holes they leave refilled the way the greedy would).
- score_unseen: images the bank never saw (--calibration-data, or the held-out sample of chunked builds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from model.config import PatchCoreConfig
from model.detector import Detector
from model.extractor import Extractor
from model.leave_out import LeaveOneOut

if TYPE_CHECKING:
    from index_store.build import BuildOptions, Streamed


def score_left_out(index: faiss.Index, streamed: Streamed, image_ids: np.ndarray,
                   config: PatchCoreConfig) -> list[float]:
    """Leave-one-image-out image scores of the training images image_ids (single-pass builds)."""
    if streamed.rows is None:
        raise ValueError("leave-one-image-out scoring needs every training patch (a single-pass build)")
    per_image = streamed.grid[0] * streamed.grid[1]
    n_used = len(streamed.used)
    loo = LeaveOneOut(index, streamed.bank, streamed.bank_image_ids, streamed.rows,
                      np.repeat(np.arange(n_used, dtype=np.int32), per_image), seed=config.seed)
    return loo.image_scores(image_ids, config.num_neighbors if config.reweight else None).tolist()


def score_unseen(paths: list[Path], embedder: Extractor, index: faiss.Index, config: PatchCoreConfig,
                 options: BuildOptions, on_skip: Callable) -> tuple[list[float], list[tuple[Path, str]]]:
    """Image scores of good images the bank never saw, plus (path, sha256) of each one read."""
    from index_store.build import embed_stream

    detector = Detector(config, embedder, index, calibration=None)
    scores: list[float] = []
    scored: list[tuple[Path, str]] = []
    for emb, names in embed_stream(paths, embedder, options, on_skip, "calibrate"):
        patch, nn_ids = detector.patch_scores(emb)
        scores.extend(detector.image_scores(emb, patch, nn_ids).tolist())
        scored.extend(names)
    return scores, scored


def main(argv: list[str] | None = None) -> int:
    """patchcore-calibrate INDEX [--target-fpr F] [--threshold-rule R]: re-choose the threshold of a built index from
    the per-image good scores stored in its metadata, without a rebuild; prints the old and new thresholds and the
    most atypical good images (worth a look: a defective part among the "good" ones lifts the threshold)."""
    import argparse
    import sys

    from index_store import store
    from model.calibration import RULES, recalibrate
    from model.errors import PatchCoreError

    parser = argparse.ArgumentParser(prog="patchcore-calibrate", description=main.__doc__.split(":")[0])
    parser.add_argument("index", type=Path, help="an index folder (holds metadata.json)")
    parser.add_argument("--target-fpr", type=float, help="new share of good parts the threshold may flag")
    parser.add_argument("--threshold-rule", choices=RULES, help="new rule (default: keep the index's)")
    parser.add_argument("--top", type=int, default=5, help="how many of the most atypical good images to list")
    args = parser.parse_args(argv)
    try:
        metadata = store.read_metadata(args.index)
        old = metadata.calibration
        new = old
        if args.target_fpr is not None or args.threshold_rule is not None:
            new = recalibrate(old, args.target_fpr if args.target_fpr is not None else old.target_fpr,
                              args.threshold_rule)
            store.write_metadata(args.index, replace(metadata, calibration=new))
    except (PatchCoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.index}: {old.n_images} good images scored ({old.method})")
    print(f"  threshold {old.threshold:.4f} ({old.rule}, target FPR {old.target_fpr:g})"
          + (f" -> {new.threshold:.4f} ({new.rule}, target FPR {new.target_fpr:g})" if new is not old else ""))
    if new.achievable_fpr > new.target_fpr:
        print(f"  note: with {new.n_images} images the {new.rule} rule can promise {new.achievable_fpr:.3f} at best")
    order = np.argsort(new.scores)[::-1][: args.top]
    if new.images:
        print("  most atypical good images (score, share of good images at or above it):")
        for i in order:
            print(f"    {new.scores[i]:.4f}  {np.mean(np.asarray(new.scores) >= new.scores[i]):.3f}  {new.images[i]}")
    if new is not old:
        print("  a running server picks the new threshold up when it reloads the index")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
