"""Metrics against hand-computed answers and slow, independent brute-force references."""


import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from evaluation.metrics import (aupro, f1_at_threshold, f1_max, image_auroc, oracle_recall_at_fpr, pixel_auroc,
                                pro_curve, rates_at_threshold)

STRUCTURE = {4: np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]), 8: np.ones((3, 3), dtype=int)}


# ---------------------------------------------------------------- slow references (loops, one threshold at a time)

def reference_pro_curve(masks, maps, connectivity):
    """Sweep every unique score (descending) as threshold; count each component's overlap explicitly."""
    components, negatives = [], []  # (component mask, its map) for every region; (negative mask, map) per image
    for mask, amap in zip(masks, maps):
        labelled, count = ndimage.label(mask > 0, structure=STRUCTURE[connectivity])
        components += [(labelled == k, amap) for k in range(1, count + 1)]
        negatives.append((labelled == 0, amap))
    n_negative = sum(np.sum(negative) for negative, _ in negatives)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        overlaps = [np.sum(region & (amap >= t)) / np.sum(region) for region, amap in components]
        false_pos = sum(np.sum(negative & (amap >= t)) for negative, amap in negatives)
        fprs.append(false_pos / n_negative)
        pros.append(sum(overlaps) / len(overlaps))
    return np.array(fprs), np.array(pros)


def reference_area(fprs, pros, limit):
    """Trapezoids one segment at a time, the last one cut at `limit` with a linearly interpolated PRO."""
    area = 0.0
    for x0, x1, y0, y1 in zip(fprs[:-1], fprs[1:], pros[:-1], pros[1:]):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:
            y_cut = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_cut) / 2
    return area / limit


def brute_force_f1_max(labels, scores):
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        fp = np.sum(pred & (labels == 0))
        fn = np.sum(~pred & (labels == 1))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


# ---------------------------------------------------------------- random data

def random_blob_masks(rng, count, size):
    """(H, W) bool masks: a few random rectangles, some images left empty (good), a few diagonal-only touches."""
    masks = []
    for i in range(count):
        mask = np.zeros((size, size), dtype=bool)
        if i % 3 != 2:  # every third image is good
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, size - 4, size=2)
                h, w = rng.integers(1, 7, size=2)
                mask[y:y + h, x:x + w] = True
            y, x = rng.integers(1, size - 1, size=2)
            mask[y, x] = mask[y - 1, x - 1] = True  # joined only under 8-connectivity (unless a rectangle covers it)
        masks.append(mask)
    return masks


def random_maps(rng, masks, step):
    """Scores that favour the defects without separating them; rounding to `step` creates many ties."""
    maps = [0.6 * m + rng.random(m.shape) for m in masks]
    return maps if step is None else [np.round(a / step) * step for a in maps]


# Continuous scores (no ties) on a smaller set keep the one-threshold-at-a-time reference fast.
REFERENCE_CASES = [(None, 4, 24), (1 / 8, 6, 32), (1 / 64, 6, 32)]


# ---------------------------------------------------------------- AUPRO

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("connectivity", [4, 8])
def test_aupro_matches_slow_reference(seed, connectivity):
    rng = np.random.default_rng(seed)
    step, count, size = REFERENCE_CASES[seed % 3]
    masks = random_blob_masks(rng, count=count, size=size)
    maps = random_maps(rng, masks, step)
    ref_fprs, ref_pros = reference_pro_curve(masks, maps, connectivity)

    fprs, pros = pro_curve(masks, maps, connectivity=connectivity)
    np.testing.assert_allclose(fprs, ref_fprs, atol=1e-12)
    np.testing.assert_allclose(pros, ref_pros, atol=1e-12)
    assert (fprs[-1], pros[-1]) == (1.0, pytest.approx(1.0))
    for limit in (0.3, 0.05, 1.0):
        expected = reference_area(ref_fprs, ref_pros, limit)
        assert aupro(masks, maps, fpr_limit=limit, connectivity=connectivity) == pytest.approx(expected, abs=1e-9)
    assert 0.05 < aupro(masks, maps, connectivity=connectivity) < 0.95  # a non-trivial case, not a saturated one


def test_connectivity_matters_and_defaults_to_eight():
    mask = np.zeros((12, 12), dtype=bool)
    mask[2:4, 2:4] = True  # 4 px, detected
    mask[4:7, 4:7] = True  # 9 px, missed; touches the first square only at a corner
    amap = np.full(mask.shape, 0.5)
    amap[2:4, 2:4] = 1.0
    amap[4:7, 4:7] = 0.0
    assert aupro([mask], [amap], connectivity=4) == pytest.approx(0.5)  # two regions: (1 + 0) / 2
    assert aupro([mask], [amap], connectivity=8) == pytest.approx(4 / 13)  # one region, 4 of its 13 pixels
    assert aupro([mask], [amap]) == pytest.approx(4 / 13)


def masks_with_good_image():
    mask = np.zeros((16, 16), dtype=bool)
    mask[3:7, 3:9] = True
    mask[10:12, 12:15] = True
    return [mask, np.zeros((16, 16), dtype=bool)]


def test_aupro_perfect_map_is_one():
    rng = np.random.default_rng(0)
    masks = masks_with_good_image()
    maps = [m.astype(float) + 0.01 * rng.random(m.shape) for m in masks]  # noise never crosses the 0/1 gap
    assert aupro(masks, maps) == pytest.approx(1.0, abs=1e-12)


def test_aupro_inverted_map_is_zero():
    rng = np.random.default_rng(1)
    masks = masks_with_good_image()
    maps = [1.0 - m + 0.01 * rng.random(m.shape) for m in masks]
    assert aupro(masks, maps) == pytest.approx(0.0, abs=1e-12)


