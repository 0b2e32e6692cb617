"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`, distributed.loopback)
builds bottle through patchcore-build-index --ray; the index loads, serves, and holds the local builder's bank.
Slow (about 2-3 minutes on 2 cores: two nodes start, two builds at 128 px); needs ray and ../shared/data."""

import json
import subprocess
import sys

import numpy as np
import pytest

from index_store import store
from imaging.decode import read_image
from tests.conftest import REAL_DATA

pytest.importorskip("ray", reason="ray is not installed: pip install '.[ray]' (the dev extra installs it)")
from distributed.loopback import LoopbackCluster  # noqa: E402

BOTTLE = REAL_DATA / "bottle"
pytestmark = [
    pytest.mark.slow, pytest.mark.realdata,
    pytest.mark.skipif(not (BOTTLE / "train" / "good").is_dir(), reason=f"needs MVTec AD bottle at {BOTTLE}"),
]
FAST = ["--image-size", "128", "--no-progress", "--json", "--threads", "1"]


def build(out, *extra, env=None):
    cmd = [sys.executable, "-m", "index_store.cli", "--data", str(BOTTLE), "--out", str(out), *FAST, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bottle_builds_on_a_two_node_cluster(tmp_path):
    with LoopbackCluster(nodes=2, cpus_per_node=1) as cluster:
        summary = build(tmp_path / "ray", "--ray", cluster.address, env=cluster.env)
        peaks = cluster.peak_rss_mb()
    local = build(tmp_path / "local")
    on_ray, ref = store.load(tmp_path / "ray"), store.load(tmp_path / "local")
    info = on_ray.metadata.provenance.cluster
    assert info["nodes"] == 2 and info["actors"] == 2 and len(info["peak_rss_mb_per_node"]) == 2  # both nodes worked
    assert peaks["node0"] > 0 and peaks["node1"] > 0
    assert summary["bank_size"] == local["bank_size"] == on_ray.metadata.bank_size
    np.testing.assert_array_equal(store.read_bank_image_ids(tmp_path / "ray", on_ray.metadata),
                                  store.read_bank_image_ids(tmp_path / "local", ref.metadata))  # the same picks
    assert on_ray.metadata.calibration.threshold == pytest.approx(ref.metadata.calibration.threshold, rel=1e-4)
    broken = on_ray.detector.predict(read_image(BOTTLE / "test" / "broken_large" / "000.png")[0])
    good = on_ray.detector.predict(read_image(BOTTLE / "test" / "good" / "000.png")[0])
    assert broken.is_anomalous and not good.is_anomalous
