"""Patch scores -> image score, the paper's re-weighting (eq. 7), and calibration of a threshold on good images.

Calibration uses good images only (users have nothing else): the image scores of n held-out good images give the
nominal mean and spread, and the threshold is the one-sided (1 - target_fpr) Student-t PREDICTION bound for the
score of a new good image: mean + t_(n-1) * std * sqrt(1 + 1/n). Under a normal model of good-image scores, a new
good part exceeds it with probability ``target_fpr`` (the expected false-positive rate), and the t factor makes the
threshold honestly wider when only a few good images were held out. The normalised score is a logistic of the
standardised distance to that threshold, so it reads 0.5 exactly at the threshold, rises towards 1 for anomalies and
falls towards 0 for typical good parts. Nothing is ever min-max scaled on test data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from model.errors import ConfigError


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


@dataclass(frozen=True)
class Calibration:
    """Nominal image-score statistics from good images, and the threshold derived from them."""

    threshold: float
    mean: float
    std: float
    target_fpr: float
    n_images: int
    min: float
    max: float
    p50: float
    p95: float
    p99: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)


def calibrate(nominal_scores: np.ndarray, target_fpr: float = 0.01) -> Calibration:
    """Threshold = mean + t_(n-1, 1 - target_fpr) * std * sqrt(1 + 1/n) of n good-image scores."""
    s = np.asarray(nominal_scores, dtype=np.float64).ravel()
    if s.size < 2:
        raise ConfigError(f"calibration needs the scores of at least 2 good images, got {s.size}")
    if not 0.0 < target_fpr < 0.5:
        raise ConfigError(f"target_fpr must be in (0, 0.5), got {target_fpr}")
    mean, std = float(s.mean()), float(s.std(ddof=1))
    std = max(std, 1e-6 * max(abs(mean), 1.0))  # identical scores: keep the logistic finite
    factor = float(student_t.ppf(1.0 - target_fpr, df=s.size - 1)) * math.sqrt(1.0 + 1.0 / s.size)
    q = np.quantile(s, [0.5, 0.95, 0.99])
    return Calibration(
        threshold=mean + factor * std, mean=mean, std=std, target_fpr=target_fpr, n_images=int(s.size),
        min=float(s.min()), max=float(s.max()), p50=float(q[0]), p95=float(q[1]), p99=float(q[2]),
    )


def normalise(scores: np.ndarray | float, calibration: Calibration) -> np.ndarray:
    """sigmoid((s - threshold) / std): 0.5 at the threshold. Works on image scores and on anomaly maps.

    float32 input (anomaly maps) stays float32, for speed; anything else is computed in float64.
    """
    s = np.asarray(scores)
    dtype = np.float32 if s.dtype == np.float32 else np.float64
    z = (s.astype(dtype, copy=False) - dtype(calibration.threshold)) * dtype(0.5 / calibration.std)
    return dtype(0.5) * (dtype(1.0) + np.tanh(z))  # == 1 / (1 + exp(-2z)), without overflow


def is_anomalous(score: float, calibration: Calibration) -> bool:
    return bool(score >= calibration.threshold)
