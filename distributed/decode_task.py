"""The read + decode step of a build on Ray, in a module of its own: Ray imports a task's module in every worker
process that runs it, and this one needs neither torch nor FAISS (about 1 GB less per decode worker)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from imaging.decode import ImageDecodeError, decode_image


def decode_row(row: dict[str, Any], max_pixels: int | None, draft: int | None = None) -> dict[str, Any]:
    """Read and decode one file where this task runs (draft: model.preprocess.decode_side, as the local builder);
    an unreadable one comes back with its error."""
    t = time.perf_counter()
    path, image, digest, error = row["path"], np.zeros((1, 1, 3), np.uint8), "", ""
    try:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        image = decode_image(data, max_pixels, name=path, draft=draft)
    except OSError as exc:
        error = f"{path} cannot be read ({exc})"
    except ImageDecodeError as exc:
        error = str(exc)
    return {"image_id": row["image_id"], "sha256": digest, "error": error, "image": image,
            "decode_s": time.perf_counter() - t}
