"""patchcore-demo: the whole job on the embedded default sample, end to end.

Generates the synthetic disc data set (demo.sample), builds an index from its good images, saves it, loads it
back the way the server does, scores the test images and writes their anomaly-map overlays.

    patchcore-demo --workdir runs/demo
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from imaging import render
from index_store import store
from index_store.build import BuildOptions, build_index
from imaging.decode import list_images, read_image
from index_store.runtime import configure_threads
from demo.sample import write_sample
from model.config import PatchCoreConfig
from model.errors import PatchCoreError
from model.calibration import normalise


def run(workdir: Path, pretrained: bool = True, progress: bool = True) -> list[dict]:
    """Build, save, reload and score; returns one row per test image."""
    sample = write_sample(workdir / "sample", n_train=40, n_test_good=6, n_test_defect=4)
    config = PatchCoreConfig(pretrained=pretrained, image_size=224)
    result = build_index(list_images(sample), config, BuildOptions(name="demo-disc", progress=progress), root=sample)
    store.save_result(workdir / "index", result, force=True)
    bundle = store.load(workdir / "index")
    (workdir / "maps").mkdir(exist_ok=True)
    rows = []
    for path in sorted((sample / "test").glob("*/*.png")):
        image, _ = read_image(path)
        pred = bundle.detector.predict(image)
        view = render.overlay(image, normalise(pred.anomaly_map, bundle.metadata.calibration))
        out = workdir / "maps" / f"{path.parent.name}_{path.stem}.png"
        Image.fromarray(np.concatenate([image, view], axis=1)).save(out)
        rows.append({"image": f"{path.parent.name}/{path.name}", "defective": path.parent.name != "good",
                     "score": pred.image_score, "normalised": pred.normalised_score,
                     "anomalous": pred.is_anomalous, "overlay": str(out)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="patchcore-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--random-init", action="store_true", help="skip the pretrained weights (scores mean little)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    configure_threads(None)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        rows = run(args.workdir, pretrained=not args.random_init)
    except PatchCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'image':22s} {'truth':>9s} {'score':>7s} {'normalised':>10s}  decision")
    for r in rows:
        truth = "defect" if r["defective"] else "good"
        decision = "ANOMALOUS" if r["anomalous"] else "normal"
        print(f"{r['image']:22s} {truth:>9s} {r['score']:7.3f} {r['normalised']:10.3f}  {decision}")
    correct = sum(r["defective"] == r["anomalous"] for r in rows)
    print(f"\n{correct}/{len(rows)} decisions correct; index in {args.workdir / 'index'}, "
          f"overlays in {args.workdir / 'maps'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
