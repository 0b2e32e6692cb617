"""Anomaly-detection metrics: image/pixel AUROC, F1-max and the pixel AUPRO of MVTec AD.

Pure functions, arrays in and floats out. Conventions used throughout:
- labels: 0 = good, 1 = anomalous; masks: (H, W) arrays, non-zero = anomalous pixel;
- higher scores mean "more anomalous"; a sample is predicted anomalous when score >= threshold.
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

# scipy.ndimage.label structuring elements. MVTec's official evaluation code labels ground-truth regions with
# `np.ones((3, 3))` (8-connectivity) and anomalib uses cv2.connectedComponents (8 by default).
_STRUCTURES = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of image scores against image labels (0 good, 1 anomalous)."""
    y, s = _labels_and_scores(labels, scores, "image_auroc")
    _require_both_classes(y, "image_auroc", "images", "the test set needs good and anomalous images")
    return float(roc_auc_score(y, s))


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """Area under the ROC curve over every pixel of every test image (good images included).

    Equal to sklearn's roc_auc_score on the flattened pixels; roc_curve + auc gives the same trapezoids about twice
    as fast on millions of pixels (it skips roc_auc_score's label binarisation).
    """
    y, s = _flat_masks_and_maps(masks, maps, "pixel_auroc")  # (N*H*W,) bool, (N*H*W,) float32 or float64
    _require_both_classes(y, "pixel_auroc", "pixels", "at least one mask must mark a defect")
    fpr, tpr, _ = roc_curve(y, s)
    return float(auc(fpr, tpr))


