"""The inspection page in headless chromium against a real server (synthetic 'disc' index; runs in CI without data):
decisions, overlays, the what-if threshold, many files, drop and paste, downloads."""

from __future__ import annotations

import csv
import io
import json
import re

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.page.inspection import WARMTH, payload

pytestmark = pytest.mark.browser


def _mask_centre(page_sample, name: str) -> tuple[int, int]:
    """(x, y) of the defect's centre, from the sample's ground-truth mask."""
    kind, file = name.split("/")
    mask = np.asarray(Image.open(page_sample / "ground_truth" / kind / file.replace(".png", "_mask.png"))) > 0
    ys, xs = np.nonzero(mask)
    return int(xs.mean()), int(ys.mean())


def test_page_loads_from_the_server_alone(inspection, page_server):
    page = inspection.page
    expect(page).to_have_title("PatchCore inspection")
    expect(page.locator("#product")).to_have_value("disc")
    expect(page.locator("#product-info")).to_contain_text("threshold")
    expect(page.locator("#key-form")).to_be_hidden()  # this server needs no key
    assert inspection.requests and all(u.startswith(page_server) or u.startswith("data:") for u in inspection.requests)


def test_a_defect_is_anomalous_and_its_overlay_has_the_pictures_size(inspection, disc_files, page_sample):
    name = "spot/000.png"
    inspection.send(payload("spot.png", disc_files[name]))
    inspection.wait_rows(1)
    card = inspection.card(1)
    expect(card.locator(".decision")).to_have_text("anomalous")
    expect(card.locator(".name")).to_have_text("spot.png")
    for label in ("score", "threshold", "normalised"):
        expect(card.locator(f".facts dd.{label}")).to_have_text(re.compile(r"^\d+\.\d{3}"))
    expect(card.locator(".timings")).to_contain_text("ms total")
    sizes = card.evaluate("""(c) => {
        const photo = c.querySelector("img.photo"), heat = c.querySelector("canvas.heat"),
              raw = c.querySelector("img.raw");
        const box = (e) => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; };
        return { photo: [photo.naturalWidth, photo.naturalHeight], heat: [heat.width, heat.height],
                 raw: [raw.naturalWidth, raw.naturalHeight], photoBox: box(photo), heatBox: box(heat) };
    }""")
    assert sizes["photo"] == sizes["heat"] == sizes["raw"] == [128, 128]
    assert sizes["photoBox"] == pytest.approx(sizes["heatBox"], abs=0.5)  # the overlay lies exactly on the picture
    inspection.heat_ready(1)
    r, _, b, a = inspection.heat_pixel(1, *_mask_centre(page_sample, name))
    assert r > 150 and b < 100 and a > 200, (r, b, a)  # red, opaque, where the defect is
    r, _, b, a = inspection.heat_pixel(1, 3, 3)
    assert b > r and a < 100, (r, b, a)  # blue and faint in the background corner
    expect(card.locator(".note")).to_be_hidden()  # the browser and the server agree on the size


def test_a_good_part_is_normal(inspection, disc_files):
    inspection.send(payload("good.png", disc_files["good/000.png"]))
    inspection.wait_rows(1)
    expect(inspection.card(1).locator(".decision")).to_have_text("normal")
    assert inspection.decisions() == ["normal"]


