"""Side by side with anomalib 2.7 PatchCore on the development suite: same backbone, layers, coreset ratio and k.

    .venv/bin/python bench/compare_anomalib.py                       # all four products, both tools
    .venv/bin/python bench/compare_anomalib.py --products mvtec_ad/screw --ours runs/eval/metrics.json

Not part of CI (it installs anomalib and takes ~30-60 min on 2 cores). What it does:
1. Makes a side venv `.venv-anomalib/` (git-ignored) with anomalib 2.7.0 next to torch 2.14.1 / torchvision 0.29.1
   from local disk, unless it already has them.
2. Runs bench/anomalib_worker.py in it once per product: anomalib's Patchcore with a torchvision mobilenet_v2
   MODULE as backbone (IMAGENET1K_V1 from the offline TORCH_HOME cache, nothing is downloaded), the same layers,
   coreset ratio and num_neighbors as ours, its default pre-processing, a Folder data module with
   val_split_mode="same_as_test". The worker saves raw per-image scores and anomaly maps.
3. Gets our side: `--ours METRICS_JSON` (patchcore-evaluate's output, may repeat), else runs patchcore-evaluate per
   data root; where that fails (today: the mask-less products screw and pill_qc), it scores in-process with the
   same build + runner code the evaluator uses, and says so in the JSON ("source").
4. Computes every metric of BOTH tools with evaluation/metrics.py: image AUROC and F1-max on the raw image scores;
   pixel AUROC and AUPRO (30 % FPR) where masks exist, on the evaluator's grid (longer side <= 256 px, aspect
   kept, masks nearest-neighbour; anomalib's 256 x 256 maps are resized bilinearly onto it). anomalib's own
   reported numbers (engine.test) are kept beside them.
5. Prints one table per product and a summary with the mean row; writes bench/results/compare_anomalib.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, REPO, RESULTS, table  # noqa: E402

DATA = REPO.parent / "shared" / "data"
PRODUCTS = ("mvtec_ad/bottle", "mvtec_ad/screw", "products/pill_qc", "products/cookies")
SIDE_VENV = REPO / ".venv-anomalib"
SIDE_PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "anomalib==2.7.0")
WORKER = REPO / "bench" / "anomalib_worker.py"
EVAL_SIZE = 256  # patchcore-evaluate's default grid


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="the suite root (holds mvtec_ad/ and products/)")
    p.add_argument("--products", nargs="+", default=list(PRODUCTS), help="paths under --data")
    p.add_argument("--layers", nargs="+", default=["features.6", "features.13"])
    p.add_argument("--coreset-ratio", type=float, default=0.01)
    p.add_argument("--num-neighbors", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: all cores)")
    p.add_argument("--ours", type=Path, action="append", default=[],
                   help="patchcore-evaluate's metrics.json (repeat for several data roots); default: run it")
    p.add_argument("--work", type=Path, default=CACHE / "compare_anomalib", help="raw outputs, indexes, logs")
    p.add_argument("--rerun", action="store_true", help="rerun anomalib even where its raw outputs are cached")
    p.add_argument("--side-venv", type=Path, default=SIDE_VENV)
    p.add_argument("--anomalib-from", type=Path, metavar="JSON",
                   help="reuse anomalib's side from an earlier run's output (its metrics were computed by the same "
                        "functions); only ours is rerun. anomalib's side does not depend on our defaults")
    p.add_argument("--out", type=Path, default=RESULTS / "compare_anomalib.json")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the side venv


def ensure_side_venv(venv: Path) -> Path:
    """venv/bin/python with anomalib 2.7.0; created and installed (PyPI + local torch wheels) when missing."""
    python = venv / "bin" / "python"
    check = "import anomalib, torch, torchvision; print(anomalib.__version__, torch.__version__, torchvision.__version__)"
    want = tuple(spec.split("==")[1] for spec in ("anomalib==2.7.0", *SIDE_PACKAGES[:2]))
    if python.exists():
        probe = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
        if probe.returncode == 0 and tuple(v.split("+")[0] for v in probe.stdout.split()) == want:
            return python
    print(f"installing {' '.join(SIDE_PACKAGES)} into {venv} (a few minutes) ...", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *SIDE_PACKAGES], check=True)
    subprocess.run([str(python), "-c", check], check=True)
    return python


# ---------------------------------------------------------------- anomalib's side


def run_anomalib(python: Path, root: Path, args: argparse.Namespace, out: Path, extra: list[str] = ()) -> dict:
    """Raw outputs of one worker run (cached in `out` unless --rerun)."""
    if args.rerun or not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(python), str(WORKER), "--category-root", str(root), "--out", str(out),
               "--layers", *args.layers, "--coreset-ratio", str(args.coreset_ratio),
               "--num-neighbors", str(args.num_neighbors), "--seed", str(args.seed), *extra]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        log = out.with_suffix(".log")
        print(f"anomalib: {root.name} ({' '.join(extra) or 'defaults'}), log {log}", file=sys.stderr)
        with log.open("w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"anomalib worker failed on {root} (exit {proc.returncode}); see {log}")
    data = np.load(out)
    return {"image_paths": [str(p) for p in data["image_paths"]], "labels": data["labels"],
            "scores": data["scores"], "maps": data["maps"], "info": json.loads(str(data["info"]))}


def test_samples(root: Path) -> list:
    """The category's test samples (evaluation.datasets.Sample, mask_path None where there is no mask), sorted."""
    from evaluation.datasets import load_mvtec

    return sorted(load_mvtec(root.parent, root.name).test, key=lambda s: s.image_path)


