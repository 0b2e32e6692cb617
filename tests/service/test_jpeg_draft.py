"""A big JPEG is decoded at a reduced scale (libjpeg draft, as the builder decodes), and the answer still speaks of
the full picture: its size, its maps."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from demo.sample import add_defect, good_image
from imaging.decode import decode_image, decode_sized
from model.preprocess import decode_side
from tests.service.conftest import png_bytes


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    rng = np.random.default_rng(5)
    image, _ = add_defect(good_image(rng, 128), "spot", rng, center=(40, 84))
    big = Image.fromarray(image).resize((1100, 1400), Image.Resampling.BICUBIC)  # 1,100 wide, 1,400 high
    return png_bytes(big, format="JPEG", quality=95)


def _png_size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_the_server_decodes_at_a_reduced_scale_and_answers_for_the_full_picture(client, disc_bundle, big_jpeg):
    detector = disc_bundle.detector
    small, size = decode_sized(big_jpeg, draft=decode_side(detector.config))
    assert small.shape[:2] == (350, 275) and size == (1400, 1100)  # 1/4 scale: both sides >= 2 x 128
    r = client.post("/predict?heatmap=png", files={"file": ("big.jpg", big_jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["image_width"], body["image_height"]) == (1100, 1400)
    assert _png_size(body["anomaly_map_png"]) == (1100, 1400)
    drafted = detector.score_batch([small], [size])[0]
    assert body["image_score"] == pytest.approx(drafted.image_score, rel=1e-5)  # what the server ran
    full = detector.score(decode_image(big_jpeg))  # the full decode: the same answer within a small tolerance
    assert body["image_score"] == pytest.approx(full.image_score, rel=0.02)
    assert body["is_anomalous"] == full.is_anomalous
    scale = float(full.patch_scores.max())
    assert np.abs(drafted.patch_scores - full.patch_scores).max() <= 0.1 * scale


def test_overlay_and_raw_maps_have_the_full_size(client, disc_bundle, big_jpeg):
    r = client.post("/predict?heatmap=overlay", files={"file": ("big.jpg", big_jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert _png_size(body["overlay_png"]) == (1100, 1400)  # drawn over the picture itself, decoded in full
    full = disc_bundle.detector.score(decode_image(big_jpeg))
    assert body["image_score"] == pytest.approx(full.image_score, rel=1e-5)
    files = [("files", ("big.jpg", big_jpeg, "image/jpeg")), ("files", ("small.png", png_bytes(np.zeros((40, 60, 3),
                                                                                                  np.uint8)), "image/png"))]
    r = client.post("/predict/batch?heatmap=raw", files=files)
    assert r.status_code == 200, r.text
    big, small = r.json()["results"]
    assert (big["image_width"], big["image_height"]) == (1100, 1400)
    assert np.asarray(big["anomaly_map"]).shape == (1400, 1100)
    assert np.asarray(small["anomaly_map"]).shape == (40, 60)
