"""The CI profile of reliability/soak.py: 400 requests from 4 clients against a real server (the full run: 10,000).

Mixed picture sizes, single and batch requests, two indexes and bad inputs mixed in: every answer has its expected
status and is byte-identical to the one the same request got alone (timing fields aside); no error is logged; the
server's memory does not keep growing once warm.
"""

from __future__ import annotations

import pytest

from reliability.soak import answer_bytes, soak

pytestmark = pytest.mark.slow


def test_answers_under_load_are_the_sequential_ones(index_root, tmp_path):
    r = soak(index_root / "indexes", index_root / "samples", tmp_path, n_requests=400, clients=4, sample_every=100,
             warmup=100, seed=15)
    assert not r.unexpected, r.unexpected[:5]
    assert not r.mismatches, r.mismatches
    assert not r.server_errors, r.server_errors[:3]
    assert {"200", "404", "413", "422"} <= set(r.statuses), r.statuses  # the bad inputs were in the mix
    assert len(r.rss_mb) == 5 and r.rss_peak_growth < 0.10, r.rss_mb  # the full run's target is < 5 %


def test_only_the_timing_fields_are_cut_from_answers():
    body = (b'{"index":"disc","image_score":1.5,"timings_ms":{"read":0.1,"total":3.25},"heatmap":"png",'
            b'"results":[{"timings_ms":{"map":1e-3}}],"total_ms":12.5}')
    assert answer_bytes(body) == b'{"index":"disc","image_score":1.5,,"heatmap":"png","results":[{}],}'
