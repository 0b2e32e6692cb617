"""POST /predict and /predict/batch: answers equal the in-process detector's, maps align with the upload."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from imaging.decode import decode_image
from demo.sample import add_defect, good_image
from model.calibration import normalise
from tests.service.conftest import png_bytes


def _png_array(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_predict_matches_in_process_detector(client, disc_bundle, test_images):
    data = test_images["spot/000.png"]
    r = client.post("/predict", files={"file": ("spot.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = disc_bundle.detector.score(decode_image(data))
    assert body["image_score"] == pytest.approx(expected.image_score, rel=1e-5)
    assert body["normalised_score"] == pytest.approx(expected.normalised_score, rel=1e-4, abs=1e-6)
    assert body["is_anomalous"] == expected.is_anomalous
    assert body["threshold"] == pytest.approx(disc_bundle.metadata.calibration.threshold)
    assert (body["index"], body["filename"], body["schema_version"], body["heatmap"]) == ("disc", "spot.png", 2, "none")
    assert (body["image_width"], body["image_height"]) == (128, 128)
    assert body["anomaly_map_png"] is None and body["overlay_png"] is None and body["anomaly_map"] is None
    t = body["timings_ms"]
    assert t["map"] == 0.0 and t["render"] == 0.0
    assert t["decode"] > 0 and t["backbone"] > 0 and t["search"] > 0
    assert t["total"] >= t["decode"] + t["backbone"] + t["search"]


def test_defects_score_above_good_parts(client, test_images):
    scores = {}
    for name, data in test_images.items():
        r = client.post("/predict", files={"file": (name, data, "image/png")})
        assert r.status_code == 200, r.text
        scores[name] = r.json()["normalised_score"]
    good = [s for n, s in scores.items() if n.startswith("good/")]
    defects = [s for n, s in scores.items() if not n.startswith("good/")]
    assert max(good) < 0.5 < min(defects), scores


def test_png_heatmap_has_the_upload_size_and_peaks_on_the_defect(client, disc_bundle):
    rng = np.random.default_rng(7)
    image, mask = add_defect(good_image(rng, 128), "spot", rng, center=(40, 84))
    # Upload a non-square picture (200 wide x 150 high): the map must come back on ITS pixel grid.
    upload = np.asarray(Image.fromarray(image).resize((200, 150), Image.Resampling.BILINEAR))
    r = client.post("/predict?heatmap=png", files={"file": ("d.png", png_bytes(upload), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["is_anomalous"] is True
    heat = _png_array(body["anomaly_map_png"])
    assert heat.dtype == np.uint8 and heat.shape == (150, 200)
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(row - 40 * 150 / 128) <= 12 and abs(col - 84 * 200 / 128) <= 12, (row, col)
    assert heat.max() > 128  # over the threshold (grey 128) at the defect ...
    assert np.median(heat) < 128  # ... and under it on most of the part
    # The PNG is the 8-bit normalised map of the in-process detector's anomaly map.
    pred = disc_bundle.detector.predict(decode_image(png_bytes(upload)))
    expected = np.clip(normalise(pred.anomaly_map, disc_bundle.metadata.calibration) * 255 + 0.5, 0, 255)
    assert np.abs(heat.astype(int) - expected.astype(np.uint8).astype(int)).max() <= 1


def test_raw_and_overlay_heatmaps(client, disc_bundle, test_images):
    data = test_images["scratch/000.png"]
    raw = client.post("/predict?heatmap=raw", files={"file": ("s.png", data)}).json()
    amap = np.asarray(raw["anomaly_map"], dtype=np.float32)
    assert amap.shape == (128, 128)
    expected = disc_bundle.detector.predict(decode_image(data)).anomaly_map
    np.testing.assert_allclose(amap, expected, rtol=1e-4, atol=1e-5)
    assert raw["timings_ms"]["map"] > 0
    over = client.post("/predict?heatmap=overlay", files={"file": ("s.png", data)}).json()
    picture = _png_array(over["overlay_png"])
    assert picture.shape == (128, 128, 3) and over["anomaly_map_png"] is None


def test_default_heatmap_comes_from_the_settings(disc_dir, test_images):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service.conftest import make_settings

    with TestClient(create_app(make_settings(disc_dir, default_heatmap="png", warmup=False))) as c:
        body = c.post("/predict", files={"file": ("g.png", test_images["good/000.png"])}).json()
        assert body["heatmap"] == "png" and _png_array(body["anomaly_map_png"]).shape == (128, 128)
        body = c.post("/predict?heatmap=none", files={"file": ("g.png", test_images["good/000.png"])}).json()
        assert body["anomaly_map_png"] is None


def test_batch_equals_single_predictions(client, test_images):
    names = ["good/000.png", "scratch/001.png", "spot/000.png"]
    files = [("files", (n, test_images[n], "image/png")) for n in names]
    r = client.post("/predict/batch?heatmap=png", files=files)
    assert r.status_code == 200, r.text
    batch = r.json()
    assert batch["count"] == 3 and [x["filename"] for x in batch["results"]] == names
    for name, got in zip(names, batch["results"]):
        single = client.post("/predict?heatmap=png", files={"file": (name, test_images[name])}).json()
        assert got["image_score"] == pytest.approx(single["image_score"], rel=1e-4)
        assert got["is_anomalous"] == single["is_anomalous"]
        diff = np.abs(_png_array(got["anomaly_map_png"]).astype(int) - _png_array(single["anomaly_map_png"]))
        assert diff.max() <= 1


def test_batch_of_different_sizes_is_one_pass(client, test_images):
    small = png_bytes(np.asarray(Image.open(io.BytesIO(test_images["good/000.png"])).resize((64, 80))))
    files = [("files", ("a.png", test_images["good/001.png"])), ("files", ("b.png", small))]
    body = client.post("/predict/batch?heatmap=png", files=files).json()
    assert [(x["image_width"], x["image_height"]) for x in body["results"]] == [(128, 128), (64, 80)]
    assert _png_array(body["results"][1]["anomaly_map_png"]).shape == (80, 64)


def _disc_in_mode(mode: str) -> bytes:
    rgb = good_image(np.random.default_rng(3), 128)
    gray = Image.fromarray(rgb).convert("L")
    if mode == "L":
        return png_bytes(gray)
    if mode == "LA":
        return png_bytes(Image.merge("LA", (gray, Image.new("L", gray.size, 255))))
    if mode == "P":
        return png_bytes(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE))
    if mode == "RGBA":
        return png_bytes(Image.fromarray(rgb).convert("RGBA"))
    if mode == "CMYK":
        return png_bytes(Image.fromarray(rgb).convert("CMYK"), format="JPEG", quality=95)
    if mode == "I;16":
        return png_bytes(Image.fromarray(np.asarray(gray).astype(np.uint16) * 257))
    raise ValueError(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_every_image_mode_is_scored(client, mode):
    data = _disc_in_mode(mode)
    assert Image.open(io.BytesIO(data)).mode == mode
    r = client.post("/predict?heatmap=png", files={"file": (f"{mode}.img", data)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["image_width"], body["image_height"]) == (128, 128)
    assert np.isfinite(body["image_score"]) and _png_array(body["anomaly_map_png"]).shape == (128, 128)
    if mode in ("L", "LA", "I;16"):  # grey: same pixels as the grey picture sent as RGB, same score
        gray = np.asarray(Image.open(io.BytesIO(_disc_in_mode("L"))))
        rgb = png_bytes(np.repeat(gray[..., None], 3, axis=2))
        ref = client.post("/predict", files={"file": ("rgb.png", rgb)}).json()
        assert body["image_score"] == pytest.approx(ref["image_score"], rel=1e-5)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied(client, orientation):
    rgb = good_image(np.random.default_rng(4), 128)
    stored = Image.fromarray(rgb).resize((160, 96))  # stored 160 wide x 96 high, shown rotated: 96 x 160
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = png_bytes(stored, format="JPEG", exif=exif.tobytes(), quality=95)
    body = client.post("/predict?heatmap=png", files={"file": ("r.jpg", data, "image/jpeg")}).json()
    assert (body["image_width"], body["image_height"]) == (96, 160)
    assert _png_array(body["anomaly_map_png"]).shape == (160, 96)
