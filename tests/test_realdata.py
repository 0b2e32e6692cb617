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


def test_bottle_onnx_patch_scores_equal_torch():
    """The exported extractor on real bottle pictures (default config, 256 x 256, 32 x 32 grid): the patch scores
    against a bank of real training patches equal torch's within 1e-4 relative (of each picture's largest)."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    import faiss

    from index_store.onnx_export import export_bytes
    from model import knn
    from model.features import PatchEmbedder
    from model.onnx_runtime import OnnxExtractor
    from model.preprocess import pixels

    config = PatchCoreConfig()
    torch_x = PatchEmbedder(config)
    onnx_x = OnnxExtractor(export_bytes(config), config)
    train = pixels([read_image(p)[0] for p in list_images(BOTTLE)[:6]], config)
    bank = torch_x.embed_pixels(train).reshape(-1, torch_x.dim)[::5]  # ~1.2 k real good patches
    index = faiss.IndexFlatL2(torch_x.dim)
    index.add(np.ascontiguousarray(bank))
    test = [read_image(p)[0] for d in ("good", "broken_large", "contamination")
            for p in sorted((BOTTLE / "test" / d).glob("*.png"))[:2]]
    batch = pixels(test, config)
    t_emb, o_emb = torch_x.embed_pixels(batch), onnx_x.embed_pixels(batch)
    np.testing.assert_allclose(o_emb, t_emb, rtol=1e-4, atol=1e-5 * float(np.abs(t_emb).max()))
    # FAISS as the detector uses it: the image scores (the largest patch scores) agree.
    faiss_scores = [np.sqrt(np.maximum(knn.search(index, e.reshape(-1, e.shape[-1]))[0][:, 0], 0)).reshape(len(test), -1)
                    for e in (t_emb, o_emb)]
    np.testing.assert_allclose(faiss_scores[1].max(axis=1), faiss_scores[0].max(axis=1), rtol=1e-5)
    # Patch scores to the same nearest bank vectors, in float64: what the runtimes change, without FAISS's own
    # float32 rounding of |x|^2 + |y|^2 - 2 x.y (which alone moves the smallest distances by up to ~1e-3).
    _, ids = knn.search(index, t_emb.reshape(-1, t_emb.shape[-1]))
    nearest = bank[ids[:, 0]].astype(np.float64)
    exact = [np.linalg.norm(e.reshape(-1, e.shape[-1]).astype(np.float64) - nearest, axis=1).reshape(len(test), -1)
             for e in (t_emb, o_emb)]
    for ref, got in zip(*exact):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))