def test_several_files_give_several_rows_in_order(inspection, disc_files):
    """Nine files, four per request at most on this server: the page splits them and keeps their order."""
    names = sorted(disc_files)
    assert len(names) == 9
    posts = []
    inspection.page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    inspection.send(*[payload(f"{i}-{n.replace('/', '-')}", disc_files[n]) for i, n in enumerate(names)])
    inspection.wait_rows(len(names))
    files = inspection.page.locator("#results tbody td.file").all_inner_texts()
    assert files == [f"{i}-{n.replace('/', '-')}" for i, n in enumerate(names)]
    expected = ["normal" if n.startswith("good") else "anomalous" for n in names]
    assert inspection.decisions() == expected
    assert len(posts) == -(-len(names) // 4)
    expect(inspection.page.locator("#count")).to_contain_text(f"({len(names)}:")


def test_the_what_if_slider_recolours_decisions_but_not_the_server(inspection, disc_files, page_server):
    page = inspection.page
    inspection.send(payload("good.png", disc_files["good/000.png"]), payload("spot.png", disc_files["spot/001.png"]))
    inspection.wait_rows(2)
    inspection.expect_decisions(["normal", "anomalous"])
    inspection.heat_ready(1)
    before = inspection.heat_warmth(1)
    slider = page.locator("#whatif")
    slider.focus()
    page.keyboard.press("End")  # the highest what-if threshold: above every score
    expect(inspection.card(2).locator(".decision")).to_have_text("normal")
    inspection.expect_decisions(["normal", "normal"])
    expect(inspection.card(2).locator(".server-note")).to_contain_text("the server decided anomalous")
    page.keyboard.press("Home")  # the lowest: below every score
    expect(inspection.card(1).locator(".decision")).to_have_text("anomalous")
    inspection.expect_decisions(["anomalous", "anomalous"])
    # The good part's map turns warmer (it is repainted on the next animation frame).
    page.wait_for_function(f"([n, before]) => ({WARMTH})(n) > before", arg=[1, before], timeout=10_000)
    scores = [float(x) for x in page.locator("#results tbody td:nth-child(4)").all_inner_texts()]
    inspection.set_what_if((scores[0] + scores[1]) / 2)
    inspection.expect_decisions(["normal", "anomalous"])
    inspection.set_what_if(scores[1] + 0.01)
    inspection.expect_decisions(["normal", "normal"])
    expect(page.locator("#whatif-value")).to_contain_text("server")
    page.click("#whatif-reset")
    inspection.expect_decisions(["normal", "anomalous"])
    server_threshold = httpx.get(f"{page_server}/indexes").json()[0]["threshold"]
    expect(inspection.card(1).locator(".facts dd.threshold")).to_have_text(f"{server_threshold:.3f}")


def test_opacity_slider_and_raw_map_toggle(inspection, disc_files):
    page = inspection.page
    inspection.send(payload("spot.png", disc_files["spot/000.png"]))
    inspection.wait_rows(1)
    heat, photo, raw = (inspection.card(1).locator(s) for s in ("canvas.heat", "img.photo", "img.raw"))
    page.locator("#opacity").evaluate("(el) => { el.value = 25; el.dispatchEvent(new Event('input')); }")
    assert float(heat.evaluate("(e) => getComputedStyle(e).opacity")) == pytest.approx(0.25)
    page.locator("#opacity").evaluate("(el) => { el.value = 90; el.dispatchEvent(new Event('input')); }")
    assert float(heat.evaluate("(e) => getComputedStyle(e).opacity")) == pytest.approx(0.9)
    expect(raw).to_be_hidden()
    page.check("#raw-map")
    expect(raw).to_be_visible()
    expect(photo).to_be_hidden()
    expect(heat).to_be_hidden()
    page.uncheck("#raw-map")
    expect(photo).to_be_visible()
    expect(heat).to_be_visible()


def test_drop_and_paste_send_pictures(inspection, disc_files):
    inspection.drop(payload("dropped.png", disc_files["good/001.png"]), payload("dropped-spot.png", disc_files["spot/002.png"]))
    inspection.wait_rows(2)
    inspection.paste(payload("image.png", disc_files["scratch/000.png"]))
    inspection.wait_rows(3)
    files = inspection.page.locator("#results tbody td.file").all_inner_texts()
    assert files == ["dropped.png", "dropped-spot.png", "image.png"]
    assert inspection.decisions() == ["normal", "anomalous", "anomalous"]


def test_results_download_as_csv_and_json(inspection, disc_files, tmp_path):
    page = inspection.page
    inspection.send(payload("=HYPERLINK(1).png", disc_files["good/000.png"]), payload("spot.png", disc_files["spot/000.png"]),
                    payload("notes.txt", b"not a picture", "text/plain"))
    inspection.wait_rows(3)
    with page.expect_download() as info:
        page.click("#csv")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.suffix == ".csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert [r["n"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["file"] == "'=HYPERLINK(1).png"  # a spreadsheet must not run a filename as a formula
    assert [r["decision"] for r in rows] == ["normal", "anomalous", ""]
    assert [r["status"] for r in rows] == ["scored", "scored", "error"]
    assert "HTTP 422" in rows[2]["error"] and float(rows[1]["image_score"]) > float(rows[1]["threshold"])
    table_scores = page.locator("#results tbody td:nth-child(4)").all_inner_texts()[:2]
    assert [f"{float(r['image_score']):.3f}" for r in rows[:2]] == table_scores

    inspection.set_what_if(float(rows[1]["image_score"]) + 0.01)  # the download reflects the what-if, too
    inspection.expect_decisions(["normal", "normal", "error"])
    with page.expect_download() as info:
        page.click("#json")
    body = json.loads(open(info.value.path(), encoding="utf-8").read())
    assert body["server"].startswith("http://127.0.0.1") and "disc" in body["products"]
    results = body["results"]
    assert [r["what_if_decision"] for r in results[:2]] == ["normal", "normal"]
    assert [r["decision"] for r in results[:2]] == ["normal", "anomalous"]
    assert results[1]["what_if_normalised_score"] < 0.5 < results[1]["normalised_score"]
    assert "anomaly_map_png" not in json.dumps(results)  # records, not the maps

    page.click("#clear")
    expect(page.locator("#results tbody tr")).to_have_count(0)
    expect(page.locator("#cards article")).to_have_count(0)
    expect(page.locator("#csv")).to_be_disabled()
