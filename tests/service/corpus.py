"""The malformed-image corpus: every entry is generated here (no binary files in the repo), with the answer it must get.

An entry gets either a clear 4xx whose detail holds given words, or 200 with a correct answer. For 200 entries,
``pixels`` is the (H, W, 3) uint8 picture the server must score, computed independently of the decoder (the
source array, its known transform, its palette, or the same JPEG without the odd part), so the test can demand
the exact score of that picture.

    python -m tests.service.corpus --out /tmp/corpus     # writes the files and index.json, prints the table
    python -m tests.service.corpus --out /tmp/corpus --index-dir IDX   # also posts each to a real server on IDX
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from demo.sample import good_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Entry:
    name: str  # short id, also the uploaded file's name stem
    what: str  # one line for the table
    filename: str
    data: bytes
    status: int  # the HTTP status it must get
    words: str = ""  # 4xx: the detail must contain these words
    pixels: np.ndarray | None = None  # 200: the exact picture that must be scored (None: any decode, e.g. lossy)


def source(height: int = 96, width: int = 128, seed: int = 7) -> np.ndarray:
    """The corpus's base picture: a synthetic part, not square (so every EXIF orientation is visible)."""
    square = good_image(np.random.default_rng(seed), max(height, width))
    return np.ascontiguousarray(square[:height, :width])


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds almost nothing: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + idat + png_chunk(b"IEND", b"")


