"""Patch scores -> image score (s*, paper eq. 6) and the paper's re-weighting (eq. 7). The threshold on image
scores is model.calibration's."""

from __future__ import annotations

import numpy as np


def patch_scores(sq_dists: np.ndarray, batch: int, grid: tuple[int, int]) -> np.ndarray:
    """Squared L2 nearest-neighbour distances (B*h*w,) -> patch scores (B, h, w) = L2 distances."""
    return np.sqrt(np.maximum(sq_dists.reshape(batch, *grid), 0.0, dtype=np.float32))


def image_scores(scores: np.ndarray) -> np.ndarray:
    """s* (paper eq. 6): the maximum patch score of each image. (B, h, w) -> (B,)"""
    return scores.reshape(scores.shape[0], -1).max(axis=1)


def reweight(s_star: float, neighbour_dists: np.ndarray) -> float:
    """Paper eq. 7: s = (1 - exp||m_test* - m*|| / sum_{m in N_b(m*)} exp||m_test* - m||) * s*.

    neighbour_dists are the L2 distances from the most anomalous test patch m_test* to the b nearest bank neighbours
    of its own nearest bank vector m*; m* is one of them (its own nearest neighbour), at distance s*.
    """
    d = np.asarray(neighbour_dists, dtype=np.float64)
    log_denominator = d.max() + np.log(np.exp(d - d.max()).sum())  # log-sum-exp, overflow-free
    return float((1.0 - np.exp(s_star - log_denominator)) * s_star)
