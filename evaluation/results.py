"""One category's scored test set -> its metrics; several categories -> their average. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from evaluation import metrics
from evaluation.runner import CategoryRun, EvaluationError

AUPRO_FPR_LIMIT = 0.3  # MVTec AD's convention: PRO integrated up to a 30 % pixel false-positive rate


@dataclass(frozen=True)
class CategoryMetrics:
    image_auroc: float
    image_f1_max: float  # best F1 over all thresholds (an oracle threshold chosen on the test set)
    image_f1_max_threshold: float  # the image score that reaches it
    image_f1_at_calibrated_threshold: float  # F1 at the index's threshold, calibrated on good images only
    calibrated_threshold: float
    pixel_auroc: float
    pixel_aupro: float  # normalised area under the PRO curve for FPR in [0, AUPRO_FPR_LIMIT]

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


AVERAGED = ("image_auroc", "image_f1_max", "image_f1_at_calibrated_threshold", "pixel_auroc", "pixel_aupro")


def compute_metrics(run: CategoryRun, calibrated_threshold: float, name: str = "category") -> CategoryMetrics:
    """Image metrics on the image scores, pixel metrics over every test image's map and mask (good ones included)."""
    labels = np.array([s.sample.label for s in run.scored], dtype=np.int64)  # (N,)
    scores = np.array([s.image_score for s in run.scored], dtype=np.float64)  # (N,)
    n_anomalous = int(labels.sum())
    if n_anomalous in (0, labels.size):
        missing = "anomalous" if n_anomalous == 0 else "good"
        raise EvaluationError(f"category {name!r} has no {missing} test images; AUROC and F1 need both kinds: "
                              "check the test split of the data set")
    if not any(mask.any() for mask in run.masks):
        raise EvaluationError(f"every ground-truth mask of category {name!r} is empty; pixel metrics need marked "
                              "defects: check the ground-truth files")
    f1, f1_threshold = metrics.f1_max(labels, scores)
    return CategoryMetrics(
        image_auroc=metrics.image_auroc(labels, scores),
        image_f1_max=f1,
        image_f1_max_threshold=f1_threshold,
        image_f1_at_calibrated_threshold=metrics.f1_at_threshold(labels, scores, calibrated_threshold),
        calibrated_threshold=float(calibrated_threshold),
        pixel_auroc=metrics.pixel_auroc(run.masks, run.maps),
        pixel_aupro=metrics.aupro(run.masks, run.maps, fpr_limit=AUPRO_FPR_LIMIT),
    )


def average(per_category: Sequence[CategoryMetrics]) -> dict[str, float]:
    """Unweighted mean over categories of each threshold-free metric and of the calibrated F1 (the usual average)."""
    if not per_category:
        raise EvaluationError("no category was evaluated; pass --categories with at least one name")
    return {key: float(np.mean([getattr(m, key) for m in per_category])) for key in AVERAGED}
