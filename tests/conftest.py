"""Session fixtures: one small synthetic data set and one tiny index, built once and shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from index_store import store
from index_store.build import BuildOptions, build_index
from imaging.decode import list_images
from demo.sample import write_sample
from model.config import PatchCoreConfig

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "mvtec_ad"
# Pretrained MobileNetV2 on a 16x16 patch grid: fast on 2 cores. A 10% bank: the tiny training set needs it.
SMALL = PatchCoreConfig(image_size=128, coreset_ratio=0.1)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("sample") / "disc", n_train=16, n_test_good=3, n_test_defect=3,
                        size=128)


def build_and_save(paths, config: PatchCoreConfig, out: Path, name: str = "disc", root: Path | None = None) -> Path:
    """Build an index of these good pictures and save it to out (a new folder); returns out."""
    result = build_index(list(paths), config, BuildOptions(name=name, progress=False), root=root)
    store.save_result(out, result)
    return out


@pytest.fixture(scope="session")
def index_dir(sample_dir, tmp_path_factory) -> Path:
    return build_and_save(list_images(sample_dir), SMALL, tmp_path_factory.mktemp("indexes") / "disc", root=sample_dir)


@pytest.fixture(scope="session")
def bundle(index_dir) -> store.IndexBundle:
    return store.load(index_dir)


def pytest_collection_modifyitems(config, items):
    """Browser tests (tests/page) are marked `browser` and run last: Playwright's sync API keeps an asyncio event loop
    running in the main thread from its first use to the end of the session, and asyncio.run() refuses to start
    inside one."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
    items.sort(key=lambda item: "browser" in getattr(item, "fixturenames", ()))