def f1_max(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds (anomalib's F1Max) -> (best_f1, threshold that reaches it).

    Every distinct score is a candidate threshold (predict anomalous when score >= threshold); among equally good
    thresholds the lowest is returned.
    """
    y, s = _labels_and_scores(labels, scores, "f1_max")
    if not y.any():
        raise ValueError("f1_max needs at least one anomalous label (1): F1 is undefined without positives.")
    # precision/recall have one more entry than thresholds: the final (precision 1, recall 0) point has none.
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def f1_at_threshold(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                    threshold: float) -> float:
    """F1 when predicting anomalous for score >= threshold; 0.0 when undefined (no positives predicted or true)."""
    y, s = _labels_and_scores(labels, scores, "f1_at_threshold")
    predicted = s >= threshold
    true_pos = int(np.count_nonzero(predicted & y))
    wrong = int(np.count_nonzero(predicted != y))  # false positives + false negatives
    denominator = 2 * true_pos + wrong
    return 2 * true_pos / denominator if denominator else 0.0


def rates_at_threshold(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                       threshold: float) -> tuple[float, float]:
    """(false-positive rate on the good images, recall on the anomalous ones) when flagging score >= threshold."""
    y, s = _labels_and_scores(labels, scores, "rates_at_threshold")
    _require_both_classes(y, "rates_at_threshold", "images", "the test set needs good and anomalous images")
    flagged = s >= threshold
    return float(flagged[~y].mean()), float(flagged[y].mean())


def oracle_recall_at_fpr(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                         max_fpr: float) -> float:
    """The best recall any threshold reaches on this test set while flagging at most max_fpr of its good images.

    Flagging score >= t: the good images may keep floor(max_fpr * n_good) false positives, so t sits just above the
    (that + 1)-th highest good score, and every anomalous score strictly above it counts.
    """
    y, s = _labels_and_scores(labels, scores, "oracle_recall_at_fpr")
    _require_both_classes(y, "oracle_recall_at_fpr", "images", "the test set needs good and anomalous images")
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr!r}")
    good = np.sort(s[~y])[::-1]  # descending
    allowed = int(np.floor(max_fpr * good.size + 1e-9))
    if allowed >= good.size:
        return 1.0
    return float(np.mean(s[y] > good[allowed]))


def pro_curve(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray],
              connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-region-overlap curve over every distinct threshold -> (fprs, pros), both (T + 1,), FPR ascending.

    For a threshold t: PRO(t) = mean over all ground-truth connected components (of all images) of the fraction of
    the component's pixels with map >= t; FPR(t) = fraction of ground-truth-negative pixels (all images, good ones
    included) with map >= t. The curve has one point per unique score, plus (0, 0) for a threshold above every score;
    its last point, at the lowest score, is (1, 1).
    """
    return _pro_points(*_pixel_table(masks, maps, connectivity, "pro_curve"), min_score=-np.inf)


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3,
          connectivity: int = 8) -> float:
    """Normalised area under the PRO curve for FPR in [0, fpr_limit] (MVTec AD's AU-PRO, 1.0 is perfect).

    Exact, no threshold grid: integrates `pro_curve` with the trapezoid rule, the curve interpolated linearly at
    exactly fpr_limit, then divides by fpr_limit. Only pixels at or above the score where the FPR first reaches
    fpr_limit are sorted. connectivity=8 follows the official MVTec AD evaluation code (scipy.ndimage.label with a
    3x3 structure of ones) and anomalib (cv2.connectedComponents); 4 is available.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}; the MVTec AD convention is 0.3.")
    scores, pro_weight, is_negative, n_components = _pixel_table(masks, maps, connectivity, "aupro")
    negative_scores = scores[is_negative]  # (n_negative,)
    # k-th highest negative score: FPR(t) >= k / n_negative >= fpr_limit there. One extra pixel guards rounding.
    k = min(negative_scores.size, int(np.ceil(fpr_limit * negative_scores.size)) + 1)
    min_score = np.partition(negative_scores, negative_scores.size - k)[negative_scores.size - k]
    del negative_scores
    fprs, pros = _pro_points(scores, pro_weight, is_negative, n_components, min_score)
    return _area_up_to(fprs, pros, fpr_limit) / fpr_limit


def _pixel_table(masks, maps, connectivity: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Validated flat pixels -> (scores, PRO weight = 1 / component size or 0, negative flags, component count)."""
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 4 or 8 (pixel neighbourhood), got {connectivity!r}.")
    _check_pairs(masks, maps, name)
    scores = _concat_maps(maps)  # (N*H*W,)
    pro_weight, is_negative, n_components = _component_weights(masks, _STRUCTURES[connectivity])
    if n_components == 0:
        raise ValueError(f"{name} needs at least one anomalous pixel in the masks; all masks are empty.")
    if not is_negative.any():
        raise ValueError(f"{name} needs ground-truth-negative pixels to measure a false-positive rate; "
                         "every mask pixel is anomalous.")
    return scores, pro_weight, is_negative, n_components


def _pro_points(scores: np.ndarray, pro_weight: np.ndarray, is_negative: np.ndarray, n_components: int,
                min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every unique score >= min_score, descending thresholds, after a leading (0, 0).

    Sort once by score; both quantities are then cumulative sums (FP count, sum of 1 / component size). Pixels with
    equal scores form one point: the last of each run, which counts every pixel at that threshold.
    """
    n_negative = int(np.count_nonzero(is_negative))
    keep = np.flatnonzero(scores >= min_score)  # (M,)
    order = keep[np.argsort(scores[keep])[::-1]]  # (M,) pixel indices, descending score
    del keep
    sorted_scores = scores[order]
    fprs = np.cumsum(is_negative[order], dtype=np.int64) / n_negative
    pros = np.cumsum(pro_weight[order]) / n_components
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    fprs, pros = fprs[last_of_tie], np.minimum(pros[last_of_tie], 1.0)  # cumsum rounding can exceed 1 by ~1e-16
    return np.concatenate(([0.0], fprs)), np.concatenate(([0.0], pros))


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [x[0], x_max]; x ascending (repeats allowed), x[-1] >= x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))  # x[:inside] <= x_max
    xs, ys = x[:inside], y[:inside]
    if xs[-1] < x_max:  # close the curve with the point interpolated on the segment crossing x_max
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs = np.append(xs, x_max)
        ys = np.append(ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0))
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def _component_weights(masks: Sequence[np.ndarray],
                       structure: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-pixel PRO weight (1 / size of its component, 0 outside), negative-pixel flags, component count."""
    weights, negatives, n_components = [], [], 0
    for mask in masks:
        labelled, count = ndimage.label(np.asarray(mask) > 0, structure=structure)  # (H, W) int, 0 = background
        sizes = np.bincount(labelled.ravel())  # sizes[0] = background
        inverse = np.zeros(count + 1)
        inverse[1:] = 1.0 / sizes[1:]
        weights.append(inverse[labelled.ravel()])
        negatives.append(labelled.ravel() == 0)
        n_components += count
    return np.concatenate(weights), np.concatenate(negatives), n_components


def _labels_and_scores(labels, scores, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"{name} needs 1-D labels and scores of equal length, got shapes {y.shape} and {s.shape}.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} labels must be 0 (good) or 1 (anomalous), got values {np.unique(y)[:10]}.")
    if not np.isfinite(s).all():
        bad = np.flatnonzero(~np.isfinite(s))[:10]
        raise ValueError(f"{name} scores must be finite; found NaN or inf at indices {bad}.")
    return y.astype(bool), s


def _require_both_classes(y: np.ndarray, name: str, unit: str, fix: str) -> None:
    positives = int(np.count_nonzero(y))
    if positives in (0, y.size):
        only = "anomalous (1)" if positives else "good (0)"
        raise ValueError(f"{name} is undefined when every one of the {y.size} {unit} is {only}: {fix}.")


def _check_pairs(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], name: str) -> None:
    if len(masks) != len(maps) or len(maps) == 0:
        raise ValueError(f"{name} needs one mask per anomaly map and at least one pair; "
                         f"got {len(masks)} masks and {len(maps)} maps.")
    for i, (mask, amap) in enumerate(zip(masks, maps)):
        if np.shape(mask) != np.shape(amap) or np.ndim(amap) != 2:
            raise ValueError(f"{name}: mask {i} has shape {np.shape(mask)} but its map has {np.shape(amap)}; "
                             "both must be the same (H, W): resize the anomaly map to the mask size.")


def _concat_maps(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Flatten maps into one score vector, float32 unless a map is float64 (keeps ties and ordering exact)."""
    dtype = np.result_type(np.float32, *(np.asarray(m).dtype for m in maps))
    scores = np.concatenate([np.asarray(m, dtype=dtype).ravel() for m in maps])  # (N*H*W,)
    if not np.isfinite(scores).all():
        raise ValueError("anomaly maps must be finite; found NaN or inf values.")
    return scores


def _flat_masks_and_maps(masks, maps, name: str) -> tuple[np.ndarray, np.ndarray]:
    _check_pairs(masks, maps, name)
    y = np.concatenate([(np.asarray(m) > 0).ravel() for m in masks])  # (N*H*W,) bool
    return y, _concat_maps(maps)
