import math

import numpy as np
import pytest

from model.errors import ConfigError
from model.scoring import calibrate, image_scores, is_anomalous, normalise, patch_scores, reweight


def test_patch_scores_are_l2_not_squared():
    sq = np.array([4.0, 9.0, 0.0, -1e-7], np.float32)  # tiny negatives from float error clamp to 0
    np.testing.assert_allclose(patch_scores(sq, 1, (2, 2)), [[[2.0, 3.0], [0.0, 0.0]]])


def test_image_score_is_the_max_patch_score():
    s = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(image_scores(s), s.reshape(3, -1).max(1))


def test_reweight_matches_paper_equation_7_by_hand():
    s_star, d = 2.0, np.array([2.0, 2.5, 3.0])
    expected = (1 - math.exp(2.0) / (math.exp(2.0) + math.exp(2.5) + math.exp(3.0))) * 2.0
    assert reweight(s_star, d) == pytest.approx(expected, rel=1e-12)
    assert reweight(100.0, np.array([100.0, 900.0])) == pytest.approx(100.0)  # no overflow


def test_calibration_threshold_and_normalisation():
    scores = np.array([1.0, 1.2, 0.8, 1.1, 0.9])
    cal = calibrate(scores, target_fpr=0.01)
    std = scores.std(ddof=1)
    t4 = 3.7469473879  # Student t, 4 degrees of freedom, 99th percentile
    assert cal.threshold == pytest.approx(1.0 + t4 * std * math.sqrt(1 + 1 / 5), rel=1e-6)
    assert normalise(cal.threshold, cal) == pytest.approx(0.5)
    assert normalise(cal.threshold + 10 * std, cal) > 0.99
    z = t4 * math.sqrt(1.2)
    assert normalise(1.0, cal) == pytest.approx(1 / (1 + math.exp(z)), rel=1e-6)  # the mean: logistic(-factor)
    assert is_anomalous(cal.threshold, cal) and not is_anomalous(cal.threshold - 1e-6, cal)
    assert np.all(np.diff(normalise(np.linspace(0, 5, 50), cal)) > 0)


def test_threshold_tightens_towards_the_normal_quantile_with_many_images():
    scores = np.random.default_rng(0).normal(10.0, 1.0, 100_000)
    cal = calibrate(scores, target_fpr=0.01)
    assert cal.threshold == pytest.approx(10.0 + 2.326, abs=0.03)
    assert np.mean(scores >= cal.threshold) == pytest.approx(0.01, abs=0.002)  # the FPR it promises


def test_calibration_refuses_too_few_scores():
    with pytest.raises(ConfigError, match="at least 2"):
        calibrate(np.array([1.0]))