def eval_masks(samples: list, shapes: list[tuple[int, int]]) -> list[np.ndarray] | None:
    """Ground truth on the evaluator's grid, or None when the category has no masks at all."""
    from evaluation.datasets import load_mask

    if not any(s.mask_path for s in samples):
        return None
    if any(s.label and s.mask_path is None for s in samples):
        raise SystemExit(f"some anomalous images of {samples[0].image_path.parents[2]} have masks and some not")
    return [load_mask(s.mask_path, shape) if s.mask_path else np.zeros(shape, bool) for s, shape in zip(samples, shapes)]


def image_shapes(samples: list) -> list[tuple[int, int]]:
    from PIL import Image

    from evaluation.runner import eval_shape

    shapes = []
    for s in samples:
        with Image.open(s.image_path) as im:
            shapes.append(eval_shape((im.height, im.width), EVAL_SIZE))
    return shapes


def resize_maps(maps: np.ndarray, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """anomalib's (N, S, S) maps (of the squashed picture) -> each image's evaluation grid, bilinear."""
    import torch
    import torch.nn.functional as F

    out = []
    for m, shape in zip(maps, shapes):
        x = torch.from_numpy(np.ascontiguousarray(m, np.float32))[None, None]
        out.append(F.interpolate(x, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy())
    return out


def measure(labels, scores, masks, maps, threshold: float | None = None) -> dict:
    """The same metric functions for both tools."""
    from evaluation import metrics
    from evaluation.results import AUPRO_FPR_LIMIT

    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    f1, _ = metrics.f1_max(labels, scores)
    out = {"image_auroc": metrics.image_auroc(labels, scores), "image_f1_max": f1,
           "pixel_auroc": None, "pixel_aupro": None}
    if threshold is not None:
        out["image_f1_at_stored_threshold"] = metrics.f1_at_threshold(labels, scores, threshold)
    if masks is not None:
        out["pixel_auroc"] = metrics.pixel_auroc(masks, maps)
        out["pixel_aupro"] = metrics.aupro(masks, maps, fpr_limit=AUPRO_FPR_LIMIT)
    return out


def anomalib_side(python: Path, root: Path, samples: list, args: argparse.Namespace) -> dict:
    raw = run_anomalib(python, root, args, args.work / "anomalib" / f"{root.name}.npz")
    expected = [str(s.image_path.relative_to(root)) for s in samples]
    if raw["image_paths"] != expected:
        raise SystemExit(f"anomalib's test images of {root} differ from ours; delete {args.work} and rerun")
    shapes = image_shapes(samples)
    masks = eval_masks(samples, shapes)
    maps = resize_maps(raw["maps"], shapes) if masks is not None else None
    info = raw["info"]
    return {
        **measure(raw["labels"], raw["scores"], masks, maps),
        "fit_s": info["fit_s"], "extract_s": info["extract_s"], "coreset_s": info["coreset_s"],
        "inference_ms_per_image": info["inference_ms_per_image"],
        "inference_timing": "pre-processing + forward + search + re-weighting + map, decode excluded",
        "bank_size": info["bank_size"], "n_train_images": info["n_train_images"],
        "anomalib_reported": info["anomalib_metrics"], "versions": info["versions"],
        "image_scores": dict(zip(raw["image_paths"], raw["scores"].tolist())),
    }


# ---------------------------------------------------------------- our side


def ours_from_metrics(entry: dict, root: Path, samples: list, source: str) -> dict:
    """One category of patchcore-evaluate's metrics.json (+ its scores.csv for the per-image scores)."""
    stages = entry.get("build_stage_seconds", {})
    timings = entry.get("timings_s", {})
    index = entry.get("index", {})
    per_s = timings.get("test_images_per_s")
    out = {key: entry.get(key) for key in ("image_auroc", "image_f1_max", "pixel_auroc", "pixel_aupro")}
    out.update({
        "image_f1_at_stored_threshold": entry.get("image_f1_at_calibrated_threshold"),
        "fit_s": round(sum(stages.get(k, 0.0) for k in ("extract", "coreset", "index")), 3) if stages else None,
        "calibration_s": stages.get("calibration"),
        "inference_ms_per_image": round(1e3 / per_s, 2) if per_s else None,
        "inference_timing": "decode + pre-processing + forward + search + map at the evaluation grid",
        "bank_size": index.get("bank_size"), "n_train_images": index.get("n_train_images"),
        "n_calibration_images": index.get("n_calibration_images"),
        "n_flagged_anomalous": entry.get("n_flagged_anomalous"), "config": entry.get("config"), "source": source,
    })
    return out


def run_our_evaluator(data_root: Path, names: list[str], args: argparse.Namespace) -> dict | None:
    """patchcore-evaluate on some categories of one data root -> its metrics.json, or None if it failed."""
    out = args.work / "ours" / data_root.name
    cmd = [str(Path(sys.executable).parent / "patchcore-evaluate"), "--data", str(data_root), "--layout", "mvtec",
           "--categories", *names, "--out", str(out), "--figures", "0", "--no-progress",
           "--layers", *args.layers, "--coreset-ratio", str(args.coreset_ratio), "--seed", str(args.seed)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out.mkdir(parents=True, exist_ok=True)
    log = out / "evaluate.log"
    print(f"ours: patchcore-evaluate {data_root.name} {names}, log {log}", file=sys.stderr)
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(f"  patchcore-evaluate failed (exit {proc.returncode}): {log.read_text().strip().splitlines()[-1]}",
              file=sys.stderr)
        return None
    return json.loads((out / "metrics.json").read_text())


def ours_in_process(root: Path, samples: list, args: argparse.Namespace) -> dict:
    """What patchcore-evaluate does (evaluation.indexes.build + evaluation.runner.score_category), but with
    mask-less test sets allowed; today's evaluator refuses those."""
    from evaluation.datasets import Category, images_in
    from evaluation.indexes import build
    from evaluation.runner import score_category
    from index_store.build import BuildOptions
    from model.config import PatchCoreConfig

    config = PatchCoreConfig(layers=tuple(args.layers), coreset_ratio=args.coreset_ratio, seed=args.seed)
    category = Category(root.name, tuple(images_in(root / "train" / "good")), tuple(samples))
    source = build(category, root, config, BuildOptions(name=root.name, progress=False),
                   args.work / "ours" / "in_process" / root.name / "index")
    run = score_category(category, source.bundle.detector, EVAL_SIZE, progress=False)
    has_masks = any(s.mask_path for s in samples)
    labels = [s.sample.label for s in run.scored]
    scores = [s.image_score for s in run.scored]
    meta = source.bundle.metadata
    entry = {
        **measure(labels, scores, list(run.masks) if has_masks else None, list(run.maps),
                  meta.calibration.threshold),
        "n_flagged_anomalous": sum(s.is_anomalous for s in run.scored), "config": meta.config.to_dict(),
        "build_stage_seconds": dict(source.build_stage_seconds),
        "timings_s": {"test_images_per_s": len(run.scored) / (run.seconds["score"] + run.seconds["maps"])},
        "index": {"bank_size": meta.bank_size, "n_train_images": meta.provenance.n_train_images,
                  "n_calibration_images": meta.provenance.n_calibration_images},
    }
    entry["image_f1_at_calibrated_threshold"] = entry.pop("image_f1_at_stored_threshold")
    out = ours_from_metrics(entry, root, samples, "in-process (evaluation.indexes.build + runner.score_category)")
    out["image_scores"] = {str(s.sample.image_path.relative_to(root)): s.image_score for s in run.scored}
    return out


def our_side(args: argparse.Namespace) -> dict[str, dict]:
    """product -> our metrics, from --ours files, else patchcore-evaluate, else in-process."""
    found: dict[str, dict] = {}
    for path in args.ours:
        document = json.loads(Path(path).read_text())
        for name, entry in document["categories"].items():
            found[name] = {"entry": entry, "source": f"--ours {path}"}
    by_root: dict[Path, list[str]] = {}
    for product in args.products:
        root = args.data / product
        if root.name not in found:
            by_root.setdefault(root.parent, []).append(root.name)
    for data_root, names in by_root.items():
        for name in names:  # one at a time: a mask-less category must not sink the others
            document = run_our_evaluator(data_root, [name], args)
            if document is not None:
                found[name] = {"entry": document["categories"][name], "source": "patchcore-evaluate"}
    results = {}
    for product in args.products:
        root = args.data / product
        samples = test_samples(root)
        if root.name in found:
            results[product] = ours_from_metrics(found[root.name]["entry"], root, samples, found[root.name]["source"])
        else:
            print(f"ours: {root.name} in-process (the evaluator could not run it)", file=sys.stderr)
            results[product] = ours_in_process(root, samples, args)
    return results


# ---------------------------------------------------------------- tables


ROWS = (("image AUROC", "image_auroc"), ("image F1-max", "image_f1_max"), ("pixel AUROC", "pixel_auroc"),
        ("pixel AUPRO", "pixel_aupro"), ("image F1 at stored threshold", "image_f1_at_stored_threshold"),
        ("fit s (extract + coreset)", "fit_s"), ("inference ms / image", "inference_ms_per_image"),
        ("memory bank vectors", "bank_size"), ("images in the bank", "n_train_images"))
REPORTED = {"image_auroc": "image_AUROC", "pixel_auroc": "pixel_AUROC", "image_f1_max": None}


def product_table(product: str, ours: dict, theirs: dict) -> str:
    rows = []
    for label, key in ROWS:
        reported = theirs["anomalib_reported"].get(REPORTED.get(key) or "", None)
        rows.append({"": label, "ours": _cell(ours.get(key)), "anomalib 2.7": _cell(theirs.get(key)),
                     "anomalib's own report": _cell(reported)})
    rows.append({"": "anomalib's image F1 (its threshold, fitted on the test set)", "ours": "",
                 "anomalib 2.7": "", "anomalib's own report": _cell(theirs["anomalib_reported"].get("image_F1Score"))})
    return table(rows, title=product)


def summary_table(results: dict) -> str:
    keys = ("image_auroc", "image_f1_max", "pixel_auroc", "pixel_aupro")
    rows, sums = [], {}
    for product, r in results.items():
        row = {"product": product}
        for key in keys:
            for side in ("ours", "anomalib"):
                value = r[side].get(key)
                row[f"{side} {key}"] = _cell(value)
                if value is not None:
                    sums.setdefault((side, key), []).append(value)
        rows.append(row)
    mean = {"product": "mean"}
    for key in keys:
        for side in ("ours", "anomalib"):
            values = sums.get((side, key), [])
            mean[f"{side} {key}"] = _cell(float(np.mean(values))) + ("" if len(values) == len(results) else
                                                                     f" ({len(values)})")
    rows.append(mean)
    return table(rows, title="summary (mean over products; pixel columns over products with masks)")


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    theirs = {}
    if args.anomalib_from:
        earlier = json.loads(args.anomalib_from.read_text())
        if earlier["settings"]["layers"] != args.layers or earlier["settings"]["coreset_ratio"] != args.coreset_ratio:
            raise SystemExit(f"{args.anomalib_from} was run with other settings: {earlier['settings']}")
        theirs = {p: earlier["results"][p]["anomalib"] for p in args.products}
    else:
        python = ensure_side_venv(args.side_venv)
        for product in args.products:
            root = args.data / product
            theirs[product] = anomalib_side(python, root, test_samples(root), args)
    ours = our_side(args)
    results = {p: {"ours": ours[p], "anomalib": theirs[p]} for p in args.products}
    for product, r in results.items():
        print(product_table(product, r["ours"], r["anomalib"]) + "\n")
    print(summary_table(results))
    document = {
        "what": "anomalib 2.7 PatchCore vs ours on the development suite; every metric from evaluation/metrics.py",
        "settings": {"layers": args.layers, "coreset_ratio": args.coreset_ratio, "num_neighbors": args.num_neighbors,
                     "seed": args.seed, "eval_size": EVAL_SIZE, "threads": args.threads},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "anomalib_from": str(args.anomalib_from) if args.anomalib_from else None,
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1, default=float) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
