import io

import numpy as np
import pytest
from PIL import Image

from imaging.decode import ImageDecodeError, decode_image, list_images


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"])
def test_every_mode_becomes_rgb8(mode):
    img = Image.fromarray(RGB)
    if mode == "I;16":
        img = Image.fromarray((RGB[..., 0].astype(np.uint16) * 257))
    else:
        img = img.convert(mode)
    out = decode_image(encode(img, "TIFF" if mode == "CMYK" else "PNG"))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if mode == "I;16":
        np.testing.assert_array_equal(out[..., 0], RGB[..., 0])  # 16-bit scaled, not clipped


def test_exif_orientation_is_applied():
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.shape == (30, 20, 3)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is not an image at all", "not a supported image"),
])
def test_bad_bytes_are_refused(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_truncated_image_is_refused():
    data = encode(Image.fromarray(RGB))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_pixel_cap_is_checked_before_decoding():
    big = encode(Image.new("L", (5000, 5000)))  # compresses to a few kB: a decompression bomb in miniature
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(big, max_pixels=1_000_000)


def test_list_images_recurses_and_understands_mvtec_roots(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.png", "a/b/2.JPG", "a/b/3.bmp", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["1.png", "2.JPG", "3.bmp"]
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    (tmp_path / "cat" / "train" / "good" / "0.png").write_bytes(b"x")
    (tmp_path / "cat" / "test").mkdir()
    (tmp_path / "cat" / "test" / "9.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path / "cat")] == ["0.png"]


def test_no_python_repr_in_messages_and_every_pillow_error_is_a_decode_error(caplog):
    """Two flaws found by the reliability campaign: Pillow's "cannot identify image file <_io.BytesIO object at
    0x...>" reached users, and a TIFF with a broken second page raised TypeError (a 500 at the server)."""
    from tests.service.corpus import tiff_with_broken_second_ifd

    for data in (b"GIF89a" + bytes(40), b"\x89PNG\r\n\x1a\n" + bytes(40), b"<html><body>hi</body></html>"):
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data, name="'x'")
        assert "object at 0x" not in str(info.value) and "'x' is " in str(info.value), info.value
    with pytest.raises(ImageDecodeError, match="truncated or corrupt .Missing dimensions"):
        decode_image(tiff_with_broken_second_ifd(encode(Image.fromarray(RGB), "TIFF")), name="'x.tif'")
    assert any("unexpected TypeError" in r.getMessage() for r in caplog.records)  # logged for developers


def test_only_png_jpeg_bmp_and_tiff_are_opened():
    img = Image.fromarray(RGB)
    refused = (("GIF", "a GIF image"), ("WEBP", "a WebP image"), ("PPM", "a PPM image"), ("ICO", "an ICO icon"))
    for fmt, words in refused:
        with pytest.raises(ImageDecodeError, match=words):
            decode_image(encode(img, fmt))
