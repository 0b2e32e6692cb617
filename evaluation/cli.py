"""patchcore-evaluate: build (or reuse) one index per category, score its test set, write metrics, tables, figures.

    patchcore-evaluate --data ../shared/data/mvtec_ad --layout mvtec --categories bottle --out runs/eval

Writes OUT/CAT/index/ (unless --index is given), OUT/CAT/scores.csv, OUT/CAT/figures/*.png, OUT/metrics.json and
OUT/results.md, and prints the results table. Model options are the same as patchcore-build-index's.
Exit codes: 0 done, 1 evaluation failed (the message says why and what to do), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from evaluation import figures, indexes, report
from evaluation.datasets import LAYOUTS, Category, DatasetError, list_categories, load_category
from evaluation.folder_layout import FolderSpec, load_folder
from evaluation.results import average, compute_metrics
from evaluation.runner import MIN_EVAL_SIZE, EvaluationError, score_category
from index_store.build import BuildOptions
from index_store.cli import add_calibration_arguments, add_model_arguments, config_from_args
from index_store.runtime import configure_threads, peak_rss_mb
from model.config import PatchCoreConfig
from model.errors import PatchCoreError

log = logging.getLogger("patchcore")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="patchcore-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="data set root (the folder holding the categories)")
    parser.add_argument("--layout", choices=sorted([*LAYOUTS, "folder"]), required=True,
                        help="how the data set is laid out (folder: see the 'folder layout' options)")
    parser.add_argument("--categories", nargs="+", help="categories to evaluate (default: every one found)")
    parser.add_argument("--out", type=Path, required=True, help="folder for indexes, scores, metrics and figures")
    parser.add_argument("--index", type=Path, help="reuse: an index folder (one category) or a parent of one per "
                                                   "category (e.g. an earlier --out); default: build from train")
    parser.add_argument("--eval-size", type=int, default=256, help="longer side of the evaluation grid (pixels)")
    parser.add_argument("--figures", type=int, default=3, help="sample figures per category (0: none)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--runtime", default="auto", choices=("auto", "onnx", "torch"),
                        help="extractor runtime of a reused --index (default auto: onnx when it has extractor.onnx)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch, OpenMP, FAISS and BLAS threads (default: all cores)")
    parser.add_argument("--no-progress", action="store_true")
    add_calibration_arguments(parser, calibration_data=False)
    f = parser.add_argument_group("folder layout", "--layout folder: --data holds a folder of good images and one "
                                  "folder per defect kind, masks optional (anomalib Folder's arguments)")
    f.add_argument("--normal-dir", default="good", help="the good images (default: good)")
    f.add_argument("--abnormal-dir", action="append", default=[], help="a defect folder (repeat; default: every "
                   "other image folder)")
    f.add_argument("--normal-test-dir", help="good test images (default: --test-split-ratio of --normal-dir)")
    f.add_argument("--mask-dir", help="masks, matched by image stem (default: masks/ or ground_truth/ if present; "
                   "'' for image labels only)")
    f.add_argument("--test-split-ratio", type=float, default=0.2, help="good images moved to the test set")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def folder_spec(args: argparse.Namespace) -> FolderSpec:
    return FolderSpec(normal_dir=args.normal_dir, abnormal_dirs=tuple(args.abnormal_dir),
                      normal_test_dir=args.normal_test_dir, mask_dir=args.mask_dir,
                      test_split_ratio=args.test_split_ratio, seed=args.seed)


def load(args: argparse.Namespace, name: str) -> tuple[Category, Path]:
    """The category and the folder its paths are reported relative to."""
    if args.layout == "folder":
        return load_folder(args.data, folder_spec(args)), args.data
    return load_category(args.data, args.layout, name), args.data / name


def resolve_categories(root: Path, layout: str, requested: list[str] | None) -> list[str]:
    """The requested categories (default: all found), each checked to exist before any work starts."""
    if layout == "folder":
        if requested and requested != [root.name]:
            raise DatasetError(f"--layout folder evaluates one product, named after --data ({root.name!r}); drop "
                               "--categories")
        return [root.name]
    available = list_categories(root, layout)
    if not available:
        raise DatasetError(f"no {layout} categories found under {root}; check --data and --layout")
    unknown = [name for name in requested or [] if name not in available]
    if unknown:
        raise DatasetError(f"unknown categories {unknown} under {root}; available categories: {available}")
    return list(dict.fromkeys(requested)) if requested else available


def evaluate_category(name: str, args: argparse.Namespace, config: PatchCoreConfig,
                      n_categories: int) -> report.CategoryReport:
    """Index (built or reused) -> scores.csv, figures and the category's metrics."""
    started = time.perf_counter()
    category, root = load(args, name)
    out = args.out / name
    if args.index is not None:
        source = indexes.reuse(indexes.find_index_dir(args.index, name, n_categories), config, args.device,
                               args.runtime)
    else:
        options = BuildOptions(name=name, device=args.device, batch_size=args.batch_size,
                               calibration_images=args.calibration_images, target_fpr=args.target_fpr,
                               threshold_rule=args.threshold_rule,
                               progress=not args.no_progress)
        log.info("%s: building an index from %d good training images", name, len(category.train))
        source = indexes.build(category, root, config, options, out / "index")
    log.info("%s: scoring %d test images", name, len(category.test))
    chosen = figures.pick_samples(category.test, args.figures)
    run = score_category(category, source.bundle.detector, args.eval_size, args.batch_size,
                         keep={s.image_path for s in chosen}, progress=not args.no_progress)
    report.write_scores_csv(out / "scores.csv", report.score_rows(run, args.data))
    t = time.perf_counter()
    calibration = source.bundle.metadata.calibration
    metrics = compute_metrics(run, calibration.threshold, calibration.target_fpr, category.has_masks, name)
    metric_seconds = time.perf_counter() - t
    t = time.perf_counter()
    figures.write_figures(run, source.bundle.metadata.calibration, out / "figures")
    seconds = {"index": source.seconds, **run.seconds, "metrics": round(metric_seconds, 3),
               "figures": round(time.perf_counter() - t, 3), "total": round(time.perf_counter() - started, 3),
               "test_images_per_s": round(len(run.scored) / max(run.seconds["score"] + run.seconds["maps"], 1e-9), 2)}
    log.info("%s: image AUROC %.3f, pixel AUROC %s, recall %.3f at realised FPR %.3f (%.1f s)", name,
             metrics.image_auroc, "-" if metrics.pixel_auroc is None else f"{metrics.pixel_auroc:.3f}",
             metrics.recall_at_threshold, metrics.fpr_at_threshold, seconds["total"])
    return report.CategoryReport(name, metrics, report.category_entry(name, run, metrics, source, seconds))


