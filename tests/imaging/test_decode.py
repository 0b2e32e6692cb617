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


# ------------------------------------------------------------------ JPEG draft mode (decode_sized, draft=...)
from imaging.decode import decode_sized, iter_images  # noqa: E402


def smooth_picture(height: int, width: int, seed: int = 0) -> Image.Image:
    """A camera-like picture: low-frequency content, upscaled from a small random one."""
    small = np.random.default_rng(seed).integers(0, 255, (12, 18, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def test_a_big_jpeg_is_decoded_at_a_reduced_scale_and_keeps_its_full_size():
    data = encode(smooth_picture(1400, 2100), "JPEG", quality=95)
    image, size = decode_sized(data, draft=256)
    # libjpeg's scales are 1/2, 1/4, 1/8: the largest with both sides >= 256 is 1/4 (1400 // 256 = 5)
    assert image.shape == (350, 525, 3) and size == (1400, 2100)
    full, full_size = decode_sized(data)
    assert full.shape == (1400, 2100, 3) and full_size == (1400, 2100)
    assert np.array_equal(decode_image(data, draft=256), image)
    # the same picture: the full decode, shrunk 4x by area averaging, is within a few grey levels
    shrunk = np.asarray(Image.fromarray(full).resize((525, 350), Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(shrunk - image).mean() < 2.0


def test_draft_keeps_the_exif_orientation_and_turns_the_full_size_with_it():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(smooth_picture(1400, 2100), "JPEG", exif=exif.tobytes())
    image, size = decode_sized(data, draft=256)
    assert image.shape == (525, 350, 3) and size == (2100, 1400)
    np.testing.assert_array_equal(image, np.rot90(decode_sized(encode(smooth_picture(1400, 2100), "JPEG"),
                                                               draft=256)[0], k=-1))


def test_draft_checks_the_pixel_cap_on_the_full_size_and_leaves_other_pictures_alone():
    big = encode(Image.new("RGB", (5000, 5000)), "JPEG")
    with pytest.raises(ImageDecodeError, match="5000x5000 = 25000000, over the limit"):
        decode_sized(big, max_pixels=1_000_000, draft=64)
    png = encode(smooth_picture(600, 700))
    image, size = decode_sized(png, draft=64)  # not a JPEG: full size
    assert image.shape == (600, 700, 3) and size == (600, 700)
    small = encode(smooth_picture(300, 500), "JPEG")  # under 2 x draft: nothing to gain, decoded as it is
    np.testing.assert_array_equal(decode_sized(small, draft=256)[0], decode_image(small))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_sized(encode(smooth_picture(1400, 2100), "JPEG")[:3000], draft=256)


def test_iter_images_decodes_as_the_server_does(tmp_path):
    data = encode(smooth_picture(1100, 1300), "JPEG")
    (tmp_path / "a.jpg").write_bytes(data)
    [(_, image, _, error)] = list(iter_images([tmp_path / "a.jpg"], workers=1, draft=256))
    assert error is None
    np.testing.assert_array_equal(image, decode_sized(data, draft=256)[0])
    assert image.shape == (275, 325, 3)  # 1/4: 1100 // 256 = 4


def _pillow_pixels(data: bytes) -> np.ndarray:
    from PIL import ImageOps

    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


@pytest.mark.parametrize("case", ["rgb", "interlaced", "trns", "exif", "rgba", "palette"])
def test_libspng_decodes_8_bit_rgb_pngs_as_pillow_does_and_leaves_the_rest_to_pillow(case, monkeypatch):
    """imaging.decode._fast_png (pyspng) takes only 8-bit truecolour PNGs without tRNS / eXIf, and gives Pillow's
    pixels; every other PNG goes to Pillow (orientation, transparency, 16 bits handled there)."""
    pyspng = pytest.importorskip("pyspng")
    from imaging import decode

    img = Image.fromarray(RGB)
    kw = {}
    if case == "interlaced":
        kw["interlace"] = 1
    elif case == "trns":
        kw["transparency"] = (1, 2, 3)
    elif case == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        kw["exif"] = exif.tobytes()
    elif case == "rgba":
        img = img.convert("RGBA")
    elif case == "palette":
        img = img.convert("P")
    data = encode(img, "PNG", **kw)
    calls = []
    real = pyspng.load
    monkeypatch.setattr(pyspng, "load", lambda d, *a, **k: calls.append(1) or real(d, *a, **k))
    out = decode_image(data)
    np.testing.assert_array_equal(out, _pillow_pixels(data))
    assert bool(calls) == (case in ("rgb", "interlaced")), case
    if case == "exif":
        assert out.shape == (30, 20, 3)


def test_libspng_on_real_bottle_pictures_equals_pillow():
    from pathlib import Path

    pytest.importorskip("pyspng")
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test"
    paths = sorted(root.glob("*/000.png"))
    if not paths:
        pytest.skip(f"real data absent: {root} (see ../shared/data/README)")
    for p in paths:
        data = p.read_bytes()
        np.testing.assert_array_equal(decode_image(data), _pillow_pixels(data))
