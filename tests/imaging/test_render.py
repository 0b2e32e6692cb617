"""imaging.render.png_bytes writes PNGs itself (Up filter, zlib level 1): any decoder must read back the array."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from imaging import render
from imaging.formats import png_damage


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (900, 900), (5, 4, 3), (64, 33, 3)])
def test_png_bytes_round_trips_through_pillow_and_libspng(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    a[len(a) // 2:] = a[: len(a) - len(a) // 2]  # repeated rows: the Up filter's zeros
    data = render.png_bytes(a)
    assert png_damage(data) is None  # chunk CRCs right
    out = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(out, a)
    pyspng = pytest.importorskip("pyspng")
    np.testing.assert_array_equal(pyspng.load(data).reshape(a.shape), a)


def test_png_bytes_filters_each_row_against_the_one_above():
    a = np.tile(np.arange(10, dtype=np.uint8) * 25, (4, 1))  # identical rows
    data = render.png_bytes(a)
    idat = data[data.index(b"IDAT") + 4: data.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(4, 11)
    assert (rows[:, 0] == 2).all()  # filter type Up
    np.testing.assert_array_equal(rows[0, 1:], a[0])
    assert not rows[1:, 1:].any()  # each row minus the one above


def test_other_arrays_still_go_through_pillow():
    a = np.zeros((4, 5, 4), np.uint8)  # RGBA
    a[..., 3] = 255
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(render.png_bytes(a)))), a)
