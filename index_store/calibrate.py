"""Good images scored for the threshold at build time, as unseen good images would be scored.

- score_left_out: training images already in the memory bank, each scored as if it had been left out of the
  build (model.leave_out: its own bank vectors skipped, the holes they leave refilled the way the greedy would).
- score_unseen: images the bank never saw (--calibration-data, or the held-out sample of chunked builds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from model.config import PatchCoreConfig
from model.detector import Detector
from model.features import PatchEmbedder
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


def score_unseen(paths: list[Path], embedder: PatchEmbedder, index: faiss.Index, config: PatchCoreConfig,
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