def write_outputs(args: argparse.Namespace, reports: list[report.CategoryReport], started: float,
                  threads: int) -> str:
    """OUT/metrics.json and OUT/results.md for the categories done so far; returns the Markdown."""
    averages = average([r.metrics for r in reports])
    settings = {"data": str(args.data), "layout": args.layout, "eval_size": args.eval_size,
                "eval_resolution": f"longer side <= {args.eval_size} px, aspect kept, masks nearest-neighbour",
                "index": str(args.index) if args.index else None}
    run_info = {"timings_s": {"total": round(time.perf_counter() - started, 3)},
                "peak_rss_mb": round(peak_rss_mb(), 1), "threads": threads}
    report.write_json(args.out / "metrics.json", report.metrics_document(reports, averages, settings, run_info))
    markdown = report.results_markdown(reports, averages, args.layout, args.data, args.eval_size)
    report.write_text(args.out / "results.md", markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    started = time.perf_counter()
    try:
        _check_numbers(args)
        config = config_from_args(args)
        threads = configure_threads(args.threads)
        names = resolve_categories(args.data, args.layout, args.categories)
        reports: list[report.CategoryReport] = []
        for name in names:
            reports.append(evaluate_category(name, args, config, len(names)))
            markdown = write_outputs(args, reports, started, threads)  # rewritten after each category: partial runs keep it
    except (PatchCoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(markdown)
    print(f"wrote {args.out / 'results.md'}, {args.out / 'metrics.json'} and per-category scores.csv / figures/ "
          f"({time.perf_counter() - started:.1f} s, peak RSS {peak_rss_mb():.0f} MiB)")
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    """Fail before any index is built."""
    if args.eval_size < MIN_EVAL_SIZE:
        raise EvaluationError(f"--eval-size must be >= {MIN_EVAL_SIZE} pixels, got {args.eval_size}")
    if args.batch_size < 1:
        raise EvaluationError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.figures < 0:
        raise EvaluationError(f"--figures must be >= 0, got {args.figures}")
    if args.threads is not None and args.threads < 1:
        raise EvaluationError(f"--threads must be >= 1, got {args.threads}")


if __name__ == "__main__":
    raise SystemExit(main())
