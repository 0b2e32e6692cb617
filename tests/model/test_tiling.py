"""Tiling geometry (model/tiling.py): known answers, full coverage, and stitching against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from model import tiling
from model.errors import ConfigError


def test_tile_starts_known_answers():
    assert tiling.tile_starts(900, 256, 0.25).tolist() == [0, 192, 384, 576, 644]  # last one flush with the border
    assert tiling.tile_starts(4096, 256, 0.0).tolist() == list(range(0, 4096, 256))
    assert tiling.tile_starts(256, 256, 0.5).tolist() == [0]
    assert tiling.tile_starts(100, 256, 0.25).tolist() == [0]  # shorter than a tile: one, padded
    assert tiling.n_tiles((900, 900), 256, 0.25) == 25
    with pytest.raises(ConfigError):
        tiling.tile_starts(900, 256, 1.0)


@pytest.mark.parametrize("length, tile, overlap", [(900, 256, 0.25), (1000, 128, 0.1), (513, 256, 0.0), (77, 32, 0.6)])
def test_tiles_cover_every_pixel_with_at_most_the_stated_overlap(length, tile, overlap):
    starts = tiling.tile_starts(length, tile, overlap)
    covered = np.zeros(length, int)
    for s in starts:
        covered[s : s + tile] += 1
    assert covered.min() >= 1 and starts[-1] + tile == length
    assert np.all(np.diff(starts) <= round(tile * (1 - overlap)))


def test_cut_pads_short_sides_with_edge_pixels():
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    piece = tiling.cut(image, np.array([0, 0]), 8)
    assert piece.shape == (8, 8, 3)
    np.testing.assert_array_equal(piece[:5, :7], image)
    np.testing.assert_array_equal(piece[7, 6], image[4, 6])


def test_iter_tiles_is_bounded_and_in_box_order():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    chunks = list(tiling.iter_tiles(image, 128, 0.25, batch=4))
    assert all(c.shape[0] <= 4 for c in chunks)
    tiles = np.concatenate(chunks)
    boxes = tiling.tile_boxes(image.shape[:2], 128, 0.25)
    assert len(tiles) == len(boxes)
    for t, (y, x) in zip(tiles, boxes):
        np.testing.assert_array_equal(t, image[y : y + 128, x : x + 128])


def test_stitch_puts_a_pixel_level_score_field_back_in_place():
    """A score field defined on the picture, sampled by each tile at its cells, is stitched back onto the picture's
    own cell grid: every cell equals the field at that cell (tiles whose start is a multiple of the cell size)."""
    h_img, w_img, tile, cells = 512, 768, 128, 16  # 8 pixels per cell
    field = np.random.default_rng(1).random((h_img // 8, w_img // 8)).astype(np.float32)
    boxes = tiling.tile_boxes((h_img, w_img), tile, 0.5)
    scores = np.stack([field[y // 8 : y // 8 + cells, x // 8 : x // 8 + cells] for y, x in boxes])
    grid = tiling.stitch(scores, (h_img, w_img), tile, 0.5)
    np.testing.assert_array_equal(grid, field)


def test_stitch_keeps_the_max_where_tiles_overlap_and_finds_a_spot():
    tile, cells = 64, 8
    boxes = tiling.tile_boxes((200, 200), tile, 0.25)
    scores = np.zeros((len(boxes), cells, cells), np.float32)
    # A defect at pixel (150, 40): every tile that holds it marks its cell.
    for i, (y, x) in enumerate(boxes):
        if y <= 150 < y + tile and x <= 40 < x + tile:
            scores[i, (150 - y) // 8, (40 - x) // 8] = 1.0 + i
    grid = tiling.stitch(scores, (200, 200), tile, 0.25)
    assert grid.shape == (25, 25)
    peak = np.unravel_index(np.argmax(grid), grid.shape)
    assert abs(peak[0] * 8 + 4 - 150) <= 8 and abs(peak[1] * 8 + 4 - 40) <= 8
    assert grid.max() == scores.max()  # the overlap keeps the largest


def test_tiled_detector_equals_the_per_tile_reference_in_bounded_batches():
    """The tiled detector's grid is the stitch of each tile scored on its own (slow reference), its image score the
    grid's max, and the backbone never sees more than TILE_BATCH tiles at once."""
    import faiss

    from model import detector as detector_module
    from model.calibration import calibrate
    from model.config import PatchCoreConfig
    from model.detector import Detector
    from model.features import PatchEmbedder

    config = PatchCoreConfig(pretrained=False, image_size=64, tile_size=64, tile_overlap=0.25)
    embedder = PatchEmbedder(config)
    index = faiss.IndexFlatL2(embedder.dim)
    index.add(np.random.default_rng(0).standard_normal((50, embedder.dim)).astype(np.float32))
    det = Detector(config, embedder, index, calibrate(np.array([1.0, 1.2, 1.1])))
    image = np.random.default_rng(1).integers(0, 255, (150, 230, 3), dtype=np.uint8)
    seen = []
    original = embedder.embed_tensor
    embedder.embed_tensor = lambda batch: seen.append(batch.shape[0]) or original(batch)
    result = det.predict(image)
    embedder.embed_tensor = original
    assert max(seen) <= detector_module.TILE_BATCH and sum(seen) == tiling.n_tiles((150, 230), 64, 0.25)
    per_tile = np.stack([det.patch_scores(embedder.embed([tiling.cut(image, b, 64)]))[0][0]
                         for b in tiling.tile_boxes((150, 230), 64, 0.25)])
    np.testing.assert_allclose(result.patch_scores, tiling.stitch(per_tile, (150, 230), 64, 0.25), rtol=1e-5)
    assert result.image_score == pytest.approx(float(per_tile.max()), rel=1e-6)
    assert result.anomaly_map.shape == (150, 230)
