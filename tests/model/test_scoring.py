import math

import numpy as np
import pytest

from model.scoring import image_scores, patch_scores, reweight


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
