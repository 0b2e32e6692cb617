"""The threshold on image scores, chosen from good images only, with a stated false-positive rate.

Users have nothing but good images. Their image scores (each scored as an unseen image would be: see
index_store.calibrate) estimate the distribution of a new good part's score, and the threshold is a high quantile of
it. Three rules are implemented and compared in bench/experiment_calibration.py:

- "student_t" (default): mean + t_(n-1, 1 - fpr) * std * sqrt(1 + 1/n), the normal-theory prediction bound: a new
  good score exceeds it with probability exactly target_fpr when good scores are normal. On the skewed,
  heavy-tailed and contaminated distributions of bench/experiment_calibration.py its expected FPR stays within
  3 x target_fpr for n >= 20, and on the development suite it is the one rule that keeps both the FPR and the recall
  of the oracle threshold on every product.
- "conformal": the finite-sample split-conformal quantile. With n exchangeable good scores, the
  k-th smallest, k = ceil((n + 1)(1 - target_fpr)), is exceeded by a new good score with probability at most
  target_fpr, for ANY score distribution (Vovk et al. 2005; Angelopoulos & Bates 2021). It needs n >= 1/target_fpr - 1
  scores (99 at 1 %); with fewer it takes the largest score, and the promise becomes 1 / (n + 1) (achievable_fpr).
  Guaranteed, but with fewer than 200 scores it sits on the few largest ones, and one unusual good image among
  them takes most of the recall away.
- "gpd": a peaks-over-threshold tail fit (generalised Pareto on the top 30 % of the scores; Pickands 1975), which
  extrapolates beyond the largest score. Best calibrated in simulation (1-2 % at a 1 % target), but it follows one
  unusual good image up the tail as well.

The normalised score is a logistic of the standardised distance to the threshold, so it reads 0.5 exactly at the
threshold whatever the product. Nothing is ever min-max scaled on test data. Pure functions, arrays in, floats out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from model.errors import ConfigError

RULES = ("conformal", "student_t", "gpd")
DEFAULT_RULE = "student_t"
MIN_SCORES = 2


@dataclass(frozen=True)
class Calibration:
    """Good-image score statistics, the threshold derived from them, and the scores themselves (so that the
    threshold can be chosen again for another FPR or rule without a rebuild)."""

    threshold: float
    rule: str
    target_fpr: float
    achievable_fpr: float  # what the rule can promise with this many scores (conformal: max(target, 1/(n+1)))
    mean: float
    std: float
    n_images: int
    min: float
    max: float
    p50: float
    p95: float
    p99: float
    method: str = "unspecified"  # how the scores were obtained: "leave-one-image-out", "calibration-data", ...
    scores: tuple[float, ...] = ()  # one image score per calibration image
    images: tuple[str, ...] = field(default=())  # the calibration images, aligned with scores

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scores"], out["images"] = list(self.scores), list(self.images)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        data = dict(data)
        data["scores"] = tuple(float(s) for s in data.get("scores", ()))
        data["images"] = tuple(str(s) for s in data.get("images", ()))
        return cls(**data)


def calibrate(scores: np.ndarray, target_fpr: float = 0.01, rule: str = DEFAULT_RULE, *,
              method: str = "unspecified", images: tuple[str, ...] = ()) -> Calibration:
    """Good-image scores (n,) -> Calibration with the rule's threshold for `target_fpr`."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size < MIN_SCORES:
        raise ConfigError(f"calibration needs the scores of at least {MIN_SCORES} good images, got {s.size}")
    if not np.isfinite(s).all():
        raise ConfigError("calibration scores must be finite")
    if not 0.0 < target_fpr < 0.5:
        raise ConfigError(f"target_fpr must be in (0, 0.5), got {target_fpr}")
    if images and len(images) != s.size:
        raise ConfigError(f"got {len(images)} image names for {s.size} calibration scores")
    threshold, achievable = threshold_for(s, target_fpr, rule)
    mean, std = float(s.mean()), float(s.std(ddof=1))
    std = max(std, 1e-6 * max(abs(mean), 1.0))  # identical scores: keep the logistic finite
    q = np.quantile(s, [0.5, 0.95, 0.99])
    return Calibration(
        threshold=float(threshold), rule=rule, target_fpr=float(target_fpr), achievable_fpr=float(achievable),
        mean=mean, std=std, n_images=int(s.size), min=float(s.min()), max=float(s.max()), p50=float(q[0]),
        p95=float(q[1]), p99=float(q[2]), method=method, scores=tuple(float(x) for x in s), images=tuple(images),
    )


