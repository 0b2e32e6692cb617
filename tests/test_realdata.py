"""Integration on real data: MVTec AD bottle from ../shared/data (skipped with a reason where it is absent)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from index_store.build import BuildOptions, build_index
from imaging.decode import list_images, read_image
from model.config import PatchCoreConfig
from model.detector import Detector
from tests.conftest import REAL_DATA

BOTTLE = REAL_DATA / "bottle"
pytestmark = pytest.mark.skipif(
    not (BOTTLE / "train" / "good").is_dir(),
    reason=f"real data absent: {BOTTLE} (MVTec AD bottle, see ../shared/data/README.md)",
)


def test_bottle_subset_image_auroc():
    """A CI-sized subset: 60 good training images, 8 good and 16 defective test images (2 defect types + 1)."""
    train = list_images(BOTTLE)[:60]
    test = sorted((BOTTLE / "test" / "good").glob("*.png"))[:8]
    for defect in ("broken_large", "broken_small", "contamination"):
        test += sorted((BOTTLE / "test" / defect).glob("*.png"))[:6]
    labels = np.array([p.parent.name != "good" for p in test], dtype=int)
    config = PatchCoreConfig(coreset_ratio=0.1)
    result = build_index(train, config, BuildOptions(progress=False))
    from model.features import PatchEmbedder

    detector = Detector(config, PatchEmbedder(config), result.index, result.metadata.calibration)
    results = detector.score_batch([read_image(p)[0] for p in test])
    assert roc_auc_score(labels, [s.image_score for s in results]) >= 0.99
    decisions = np.array([s.is_anomalous for s in results])
    # The threshold comes from the 60 training images, scored leave-one-image-out; it separates this subset.
    assert (decisions == labels.astype(bool)).mean() >= 0.9