def with_png_chunk(png: bytes, chunk: bytes) -> bytes:
    """Insert a chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + chunk + png[33:]


def bad_crc(png: bytes) -> bytes:
    """Flip the CRC of the first IDAT chunk."""
    at = png.index(b"IDAT")
    length = struct.unpack(">I", png[at - 4 : at])[0]
    crc_at = at + 4 + length
    return png[:crc_at] + bytes(b ^ 0xFF for b in png[crc_at : crc_at + 4]) + png[crc_at + 4 :]


def flipped_idat(png: bytes) -> bytes:
    """Flip one byte in the middle of the first IDAT chunk's data and fix its CRC: only zlib can notice."""
    at = png.index(b"IDAT")
    length = struct.unpack(">I", png[at - 4 : at])[0]
    data = bytearray(png[at + 4 : at + 4 + length])
    data[len(data) // 2] ^= 0x55
    return png[: at - 4] + png_chunk(b"IDAT", bytes(data)) + png[at + 4 + length + 4 :]


def jpeg_with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert one APPn segment right after SOI."""
    return jpeg[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + jpeg[2:]


def tiff_with_broken_second_ifd(tiff: bytes) -> bytes:
    """Point a little-endian TIFF's next-IFD offset at an appended IFD with no size tags: Pillow's frame count then
    raises TypeError("Missing dimensions"), a 500 before imaging/decode.py caught every exception."""
    first = struct.unpack("<I", tiff[4:8])[0]
    at = first + 2 + 12 * struct.unpack("<H", tiff[first : first + 2])[0]  # the first IFD's next-IFD offset
    fake = struct.pack("<H", 1) + struct.pack("<HHII", 0x9999, 3, 1, 0) + struct.pack("<I", 0)
    return tiff[:at] + struct.pack("<I", len(tiff)) + tiff[at + 4 :] + fake


def bmp_header_only(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + b"\0" * 64


# EXIF orientation -> the transpose that turns the upright picture into the stored one (the inverse of what a
# viewer applies: 6 is shown rotated 90 degrees clockwise, so it is stored rotated 90 counter-clockwise).
STORED = {
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _orientation(k: int, rgb: np.ndarray) -> Entry:
    img = Image.fromarray(rgb)
    stored = img if STORED[k] is None else img.transpose(STORED[k])
    exif = Image.Exif()
    exif[0x0112] = k
    data = encode(stored, "PNG", exif=exif.tobytes())
    return Entry(f"exif-orientation-{k}", f"EXIF orientation {k} (PNG eXIf)", f"o{k}.png", data, 200, pixels=rgb)


def _truncated(fmt: str, ext: str, rgb: np.ndarray) -> Entry:
    data = encode(Image.fromarray(rgb), fmt)
    return Entry(f"truncated-{ext}", f"{fmt} cut at half its bytes", f"t.{ext}", data[: len(data) // 2], 422,
                 "truncated or corrupt")


def _modes(rgb: np.ndarray) -> list[Entry]:
    gray = rgb[..., 1]
    gray3 = np.repeat(gray[..., None], 3, axis=2)
    out = [
        Entry("png-16bit-gray", "16-bit grey PNG (I;16)", "g16.png",
              encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"), 200, pixels=gray3),
        Entry("png-16bit-rgb", "16-bit RGB PNG", "rgb16.png", _png_rgb16(rgb), 200, pixels=rgb),
        Entry("tiff-float", "32-bit float grey TIFF (F), 0..255", "f.tif",
              encode(Image.fromarray(gray.astype(np.float32)), "TIFF"), 200, pixels=gray3),
        Entry("tiff-float-unit", "32-bit float grey TIFF (F), 0..1", "f1.tif",
              encode(Image.fromarray(gray.astype(np.float32) / np.float32(255)), "TIFF"), 200, pixels=gray3),
        Entry("tiff-float-nan", "32-bit float TIFF holding NaN", "nan.tif",
              encode(Image.fromarray(np.where(gray > 200, np.nan, gray).astype(np.float32)), "TIFF"), 422, "NaN"),
        Entry("tiff-int32", "32-bit integer grey TIFF (I), 16-bit range", "i.tif",
              encode(Image.fromarray(gray.astype(np.int32) * 257), "TIFF"), 200, pixels=gray3),
        Entry("png-1bit", "1-bit black and white PNG", "b.png",
              encode(Image.fromarray(gray > 127), "PNG"), 200,
              pixels=np.repeat(np.where(gray > 127, 255, 0).astype(np.uint8)[..., None], 3, axis=2)),
        Entry("jpeg-cmyk", "CMYK JPEG", "cmyk.jpg", encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
              200),
    ]
    # Palette with a transparent index: transparent pixels composite onto white.
    pal_img = Image.fromarray(rgb).quantize(16, dither=Image.Dither.NONE)
    index = np.asarray(pal_img).copy()
    index[: rgb.shape[0] // 3] = 15  # the top third uses the transparent index
    pal_img = Image.fromarray(index, mode="P")
    palette = np.asarray(Image.fromarray(rgb).quantize(16, dither=Image.Dither.NONE).getpalette()[:48], np.uint8)
    pal_img.putpalette(palette.tolist())
    want = palette.reshape(16, 3)[index]
    want[index == 15] = 255
    out.append(Entry("png-palette-alpha", "palette PNG with a transparent index (tRNS)", "p.png",
                     encode(pal_img, "PNG", transparency=15), 200, pixels=want))
    # LA with binary alpha (0 or 255): exact expected pixels.
    alpha = np.where(np.arange(rgb.shape[1])[None, :] < rgb.shape[1] // 2, 255, 0).astype(np.uint8)
    alpha = np.broadcast_to(alpha, gray.shape)
    la = Image.merge("LA", (Image.fromarray(gray), Image.fromarray(np.ascontiguousarray(alpha))))
    out.append(Entry("png-la", "grey + alpha PNG (LA), right half transparent", "la.png", encode(la, "PNG"), 200,
                     pixels=np.repeat(np.where(alpha == 255, gray, 255).astype(np.uint8)[..., None], 3, axis=2)))
    return out


def _png_rgb16(rgb: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one), each sample v * 257."""
    height, width = rgb.shape[:2]
    samples = (rgb.astype(">u2") * 257).reshape(height, width * 3)
    raw = b"".join(b"\0" + row.tobytes() for row in samples)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def _not_images(rgb: np.ndarray) -> list[Entry]:
    frames = [Image.fromarray(np.roll(rgb, 8 * i, axis=1)) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    tiff = io.BytesIO()
    frames[0].save(tiff, format="TIFF", save_all=True, append_images=frames[1:])
    apng = io.BytesIO()
    frames[0].save(apng, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    svg = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
           b'<circle cx="32" cy="32" r="20" fill="grey"/></svg>\n')
    return [
        Entry("zero-bytes", "0 bytes", "empty.png", b"", 422, "empty"),
        Entry("text", "plain text", "notes.png", b"these are not the pixels you are looking for\n" * 20, 422,
              "not a supported image"),
        Entry("html", "an HTML page", "page.png",
              b"<!DOCTYPE html>\n<html><body><h1>502 Bad Gateway</h1></body></html>\n", 422, "HTML"),
        Entry("svg", "an SVG drawing", "drawing.svg", svg, 422, "SVG"),
        Entry("gif-animated", "animated GIF, 3 frames", "anim.gif", gif.getvalue(), 422, "GIF"),
        Entry("webp", "WebP picture", "p.webp", encode(frames[0], "WEBP"), 422, "WebP"),
        Entry("tiff-multipage", "multi-page TIFF, 3 pages", "pages.tif", tiff.getvalue(), 422, "3 frames"),
        Entry("png-animated", "animated PNG (APNG), 3 frames", "anim.png", apng.getvalue(), 422, "3 frames"),
    ]


def _sizes() -> list[Entry]:
    tall = np.tile(np.array([[[90, 100, 110]]], np.uint8), (10_000, 1, 1))
    big = np.tile(source(60, 80), (50, 50, 1))  # 3000 x 4000, compresses well: a large but valid upload
    return [
        Entry("size-1x1", "1 x 1 pixel", "dot.png", encode(Image.new("RGB", (1, 1), (120, 120, 120)), "PNG"), 422,
              "too small"),
        Entry("size-1x10000", "1 x 10,000 pixels", "line.png", encode(Image.fromarray(tall), "PNG"), 422, "too small"),
        Entry("size-4000x3000", "4,000 x 3,000 pixels (12 MP, valid)", "big.png", encode(Image.fromarray(big), "PNG"),
              200, pixels=big),
        Entry("bomb-png-20000", "PNG header claiming 20,000 x 20,000 (bomb)", "bomb.png",
              png_header_only(20_000, 20_000), 413, "too many pixels"),
        Entry("bomb-bmp-30000", "BMP header claiming 30,000 x 30,000 (bomb)", "bomb.bmp",
              bmp_header_only(30_000, 30_000), 413, "too many pixels"),
        Entry("png-zero-width", "PNG header claiming 0 x 64", "zero.png", png_header_only(0, 64), 422,
              "damaged header"),
    ]


def _damaged(rgb: np.ndarray) -> list[Entry]:
    png = encode(Image.fromarray(rgb), "PNG")
    jpeg = encode(Image.fromarray(rgb), "JPEG", quality=95)
    icc = b"\0\0\0\0" + bytes(np.random.default_rng(1).integers(0, 256, 600_000, dtype=np.uint8))
    text_bomb = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b" " * (64 * 1024 * 1024), 9))
    mpo = io.BytesIO()
    Image.fromarray(rgb).save(mpo, format="MPO", quality=95, save_all=True, append_images=[Image.fromarray(rgb[::-1])])
    return [
        Entry("png-bad-crc", "PNG with a wrong IDAT CRC", "crc.png", bad_crc(png), 422, "CRC"),
        Entry("png-idat-flipped", "PNG with a flipped byte inside IDAT (CRC recomputed)", "flip.png", flipped_idat(png),
              422, "truncated or corrupt"),
        Entry("tiff-broken-second-ifd", "TIFF whose second page has no size tags", "ifd.tif",
              tiff_with_broken_second_ifd(encode(Image.fromarray(rgb), "TIFF")), 422, "truncated or corrupt"),
        Entry("jpeg-mpo", "MPO (camera JPEG with a second picture)", "cam.jpg", mpo.getvalue(), 200,
              pixels=np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))),
        Entry("png-exif-corrupt", "PNG with a corrupt eXIf block", "ex.png",
              with_png_chunk(png, png_chunk(b"eXIf", b"MM\0*\0\0\0\x08\xff\xff" + b"\x13" * 40)), 200, pixels=rgb),
        Entry("jpeg-exif-corrupt", "JPEG with a corrupt EXIF block", "ex.jpg",
              jpeg_with_segment(jpeg, 0xE1, b"Exif\0\0II*\0\xff\xff\xff\x7f" + b"\x41" * 30), 200,
              pixels=np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))),
        Entry("png-text-bomb", "PNG with a zTXt chunk inflating to 64 MiB", "ztxt.png", with_png_chunk(png, text_bomb),
              422, "truncated or corrupt"),
        Entry("wrong-extension", "a PNG named .jpg, sent as image/jpeg", "really-png.jpg", png, 200, pixels=rgb),
        Entry("jpeg-huge-icc", "JPEG with a 600 kB ICC profile", "icc.jpg",
              encode(Image.fromarray(rgb), "JPEG", quality=95, icc_profile=icc), 200,
              pixels=np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))),
    ]


