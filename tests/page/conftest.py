"""Browser tests of the inspection page: pytest-playwright drives Debian's chromium, headless, through
executable_path (Playwright's own browser download is never used), against a real uvicorn server over a socket.

Chromium: $CHROMIUM, else `chromium` on PATH (`apt-get install -y chromium`; .ci/run installs it). Without it these
tests skip with that instruction, except under CI=true, where a missing browser is a failure, not a skip.
Every test that uses `inspection` leaves a full-page screenshot in its tmp_path (page.png).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from demo.sample import write_sample
from imaging.decode import list_images
from service.app import create_app
from tests.conftest import SMALL, build_and_save
from tests.live import live_server
from tests.page.inspection import Inspection, sample_files
from tests.service.conftest import make_settings

# The flags that work on these machines (no GPU, no sandbox user namespace, no network beyond loopback).
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch options, plus the system chromium and its flags."""
    path = find_chromium()
    if path is None:
        message = ("chromium not found: install Debian's package (apt-get install -y chromium; .ci/run does) or set "
                   "CHROMIUM=/path/to/chromium")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": path, "args": CHROMIUM_FLAGS}


@pytest.fixture(scope="session")
def page_sample(tmp_path_factory) -> Path:
    """The synthetic disc sample (demo/sample.py), with enough good pictures (24, 5 of them held out to calibrate)
    for a threshold that separates its good and defective test pictures."""
    return write_sample(tmp_path_factory.mktemp("page") / "disc", n_train=24, n_test_good=3, n_test_defect=3,
                        size=128)


@pytest.fixture(scope="session")
def page_index(page_sample, tmp_path_factory) -> Path:
    return build_and_save(list_images(page_sample), SMALL, tmp_path_factory.mktemp("page-index") / "disc",
                          root=page_sample)


@pytest.fixture(scope="session")
def page_server(page_index):
    """The disc index behind a real server: 4 files per request at most (so the page has to split bigger drops),
    1 MiB per file and 4 megapixels per picture (tests/service/conftest.make_settings)."""
    with live_server(create_app(make_settings(page_index, max_batch_files=4))) as url:
        yield url


@pytest.fixture(scope="session")
def disc_files(page_sample) -> dict[str, bytes]:
    """'good/000.png', 'spot/001.png', ... -> bytes: 3 good, 3 scratched and 3 spotted test pictures."""
    return sample_files(page_sample)


@pytest.fixture
def inspection(page, page_server, tmp_path):
    """The page opened on page_server, its product list loaded; a screenshot is saved and the page must have thrown
    no uncaught error by the end of the test."""
    view = Inspection(page, page_server)
    view.open()
    yield view
    view.finish(tmp_path / "page.png")
