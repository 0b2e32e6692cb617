"""Mutation fuzzing of decode_image: real PNG, JPEG, BMP and TIFF files with bytes flipped, cut, inserted or
overwritten. Whatever the damage, the decoder returns an (H, W, 3) uint8 picture or raises ImageDecodeError whose
message names the file and carries no Python repr; never another exception."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imaging.decode import ImageDecodeError, decode_image

# Pillow warns about the damaged EXIF and TIFF tags these files are made of; the answers are what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning", "ignore:.*EXIF:UserWarning",
                                        "ignore:Tag data larger than file:UserWarning")
RGB = np.random.default_rng(3).integers(0, 255, (24, 40, 3), dtype=np.uint8)


def _encode(fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format=fmt, **options)
    return buf.getvalue()


SEEDS = {"PNG": _encode("PNG"), "JPEG": _encode("JPEG", quality=90), "BMP": _encode("BMP"), "TIFF": _encode("TIFF"),
         "TIFF-LZW": _encode("TIFF", compression="tiff_lzw")}


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
          database=None)
@given(mutated())
def test_damaged_files_decode_or_fail_cleanly(data):
    try:
        image = decode_image(data, max_pixels=4_000_000, name="'upload.bin'")
    except ImageDecodeError as exc:
        text = str(exc)
        assert "'upload.bin'" in text and "object at 0x" not in text and "<class" not in text, text
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_the_seeds_themselves_decode(fmt):
    assert decode_image(SEEDS[fmt]).shape == (24, 40, 3)
