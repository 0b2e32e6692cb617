"""Finding and decoding images safely: files or uploaded bytes -> (H, W, 3) uint8 RGB arrays.

One decoder for the builder and the server, so both see identical pixels: EXIF orientation applied, every PIL
mode (L, LA, P, RGBA, CMYK, 16-bit, float) mapped to 8-bit RGB, and a pixel cap checked from the header before
anything is decoded (decompression bombs). Only PNG, JPEG, BMP and TIFF are opened (imaging/formats.py); animations
and multi-page files are refused rather than silently cut to their first frame, and PNG chunk CRCs are checked.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imaging.formats import READABLE, READ_FORMATS, describe, png_damage
from model.errors import InputError, without_reprs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# What Pillow raises for damaged files. Anything else it raises (a TypeError "Missing dimensions" from a TIFF
# without its size tags, found by tests/imaging/test_decode_fuzz.py) is still a 422, and is logged.
_DAMAGE = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)
log = logging.getLogger(__name__)
DEFAULT_MAX_PIXELS = 64_000_000


class ImageDecodeError(InputError):
    """The bytes are not a decodable image (or exceed the pixel cap); the message says which and why."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the cap allows (or PIL's own decompression-bomb limit)."""


def list_images(root: Path) -> list[Path]:
    """Good training images under root, recursively, sorted. An MVTec-style category root means its train/good."""
    root = Path(root)
    if not root.is_dir():
        raise ImageDecodeError(f"{root} is not a folder; pass a folder of good images or an MVTec category root")
    if (root / "train" / "good").is_dir():
        root = root / "train" / "good"
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _to_rgb8(img: Image.Image, name: str) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageDecodeError(f"{name} holds NaN or infinite values; send a picture with finite pixel values")
        top = _full_scale(img.mode, arr)
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _full_scale(mode: str, arr: np.ndarray) -> float:
    """The value that means white: 65535 for 16-bit data, 1.0 for float data in [0, 1], else 255 (or 65535 when
    the values go past 255)."""
    if mode.startswith("I;16"):
        return 65535.0
    low, high = float(arr.min(initial=0)), float(arr.max(initial=0))
    if mode == "F" and low >= 0.0 and high <= 1.0:
        return 1.0
    return 65535.0 if high > 255 else 255.0


def _open(data: bytes, max_pixels: int | None, name: str) -> Image.Image:
    """Open (header only) and check format, frame count, integrity and the pixel cap; nothing is decoded yet."""
    img = Image.open(io.BytesIO(data), formats=READ_FORMATS)
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} has too many pixels: {width}x{height} = {width * height}, over the limit of {max_pixels}; "
            "downscale it before sending, or raise the pixel limit"
        )
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and img.format != "MPO":  # MPO: a camera JPEG with extra pictures; the first is the photo
        raise ImageDecodeError(
            f"{name} holds {frames} frames (an animation or a multi-page file); send one still picture per file"
        )
    damage = png_damage(data) if img.format == "PNG" else None
    if damage:
        raise ImageDecodeError(f"{name} could not be decoded, it is truncated or corrupt ({damage})")
    return img


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str = "image",
                 draft: int | None = None) -> np.ndarray:
    """Image file bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied.

    draft: decode a JPEG at a reduced scale where both sides stay >= draft pixels (see decode_sized).
    Raises ImageDecodeError with a message for people (never a Python repr), ImageTooLargeError past the cap.
    """
    return decode_sized(data, max_pixels, name, draft)[0]


