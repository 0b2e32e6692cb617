"""The page on real data: a bottle index (MVTec AD, ../shared/data) behind a real server, in headless chromium.

A CI-sized index: the first 30 good training pictures (5 held out to calibrate), a 10 % coreset. Skipped with a
reason where the data is absent; the same page behaviour is checked on synthetic pictures by the other modules.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from imaging.decode import list_images
from model.config import PatchCoreConfig
from service.app import create_app
from tests.conftest import REAL_DATA, build_and_save
from tests.live import live_server
from tests.page.inspection import Inspection, payload
from tests.service.conftest import MIB, make_settings

BOTTLE = REAL_DATA / "bottle"
pytestmark = [
    pytest.mark.browser, pytest.mark.realdata,
    pytest.mark.skipif(not (BOTTLE / "train" / "good").is_dir(),
                       reason=f"real data absent: {BOTTLE} (MVTec AD bottle, see ../shared/data/README.md)"),
]
BROKEN, GOOD = BOTTLE / "test" / "broken_large" / "000.png", BOTTLE / "test" / "good" / "000.png"


@pytest.fixture(scope="module")
def bottle_server(tmp_path_factory):
    out = build_and_save(list_images(BOTTLE)[:30], PatchCoreConfig(coreset_ratio=0.1),
                         tmp_path_factory.mktemp("bottle") / "bottle", name="bottle")
    with live_server(create_app(make_settings(out, max_upload_bytes=4 * MIB, threads=2))) as url:
        yield url


def _peak(card) -> list[int]:
    """(x, y) of the hottest pixels' centroid in the server's map, read back from the picture the page shows (the
    map's PNG saturates where the score is far above the threshold, so the hottest value covers a region)."""
    return card.evaluate("""(c) => {
        const img = c.querySelector("img.raw"), canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        let best = 0, sx = 0, sy = 0, n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > best) best = d[i];
        for (let i = 0; i < d.length; i += 4) if (d[i] === best) {
            sx += (i / 4) % canvas.width; sy += Math.floor(i / 4 / canvas.width); n += 1;
        }
        return [Math.round(sx / n), Math.round(sy / n)];
    }""")


def test_a_broken_bottle_is_anomalous_and_a_good_one_normal(page, bottle_server, tmp_path):
    view = Inspection(page, bottle_server)
    page.set_viewport_size({"width": 1366, "height": 900})
    view.open()
    view.send(payload("broken_large_000.png", BROKEN.read_bytes()), payload("good_000.png", GOOD.read_bytes()))
    view.wait_rows(2)
    broken, good = view.card(1), view.card(2)
    expect(broken.locator(".decision")).to_have_text("anomalous")
    expect(good.locator(".decision")).to_have_text("normal")
    view.heat_ready(1)
    sizes = broken.evaluate("""(c) => [c.querySelector("img.photo").naturalWidth, c.querySelector("img.photo").naturalHeight,
                                       c.querySelector("canvas.heat").width, c.querySelector("canvas.heat").height,
                                       c.querySelector("img.raw").naturalWidth, c.querySelector("img.raw").naturalHeight]""")
    assert sizes == [900] * 6  # the overlay has the picture's natural size
    x, y = _peak(broken)
    mask = np.asarray(Image.open(BOTTLE / "ground_truth" / "broken_large" / "000_mask.png")) > 0
    assert mask[y, x], (x, y)  # the map, as the page shows it, peaks on the defect
    view.finish(tmp_path / "page.png")
