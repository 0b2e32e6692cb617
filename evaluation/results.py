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
    # The decision a production line acts on: the threshold stored in the index (good training images only).
    threshold: float
    target_fpr: float  # the false-positive rate the threshold was calibrated for
    image_f1_at_threshold: float
    fpr_at_threshold: float  # realised: share of the test set's good images flagged
    recall_at_threshold: float  # share of the anomalous test images flagged
    oracle_recall_at_target: float  # best recall any threshold reaches on this test set at FPR <= target_fpr
    pixel_auroc: float | None  # None: the category has image labels only (no masks)
    pixel_aupro: float | None  # normalised area under the PRO curve for FPR in [0, AUPRO_FPR_LIMIT]

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


AVERAGED = ("image_auroc", "image_f1_max", "image_f1_at_threshold", "fpr_at_threshold", "recall_at_threshold",
            "oracle_recall_at_target", "pixel_auroc", "pixel_aupro")


def compute_metrics(run: CategoryRun, threshold: float, target_fpr: float, has_masks: bool,
                    name: str = "category") -> CategoryMetrics:
    """Image metrics on the image scores; pixel metrics over every test image's map and mask (good ones included)
    when the category has masks, else None."""
    labels = np.array([s.sample.label for s in run.scored], dtype=np.int64)  # (N,)
    scores = np.array([s.image_score for s in run.scored], dtype=np.float64)  # (N,)
    n_anomalous = int(labels.sum())
    if n_anomalous in (0, labels.size):
        missing = "anomalous" if n_anomalous == 0 else "good"
        raise EvaluationError(f"category {name!r} has no {missing} test images; AUROC and F1 need both kinds: "
                              "check the test split of the data set")
    if has_masks and not any(mask.any() for mask in run.masks):
        raise EvaluationError(f"every ground-truth mask of category {name!r} is empty; pixel metrics need marked "
                              "defects: check the ground-truth files")
    f1, f1_threshold = metrics.f1_max(labels, scores)
    fpr, recall = metrics.rates_at_threshold(labels, scores, threshold)
    return CategoryMetrics(
        image_auroc=metrics.image_auroc(labels, scores),
        image_f1_max=f1,
        image_f1_max_threshold=f1_threshold,
        threshold=float(threshold),
        target_fpr=float(target_fpr),
        image_f1_at_threshold=metrics.f1_at_threshold(labels, scores, threshold),
        fpr_at_threshold=fpr,
        recall_at_threshold=recall,
        oracle_recall_at_target=metrics.oracle_recall_at_fpr(labels, scores, target_fpr),
        pixel_auroc=metrics.pixel_auroc(run.masks, run.maps) if has_masks else None,
        pixel_aupro=metrics.aupro(run.masks, run.maps, fpr_limit=AUPRO_FPR_LIMIT) if has_masks else None,
    )


def average(per_category: Sequence[CategoryMetrics]) -> dict[str, float | None]:
    """Unweighted mean over categories of each metric; a pixel metric averages the categories that have it
    (None when none has)."""
    if not per_category:
        raise EvaluationError("no category was evaluated; pass --categories with at least one name")
    out: dict[str, float | None] = {}
    for key in AVERAGED:
        values = [getattr(m, key) for m in per_category if getattr(m, key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out
