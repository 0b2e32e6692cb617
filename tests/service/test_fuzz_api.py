"""The CI profile of reliability/fuzz_api.py: schemathesis --checks all against a real server, about 250 cases.

The full run (>= 1,000 cases) is `python -m reliability.fuzz_api`; both use the same code, indexes and hooks.
"""

from __future__ import annotations

import pytest

from reliability.fuzz_api import fuzz

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("with_key", [False, True], ids=["no key", "api key"])
def test_schemathesis_finds_nothing(index_root, tmp_path, with_key):
    run = fuzz(tmp_path, index_root / "indexes", index_root / "samples", max_examples=15, seed=15, with_key=with_key)
    assert run.st_exit_code == 0, run.summary + "\n" + (tmp_path / f"st-{run.label}.txt").read_text()[-6000:]
    assert run.five_xx == 0 and not run.server_errors, (run.statuses, run.server_errors[:5])
    assert run.cases >= 100, run.cases
    # The hooks make the fuzzing reach real predictions on both routes, not just 4xx answers.
    assert run.statuses["POST /predict"].get("200", 0) >= 10, run.statuses
    assert run.statuses["POST /predict/batch"].get("200", 0) >= 10, run.statuses
    if with_key:  # schemathesis sent requests without the key; they were refused
        assert run.statuses["POST /predict"].get("401", 0) >= 1, run.statuses
