"""Which files the decoder reads, what a refused file looks like, and the PNG integrity check.

Only PNG, JPEG (and its multi-picture MPO form, read as its first picture), BMP and TIFF are opened: every other
Pillow plugin is attack surface this product does not need. A refused upload is named by its first bytes, so the
message can say "an HTML page" or "a GIF image" instead of quoting Pillow's internals.
"""

from __future__ import annotations

import struct
import zlib

READ_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")  # Pillow plugin ids given to Image.open(formats=...)
READABLE = "PNG, JPEG, BMP or TIFF"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_BINARY = (
    (PNG_SIGNATURE, "a PNG file with a damaged header"), (b"\xff\xd8\xff", "a JPEG file with a damaged header"),
    (b"II*\x00", "a TIFF file with a damaged header"), (b"MM\x00*", "a TIFF file with a damaged header"),
    (b"GIF87a", "a GIF image"), (b"GIF89a", "a GIF image"), (b"%PDF", "a PDF document"),
    (b"\x00\x00\x01\x00", "an ICO icon"), (b"8BPS", "a Photoshop document"), (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"), (b"BZh", "a bzip2 archive"), (b"\xff\x0a", "a JPEG XL image"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"qoif", "a QOI image"), (b"P1", "a PBM image"), (b"P4", "a PBM image"), (b"P5", "a PGM image"),
    (b"P6", "a PPM image"),
)


def describe(data: bytes) -> str:
    """What the bytes look like, for an error message ("an HTML page", "a GIF image", "text", "binary data")."""
    head = data[:512]
    for magic, what in _BINARY:
        if head.startswith(magic):
            return what
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[4:12] in (b"ftypavif", b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "an AVIF/HEIC image"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n").lower()
    if text.startswith(("<!doctype html", "<html")) or "<body" in text:
        return "an HTML page"
    if text.startswith("<svg") or (text.startswith("<?xml") and "<svg" in text):
        return "an SVG drawing (vector graphics: rasterise it first)"
    if text.startswith("<?xml"):
        return "an XML document"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text"
    return "binary data of no known image format"


def png_damage(data: bytes) -> str | None:
    """None if every chunk of a PNG has its length and CRC right, else what is wrong (Pillow skips IDAT CRCs)."""
    pos, end = len(PNG_SIGNATURE), len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        stop = pos + 8 + length + 4
        if stop > end:
            return f"its {kind.decode('latin-1')!r} chunk runs past the end of the file"
        (crc,) = struct.unpack(">I", data[stop - 4 : stop])
        if zlib.crc32(data[pos + 4 : stop - 4]) != crc:
            return f"the CRC of its {kind.decode('latin-1')!r} chunk is wrong"
        if kind == b"IEND":
            return None
        pos = stop
    return "it has no IEND chunk"