def build() -> list[Entry]:
    """Every corpus entry, in table order."""
    rgb = source()
    entries = [_truncated(fmt, ext, rgb) for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"),
                                                           ("TIFF", "tif"))]
    entries += _not_images(rgb) + _sizes() + _modes(rgb) + [_orientation(k, rgb) for k in range(1, 9)] + _damaged(rgb)
    names = [e.name for e in entries]
    assert len(set(names)) == len(names), "corpus entry names must be unique"
    return entries


def content_type(entry: Entry) -> str:
    ext = entry.filename.rsplit(".", 1)[-1]
    return {"png": "image/png", "jpg": "image/jpeg", "bmp": "image/bmp", "tif": "image/tiff", "gif": "image/gif",
            "svg": "image/svg+xml", "webp": "image/webp"}.get(ext, "application/octet-stream")


def write(out: Path, entries: list[Entry], answer: Callable[[Entry], tuple[int, str]] | None = None) -> list[dict]:
    """Write the files (and index.json) under out; with ``answer``, also record what a server answered."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for e in entries:
        (out / f"{e.name}__{e.filename}").write_bytes(e.data)
        row = {"name": e.name, "what": e.what, "bytes": len(e.data), "expected": e.status, "words": e.words}
        if answer is not None:
            row["status"], row["detail"] = answer(e)
        rows.append(row)
    (out / "index.json").write_text(json.dumps(rows, indent=1))
    return rows


def server_answers(index_dir: Path, log: Path) -> Callable[[Entry], tuple[int, str]]:
    """Post entries to patchcore-serve on index_dir (a subprocess on 127.0.0.1); stops with the interpreter."""
    import atexit
    import contextlib

    import httpx

    from reliability.common import demo_server

    stack = contextlib.ExitStack()
    atexit.register(stack.close)
    server = stack.enter_context(demo_server(index_dir, log, threads=1, max_upload_bytes=4 * 1024 * 1024))
    http = stack.enter_context(httpx.Client(base_url=server.url, timeout=120))

    def answer(e: Entry) -> tuple[int, str]:
        r = http.post("/predict", files={"file": (e.filename, e.data, content_type(e))})
        body = r.json()
        if r.status_code != 200:
            return r.status_code, body["detail"]
        return r.status_code, f"score {body['image_score']:.3f}, {body['image_width']}x{body['image_height']}"

    return answer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the corpus files")
    p.add_argument("--index-dir", type=Path, help="also post every entry to a real server on this index")
    args = p.parse_args(argv)
    answer = server_answers(args.index_dir, args.out / "server.log") if args.index_dir else None
    rows = write(args.out, build(), answer)
    if answer is None:
        print("| entry | what | bytes | must get |\n|---|---|---:|---|")
        for r in rows:
            print(f"| {r['name']} | {r['what']} | {r['bytes']:,} | {r['expected']} {r['words']} |")
        return 0
    print("| entry | what | bytes | answer | detail (or score) |\n|---|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['name']} | {r['what']} | {r['bytes']:,} | {r['status']} | {r['detail']} |")
    return 0 if all(r["status"] == r["expected"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
