"""Threshold rules: known answers, and the false-positive rate each promises, checked by simulation."""

import math

import numpy as np
import pytest
from scipy import stats

from model.calibration import (RULES, calibrate, conformal_threshold, is_anomalous, normalise, recalibrate,
                               student_t_threshold)
from model.errors import ConfigError


def test_student_t_threshold_and_normalisation_by_hand():
    scores = np.array([1.0, 1.2, 0.8, 1.1, 0.9])
    cal = calibrate(scores, target_fpr=0.01, rule="student_t")
    std = scores.std(ddof=1)
    t4 = 3.7469473879  # Student t, 4 degrees of freedom, 99th percentile
    assert cal.threshold == pytest.approx(1.0 + t4 * std * math.sqrt(1 + 1 / 5), rel=1e-6)
    assert normalise(cal.threshold, cal) == pytest.approx(0.5)
    assert normalise(cal.threshold + 10 * std, cal) > 0.99
    z = t4 * math.sqrt(1.2)
    assert normalise(1.0, cal) == pytest.approx(1 / (1 + math.exp(z)), rel=1e-6)  # the mean: logistic(-factor)
    assert is_anomalous(cal.threshold, cal) and not is_anomalous(cal.threshold - 1e-6, cal)
    assert np.all(np.diff(normalise(np.linspace(0, 5, 50), cal)) > 0)


def test_conformal_threshold_is_the_right_order_statistic():
    s = np.arange(1.0, 201.0)  # 1..200 shuffled
    rng = np.random.default_rng(0)
    assert conformal_threshold(rng.permutation(s), 0.01) == (199.0, 0.01)  # ceil(201 * 0.99) = 199th smallest
    assert conformal_threshold(rng.permutation(s), 0.05) == (191.0, 0.05)  # ceil(201 * 0.95) = 191
    thr, promise = conformal_threshold(rng.permutation(s[:30]), 0.01)  # too few for 1 %: the largest, 1/31
    assert thr == 30.0 and promise == pytest.approx(1 / 31)


@pytest.mark.parametrize("dist", [stats.norm(2.5, 0.2), stats.gumbel_r(2.4, 0.12), stats.lognorm(0.25, scale=2.5),
                                  stats.t(3, 2.5, 0.15)], ids=["normal", "gumbel", "lognormal", "t3"])
@pytest.mark.parametrize("n", [30, 200])
def test_expected_fpr_by_simulation(dist, n):
    """Draw n good scores from a known distribution, set the threshold, read its exact exceedance probability
    (the FPR a new good part meets) from the distribution; average over draws.
    - conformal: <= max(target, 1/(n+1)) for ANY distribution (its guarantee);
    - student_t: = target for normal scores; on these skewed and heavy-tailed ones it rises to about 3 x target
      (Gumbel-shaped scores, skewness 1.14: 3.0 %), the bound the README states;
    - gpd: within 3 x target."""
    rng = np.random.default_rng(1)
    target = 0.01
    for rule, reps in (("conformal", 3000), ("student_t", 3000), ("gpd", 300)):
        fpr = np.mean([dist.sf(calibrate(dist.rvs(size=n, random_state=rng), target, rule).threshold)
                       for _ in range(reps)])
        if rule == "conformal":
            assert fpr <= max(target, 1 / (n + 1)) * 1.15, (rule, fpr)  # 15 %: Monte Carlo error
        else:
            assert fpr <= (3.3 if rule == "student_t" else 3.0) * target, (rule, fpr)
        if rule == "student_t" and dist.dist.name == "norm":
            assert fpr == pytest.approx(target, rel=0.15)


def test_student_t_tightens_towards_the_normal_quantile_with_many_images():
    scores = np.random.default_rng(0).normal(10.0, 1.0, 100_000)
    assert student_t_threshold(scores, 0.01) == pytest.approx(10.0 + 2.326, abs=0.03)


def test_calibration_keeps_its_scores_and_can_be_rechosen():
    scores = np.random.default_rng(2).normal(3.0, 0.2, 150)
    names = tuple(f"img{i}.png" for i in range(150))
    cal = calibrate(scores, 0.01, "student_t", method="leave-one-image-out", images=names)
    assert cal.scores == tuple(scores) and cal.images == names and cal.n_images == 150
    looser = recalibrate(cal, 0.05)
    assert looser.threshold < cal.threshold and looser.rule == "student_t" and looser.images == names
    conformal = recalibrate(cal, 0.01, "conformal")
    assert conformal.threshold == pytest.approx(np.sort(scores)[149])  # ceil(151 * 0.99) = 150th smallest
    assert type(cal).from_dict(cal.to_dict()) == cal  # round trip through JSON-able types


def test_calibration_refuses_bad_input():
    with pytest.raises(ConfigError, match="at least 2"):
        calibrate(np.array([1.0]))
    with pytest.raises(ConfigError, match="unknown threshold rule 'p99'"):
        calibrate(np.array([1.0, 2.0]), rule="p99")
    with pytest.raises(ConfigError, match="target_fpr"):
        calibrate(np.array([1.0, 2.0]), target_fpr=0.7)
    with pytest.raises(ConfigError, match="2 image names for 3"):
        calibrate(np.array([1.0, 2.0, 3.0]), images=("a", "b"))
    assert set(RULES) == {"conformal", "student_t", "gpd"}