def recalibrate(calibration: Calibration, target_fpr: float, rule: str | None = None) -> Calibration:
    """The same stored scores, another target FPR (and/or rule)."""
    if not calibration.scores:
        raise ConfigError("this calibration stores no per-image scores; rebuild the index to re-choose its threshold")
    return calibrate(np.asarray(calibration.scores), target_fpr, rule or calibration.rule,
                     method=calibration.method, images=calibration.images)


def threshold_for(scores: np.ndarray, target_fpr: float, rule: str) -> tuple[float, float]:
    """-> (threshold, the false-positive rate the rule can promise with these n scores)."""
    if rule == "conformal":
        return conformal_threshold(scores, target_fpr)
    if rule == "student_t":
        return student_t_threshold(scores, target_fpr), target_fpr
    if rule == "gpd":
        return gpd_threshold(scores, target_fpr), target_fpr
    raise ConfigError(f"unknown threshold rule {rule!r}; choose one of {', '.join(RULES)}")


def conformal_threshold(scores: np.ndarray, target_fpr: float) -> tuple[float, float]:
    """The ceil((n + 1)(1 - fpr))-th smallest score (the largest when n is too small) and its promise."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = s.size
    k = math.ceil((n + 1) * (1.0 - target_fpr) - 1e-9)  # 1-based rank; the epsilon absorbs float error
    if k <= n:
        return float(s[k - 1]), float(target_fpr)
    return float(s[-1]), 1.0 / (n + 1)


def student_t_threshold(scores: np.ndarray, target_fpr: float) -> float:
    """mean + t_(n-1, 1 - fpr) * std * sqrt(1 + 1/n): the one-sided normal prediction bound."""
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    std = max(float(s.std(ddof=1)), 1e-12)
    # Student's t quantile: scipy.special's inverse CDF (what scipy.stats.t.ppf calls), imported here: scipy.special
    # takes 0.3 s to import where scipy.stats takes 0.9 s, paid by every build's calibration stage.
    from scipy.special import stdtrit

    return float(s.mean() + stdtrit(n - 1, 1.0 - target_fpr) * std * math.sqrt(1.0 + 1.0 / n))


def gpd_threshold(scores: np.ndarray, target_fpr: float, tail_fraction: float = 0.3, min_tail: int = 8) -> float:
    """Peaks over threshold: a generalised Pareto fitted (maximum likelihood, shape clipped to [-0.5, 0.5]) to the
    excesses over the (1 - tail_fraction) quantile, then its (1 - fpr) quantile. Inside the data (fpr >= the tail
    share) it is the empirical quantile."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = s.size
    m = min(n - 1, max(min_tail, int(round(tail_fraction * n))))  # number of excesses
    if m < 3 or target_fpr * n >= m:
        return float(np.quantile(s, 1.0 - target_fpr))
    u = s[n - m - 1]
    excess = s[n - m:] - u
    if not np.any(excess > 0):
        return float(u)
    from scipy.stats import genpareto

    shape, _, scale = genpareto.fit(excess, floc=0.0)
    shape = float(np.clip(shape, -0.5, 0.5))
    p = target_fpr * n / m  # exceedance probability within the tail
    if abs(shape) < 1e-6:
        return float(u - scale * math.log(p))
    return float(u + scale / shape * (p ** (-shape) - 1.0))


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