def test_aupro_constant_map_is_the_diagonal():
    # One threshold: everything positive at once, so the curve is (0, 0) -> (1, 1); area to 0.3 is 0.3**2 / 2.
    masks = masks_with_good_image()
    maps = [np.full(m.shape, 0.7, dtype=np.float32) for m in masks]
    assert aupro(masks, maps) == pytest.approx(0.15, abs=1e-12)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)


def test_aupro_averages_regions_not_pixels():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:4, 2:4] = True  # small region: 4 px, fully detected
    mask[10:14, 10:18] = True  # large region: 32 px
    amap = np.full(mask.shape, 0.5)  # negatives: between the two
    amap[2:4, 2:4] = 1.0
    amap[10:14, 10:18] = 0.0
    assert aupro([mask], [amap]) == pytest.approx(0.5)  # (1 + 0) / 2, whereas pixel recall is 4 / 36
    amap[10:12, 10:18] = 0.9  # half of the large region detected too
    assert aupro([mask], [amap]) == pytest.approx(0.75)  # (1 + 0.5) / 2


@pytest.mark.parametrize("kwargs, message", [
    ({"fpr_limit": 0.0}, "fpr_limit"),
    ({"fpr_limit": 1.5}, "fpr_limit"),
    ({"connectivity": 6}, "connectivity"),
])
def test_aupro_rejects_bad_options(kwargs, message):
    masks = masks_with_good_image()
    with pytest.raises(ValueError, match=message):
        aupro(masks, [m.astype(float) for m in masks], **kwargs)


def test_aupro_rejects_bad_inputs():
    empty = [np.zeros((4, 4), dtype=bool)]
    with pytest.raises(ValueError, match="at least one anomalous pixel"):
        aupro(empty, [np.zeros((4, 4))])
    with pytest.raises(ValueError, match="same"):
        aupro(masks_with_good_image(), [np.zeros((16, 16)), np.zeros((8, 8))])
    with pytest.raises(ValueError, match="one mask per anomaly map"):
        aupro(masks_with_good_image(), [np.zeros((16, 16))])
    with pytest.raises(ValueError, match="finite"):
        aupro(masks_with_good_image(), [np.full((16, 16), np.nan)] * 2)


# ---------------------------------------------------------------- F1

@pytest.mark.parametrize("seed", range(8))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=40)
    labels[0] = 1
    scores = np.round(rng.random(40) + 0.3 * labels, 1)  # rounding creates ties
    best, threshold = f1_max(labels, scores)
    assert best == pytest.approx(brute_force_f1_max(labels, scores), abs=1e-12)
    assert f1_at_threshold(labels, scores, threshold) == pytest.approx(best, abs=1e-12)


def test_f1_separable_and_hand_computed():
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == (1.0, 0.7)
    # threshold 0.5 -> predicted [0, 1, 0, 1]: tp 1, fp 1, fn 1 -> 2 / 4
    assert f1_at_threshold([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5) == 0.5
    assert f1_at_threshold([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.9) == pytest.approx(2 / 3)  # >= is inclusive
    assert f1_at_threshold([0, 0], [0.1, 0.2], 0.5) == 0.0


def test_f1_max_needs_positives():
    with pytest.raises(ValueError, match="at least one anomalous"):
        f1_max([0, 0, 0], [0.1, 0.2, 0.3])


# ---------------------------------------------------------------- AUROC

def test_image_auroc_hand_computed():
    # positive/negative pairs: 0.35 > 0.1, 0.35 < 0.4, 0.8 > both -> 3 of 4
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert image_auroc(np.array([True, False]), np.array([2.0, 1.0])) == 1.0


def test_pixel_auroc_hand_computed_counts_good_images():
    masks = [np.array([[0, 1]]), np.array([[0, 0]])]
    maps = [np.array([[0.2, 0.9]]), np.array([[0.95, 0.1]])]
    assert pixel_auroc(masks, maps) == pytest.approx(2 / 3)  # 0.9 beats 0.2 and 0.1, loses to 0.95


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_equals_roc_auc_score_on_flat_pixels(seed):
    rng = np.random.default_rng(seed)
    masks = random_blob_masks(rng, count=6, size=32)
    maps = random_maps(rng, masks, step=1 / 16 if seed else None)  # ties when quantised
    flat_masks = np.concatenate([m.ravel() for m in masks])
    flat_maps = np.concatenate([m.ravel() for m in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-12)


def test_auroc_errors_say_what_is_missing():
    with pytest.raises(ValueError, match="good and anomalous images"):
        image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="equal length"):
        image_auroc([0, 1], [0.1])
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="mask must mark a defect"):
        pixel_auroc([np.zeros((2, 2))], [np.ones((2, 2))])


def test_rates_at_threshold_by_hand():
    labels = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.9, 0.5, 0.8, 1.0]
    assert rates_at_threshold(labels, scores, 0.5) == (0.25, 1.0)
    assert rates_at_threshold(labels, scores, 0.95) == (0.0, pytest.approx(1 / 3))


@pytest.mark.parametrize("seed", range(5))
def test_oracle_recall_matches_a_search_over_every_threshold(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(40, int), np.ones(25, int)]
    scores = np.round(np.r_[rng.normal(0, 1, 40), rng.normal(1.2, 1, 25)], 1)  # rounding makes ties
    for max_fpr in (0.0, 0.01, 0.05, 0.2):
        best = 0.0
        for t in np.r_[np.unique(scores), np.inf]:
            fpr, recall = rates_at_threshold(labels, scores, t)
            if fpr <= max_fpr:
                best = max(best, recall)
        assert oracle_recall_at_fpr(labels, scores, max_fpr) == pytest.approx(best)