def decode_sized(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str = "image",
                 draft: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Image file bytes -> ((h, w, 3) uint8 RGB, the picture's full (H, W)), EXIF orientation applied to both.

    draft (model.preprocess.decode_side): a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (DCT scaling, a
    proper low-pass) as long as both sides stay >= draft pixels; the model resizes every picture to its input size
    anyway, and from twice that size the resize loses nothing. (h, w) is then the reduced size, (H, W) the picture's.
    Other formats, and None, decode at full size: (h, w) == (H, W). The pixel cap is checked on the full size.
    """
    if not data:
        raise ImageDecodeError(f"{name} is empty (0 bytes)")
    try:
        # The cap is checked from the header, before decoding. (No warnings.catch_warnings here: it is not
        # thread-safe, and PIL's own DecompressionBombError still guards max_pixels=None.)
        img = _open(data, max_pixels, name)
        width, height = img.size
        if draft is not None and img.format in ("JPEG", "MPO") and min(width, height) >= 2 * draft:
            img.draft(None, (draft, draft))  # scale s = the largest of 8, 4, 2 with both sides // s >= draft
        fast = _fast_png(data, img)
        if fast is not None:
            return fast, (height, width)
        img.load()
        decoded = img.size
        img = ImageOps.exif_transpose(img)
        if img.size != decoded:  # EXIF turned it a quarter: the full size turns with it
            width, height = height, width
        return _to_rgb8(img, name), (height, width)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{name} has too many pixels to decode safely ({without_reprs(str(exc))}); downscale it before sending"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{name} is {describe(data)}, not a supported image; send {READABLE}") from exc
    except Exception as exc:  # noqa: BLE001  untrusted bytes: a damaged file must never become a 500
        if not isinstance(exc, _DAMAGE):  # Pillow raised something unusual: keep it visible to developers
            log.warning("unexpected %s while decoding %s", type(exc).__name__, name, exc_info=True)
        raise ImageDecodeError(
            f"{name} could not be decoded, it is truncated or corrupt ({without_reprs(str(exc), 'the file')})"
        ) from exc


def _fast_png(data: bytes, img: Image.Image) -> np.ndarray | None:
    """An 8-bit RGB PNG through libspng (pyspng, the optional `fast` extra): the pixels Pillow gives (PNG is
    lossless; tests/imaging/test_decode.py compares them), in 12 ms instead of 23 ms for a 900 x 900 bottle picture,
    the largest stage of /predict. None (Pillow decodes it) for every other case: other colour types or depths,
    a tRNS or eXIf chunk (transparency, EXIF orientation), or no pyspng. `_open` has checked the header, the pixel
    cap and the chunk CRCs already."""
    if img.format != "PNG" or img.mode != "RGB" or len(data) < 29 or data[24] != 8 or data[25] != 2:
        return None  # IHDR: bit depth 8, colour type 2 (truecolour)
    if b"tRNS" in data or b"eXIf" in data:
        return None  # (a match inside compressed data only sends the picture to Pillow)
    try:
        import pyspng
    except ImportError:
        return None
    pixels = pyspng.load(data)
    if pixels.dtype != np.uint8 or pixels.shape != (img.size[1], img.size[0], 3):
        return None
    return np.ascontiguousarray(pixels)


def read_image(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Decode a file; also returns the sha256 of its bytes (for the dataset fingerprint)."""
    data = Path(path).read_bytes()
    return decode_image(data, max_pixels, name=str(path)), hashlib.sha256(data).hexdigest()


def iter_images(
    paths: list[Path], workers: int = 2, prefetch: int = 32, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft: int | None = None,
) -> Iterator[tuple[Path, np.ndarray | None, str, ImageDecodeError | None]]:
    """Decode files in order on a thread pool (PIL releases the GIL), at most `prefetch` ahead of the consumer,
    so memory stays bounded however many images there are. Yields (path, image or None, sha256, error or None).
    draft: as decode_image (the builder passes the model's, so that it sees the pixels the server sees)."""

    def work(path: Path) -> tuple[Path, np.ndarray | None, str, ImageDecodeError | None]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return path, None, "", ImageDecodeError(f"{path} cannot be read ({exc})")
        digest = hashlib.sha256(data).hexdigest()
        try:
            return path, decode_image(data, max_pixels, name=str(path), draft=draft), digest, None
        except ImageDecodeError as exc:
            return path, None, digest, exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[Future] = deque()
        queue = iter(paths)
        for path in queue:
            pending.append(pool.submit(work, path))
            if len(pending) >= prefetch:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(work, nxt))
            yield result
