"""How the page draws: on a laptop and on a tablet, the colour scale against the server's, and pictures that the
browser turns (EXIF) or cannot show (TIFF)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from imaging import render
from tests.page.inspection import Inspection, payload, png

pytestmark = pytest.mark.browser

VIEWPORTS = {
    "laptop": dict(viewport={"width": 1366, "height": 768}),
    "tablet": dict(viewport={"width": 768, "height": 1024}, has_touch=True, is_mobile=True, device_scale_factor=2),
}
CONTROLS = ("#product", "#choose", "#opacity", "#raw-map", "#whatif", "#whatif-reset", "#csv", "#json", "#clear")


@pytest.mark.parametrize("screen", VIEWPORTS)
def test_the_page_fits_a_laptop_and_a_tablet(new_context, page_server, disc_files, tmp_path, screen):
    page = new_context(**VIEWPORTS[screen]).new_page()
    view = Inspection(page, page_server)
    view.open()
    names = ["good/000.png", "spot/000.png", "scratch/000.png", "good/001.png"]
    view.send(*[payload(f"a-rather-long-file-name-from-the-line-camera-{n.replace('/', '-')}", disc_files[n])
                for n in names], payload("notes.txt", b"text", "text/plain"))
    view.wait_rows(5)
    width = page.evaluate("() => window.innerWidth")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width  # nothing scrolls sideways
    for selector in CONTROLS:
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (selector, box)
        if screen == "tablet" and selector != "#raw-map":
            assert box["height"] >= 32, (selector, box)  # big enough for a finger
    tops = [page.locator(f"#card-{n}").bounding_box()["y"] for n in range(1, 6)]
    per_row = sum(1 for t in tops if abs(t - tops[0]) < 1)  # cards side by side in the first row
    assert per_row >= (3 if screen == "laptop" else 2), tops
    wrap = page.locator(".table-wrap").bounding_box()
    assert wrap["x"] + wrap["width"] <= width  # a wide table scrolls inside its box, not the page
    page.screenshot(path=str(tmp_path / f"{screen}.png"), full_page=True)
    assert not view.errors


def test_the_colour_scale_is_the_servers(inspection):
    """static/colour.js draws maps with imaging/render.py's scale and overlay weights."""
    got = inspection.page.evaluate("""async () => {
        const c = await import("/static/colour.js");
        const levels = Array.from({ length: 256 }, (_, g) => g);
        return { colours: levels.map((g) => c.colourOf(g / 255)),
                 same: Array.from(c.overlayLut(3.0, 3.0, 0.2)),
                 shifted: Array.from(c.overlayLut(3.0, 2.5, 0.2)) };
    }""")
    v = np.arange(256, dtype=np.float32) / 255
    want = render.colorize(v).astype(int)
    assert np.abs(np.array(got["colours"]) - want).max() <= 1
    clamped = np.clip(v, 0.5 / 255, 254.5 / 255)
    same = np.array(got["same"]).reshape(256, 4)
    assert np.abs(same[:, :3] - render.colorize(clamped)).max() <= 1
    assert np.abs(same[:, 3] - np.round(255 * np.clip(clamped * 1.5, 0.25, 1))).max() <= 1
    # A what-if threshold 0.5 lower (2.5 std) = every pixel's logit raised by 2.5.
    score = 3.0 + 0.2 * np.log(clamped / (1 - clamped))  # the image-score value behind each grey level
    shifted = 1 / (1 + np.exp(-(score - 2.5) / 0.2))
    assert np.abs(np.array(got["shifted"]).reshape(256, 4)[:, :3] - render.colorize(shifted)).max() <= 1


def _exif_rotated_jpeg(picture: bytes) -> bytes:
    """The picture cropped to 128 x 96 and stored as a JPEG whose EXIF says 'rotate 90° clockwise to view'."""
    image = Image.open(io.BytesIO(picture)).convert("RGB").crop((0, 16, 128, 112))
    exif = Image.Exif()
    exif[0x0112] = 6
    return png(image, "JPEG", quality=95, exif=exif.tobytes())


def test_an_exif_rotated_photo_and_its_overlay_line_up(inspection, disc_files):
    inspection.send(payload("rotated.jpg", _exif_rotated_jpeg(disc_files["spot/000.png"]), "image/jpeg"))
    inspection.wait_rows(1)
    card = inspection.card(1)
    expect(card.locator(".facts dd.size")).to_have_text("96 × 128 px")  # the server turned it upright
    inspection.heat_ready(1)
    sizes = card.evaluate("""(c) => [c.querySelector("img.photo").naturalWidth, c.querySelector("img.photo").naturalHeight,
                                     c.querySelector("canvas.heat").width, c.querySelector("canvas.heat").height]""")
    assert sizes == [96, 128, 96, 128]  # and so did the browser
    expect(card.locator(".note")).to_be_hidden()


def test_a_picture_the_browser_cannot_show_gets_its_map_alone(inspection, disc_files):
    tiff = png(Image.open(io.BytesIO(disc_files["spot/000.png"])), "TIFF")
    inspection.send(payload("part.tif", tiff, "image/tiff"))
    inspection.wait_rows(1)
    card = inspection.card(1)
    expect(card.locator(".decision")).to_have_text("anomalous")  # the server reads TIFF
    expect(card).to_have_class("card no-photo")
    expect(card.locator(".note")).to_contain_text("cannot display this file type")
    inspection.heat_ready(1)
    expect(card.locator("canvas.heat")).to_be_visible()
