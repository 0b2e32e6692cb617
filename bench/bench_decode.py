"""Decode: JPEG draft mode against the full decode (time and answers), and PIL against OpenCV's imdecode for the
900 x 900 bottle PNGs. Prints tables, writes bench/results/bench_decode.json.

    python bench/bench_decode.py --index /tmp/ev/bottle/index [--cv2-path /tmp/cvlib] [--images 20]

JPEG: bottle test pictures upscaled (Lanczos) to 1,800 and 3,600 px and saved as JPEG (quality 95), decoded in full
and with draft = model.preprocess.decode_side(config) (libjpeg DCT scaling, both sides kept >= 2 x image_size), then
scored by the index: image-score and patch-score differences, decisions, and the map's size. PNG: decode_image
(Pillow) against cv2.imdecode + BGR->RGB, pixels compared. Medians of interleaved repeats, in one process.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import BOTTLE, RESULTS, machine


def median_ms(fns: dict, repeats: int) -> dict[str, float]:
    times = {k: [] for k in fns}
    for rep in range(repeats + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if rep:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="a bottle index folder")
    parser.add_argument("--images", type=int, default=20, help="bottle test pictures scored per size")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cv2-path", type=Path, help="a folder holding cv2 (pip install --target); else import cv2")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_decode.json")
    args = parser.parse_args()

    from imaging.decode import decode_image, decode_sized
    from index_store import store
    from index_store.runtime import configure_threads, serial_numpy_blas
    from model.preprocess import decode_side

    configure_threads(args.threads)
    serial_numpy_blas()
    detector = store.load(args.index).detector
    draft = decode_side(detector.config)
    paths = sorted((BOTTLE / "test").glob("*/*.png"))
    step = max(1, len(paths) // args.images)
    paths = paths[::step][: args.images]
    record: dict = {"machine": machine(), "draft": draft, "images": len(paths), "jpeg": {}, "png": {}}

    print(f"JPEG draft (draft side {draft}, {len(paths)} bottle test pictures, median of {args.repeats})")
    print("| picture | decoded at | full ms | draft ms | x | max image-score diff | max patch diff / max | "
          "decisions equal | map size |")
    print("|--:|--:|--:|--:|--:|--:|--:|:-:|--:|")
    for side in (1800, 3600):
        blobs = []
        for p in paths:
            buf = io.BytesIO()
            Image.open(p).convert("RGB").resize((side, side), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=95)
            blobs.append(buf.getvalue())
        score_diff, patch_diff, same, shape = [], [], True, None
        for blob in blobs:
            full, full_hw = decode_sized(blob)
            small, hw = decode_sized(blob, draft=draft)
            a = detector.score_batch([full])[0]
            b = detector.score_batch([small], [hw])[0]
            score_diff.append(abs(b.image_score - a.image_score) / a.image_score)
            patch_diff.append(float(np.abs(b.patch_scores - a.patch_scores).max() / a.patch_scores.max()))
            same &= a.is_anomalous == b.is_anomalous
            shape, at = detector.anomaly_map(b).shape, small.shape[:2]
            assert hw == full_hw == shape
        ms = median_ms({"full": lambda: decode_image(blobs[0]), "draft": lambda: decode_image(blobs[0], draft=draft)},
                       args.repeats)
        row = {"decoded_at": list(at), "full_ms": ms["full"], "draft_ms": ms["draft"],
               "max_image_score_rel_diff": max(score_diff), "max_patch_diff_over_max": max(patch_diff),
               "decisions_equal": bool(same), "map_hw": list(shape)}
        record["jpeg"][str(side)] = row
        print(f"| {side} x {side} | {at[1]} x {at[0]} | {ms['full']:.1f} | {ms['draft']:.1f} | "
              f"{ms['draft'] / ms['full']:.2f} | {max(score_diff):.2e} | {max(patch_diff):.2e} | {same} | "
              f"{shape[1]} x {shape[0]} |")

    if args.cv2_path:
        sys.path.insert(0, str(args.cv2_path))
    try:
        import cv2
    except ImportError:
        print("PNG: no cv2 (pass --cv2-path); skipped")
    else:
        blobs = [p.read_bytes() for p in paths[:5]]

        def cv_decode(blob: bytes) -> np.ndarray:
            bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

        equal = all(np.array_equal(cv_decode(b), decode_image(b)) for b in blobs)
        cv2.setNumThreads(1)
        ms = median_ms({"pil": lambda: [decode_image(b) for b in blobs], "cv2": lambda: [cv_decode(b) for b in blobs]},
                       args.repeats)
        pil, cv = ms["pil"] / len(blobs), ms["cv2"] / len(blobs)
        record["png"] = {"cv2": cv2.__version__, "pil_ms": pil, "cv2_ms": cv, "speedup": pil / cv,
                         "pixels_equal": equal}
        print(f"\nPNG 900 x 900 (bottle, {len(blobs)} files, median of {args.repeats}): Pillow {pil:.1f} ms, "
              f"cv2 {cv2.__version__} imdecode + BGR->RGB {cv:.1f} ms: {pil / cv:.2f} x; pixels equal: {equal}")
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
