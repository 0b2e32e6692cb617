"""What the evaluation writes: OUT/CAT/scores.csv, OUT/metrics.json and OUT/results.md (the table also printed).

Formatting is pure (rows and dicts in, text out); the write_* helpers only put that text on disk.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.indexes import IndexSource
from evaluation.results import AUPRO_FPR_LIMIT, CategoryMetrics
from evaluation.runner import CategoryRun

SCORE_COLUMNS = ("image", "defect_type", "label", "image_score", "normalised_score", "is_anomalous")
TABLE_COLUMNS = ("Category", "Image AUROC", "Image F1", "Pixel AUROC", "Pixel AUPRO")
TABLE_KEYS = ("image_auroc", "image_f1_max", "pixel_auroc", "pixel_aupro")
DECISION_COLUMNS = ("Category", "Threshold", "Target FPR", "Realised FPR", "Recall", "Oracle recall at target",
                    "F1 at threshold", "F1-max", "Flagged")


@dataclass(frozen=True)
class CategoryReport:
    """One evaluated category: what metrics.json and the tables say about it."""

    name: str
    metrics: CategoryMetrics
    entry: Mapping[str, Any]  # its metrics.json object


def score_rows(run: CategoryRun, data_root: Path) -> list[dict[str, Any]]:
    """One row per test image; `image` is its path relative to the data root, scores at full float precision."""
    return [{
        "image": _relative(s.sample.image_path, data_root), "defect_type": s.sample.defect_type,
        "label": s.sample.label, "image_score": repr(s.image_score), "normalised_score": repr(s.normalised_score),
        "is_anomalous": int(s.is_anomalous),
    } for s in run.scored]


def category_entry(name: str, run: CategoryRun, metrics: CategoryMetrics, source: IndexSource,
                   seconds: Mapping[str, float]) -> dict[str, Any]:
    """The metrics.json object of one category: metrics, test-set counts, evaluation grid, index, config, timings."""
    meta = source.bundle.metadata
    labels = [s.sample.label for s in run.scored]
    return {
        **metrics.to_dict(),
        "n_test": len(labels), "n_good": labels.count(0), "n_anomalous": labels.count(1),
        "n_flagged_anomalous": sum(s.is_anomalous for s in run.scored), "has_masks": metrics.pixel_auroc is not None,
        "eval_resolution_hw": [list(shape) for shape in run.shapes],
        "index": {
            "path": str(source.bundle.path), "reused": source.reused, "name": meta.name,
            "bank_size": meta.bank_size, "embedding_dim": meta.embedding_dim, "grid_hw": list(meta.grid),
            "coreset_method": meta.coreset_method, "n_train_images": meta.provenance.n_train_images,
            "n_calibration_images": meta.provenance.n_calibration_images,
            "dataset_fingerprint": meta.provenance.dataset_fingerprint, "built_at": meta.provenance.built_at,
            "calibration": meta.calibration.to_dict(),
        },
        "config": meta.config.to_dict(),
        "timings_s": dict(seconds),
        "build_stage_seconds": dict(source.build_stage_seconds),
    }


def metrics_document(reports: Sequence[CategoryReport], averages: Mapping[str, float],
                     settings: Mapping[str, Any], run_info: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **settings,
        "aupro_fpr_limit": AUPRO_FPR_LIMIT,
        "categories": {r.name: dict(r.entry) for r in reports},
        "average": dict(averages),
        **run_info,
    }


def results_markdown(reports: Sequence[CategoryReport], averages: Mapping[str, float | None], layout: str,
                     data_root: Path, eval_size: int) -> str:
    """The results table (exact columns of TABLE_COLUMNS, 3 decimals, an Average row; "-" where a category has no
    masks) with its caption, then the table of the decisions at each index's stored threshold."""
    rows = [[r.name, *(_f(getattr(r.metrics, key)) for key in TABLE_KEYS)] for r in reports]
    rows.append(["Average", *(_f(averages[key]) for key in TABLE_KEYS)])
    grids = "; ".join(f"{r.name} {_grids(r.entry['eval_resolution_hw'])}" for r in reports)
    caption = (f"PatchCore on {layout} data at {data_root}. Image F1 = F1-max over all thresholds. Pixel metrics over "
               f"all test images (good ones included) at a bounded evaluation resolution: longer side <= {eval_size} "
               f"px, aspect kept, masks resized nearest-neighbour ({grids}); Pixel AUPRO integrated up to "
               f"{AUPRO_FPR_LIMIT:.0%} FPR. \"-\": image labels only, no masks.")
    decisions = [[r.name, f"{r.metrics.threshold:.4g}", f"{r.metrics.target_fpr:g}", _f(r.metrics.fpr_at_threshold),
                  _f(r.metrics.recall_at_threshold), _f(r.metrics.oracle_recall_at_target),
                  _f(r.metrics.image_f1_at_threshold), _f(r.metrics.image_f1_max),
                  f"{r.entry['n_flagged_anomalous']}/{r.entry['n_test']}"] for r in reports]
    decisions.append(["Average", "", "", _f(averages["fpr_at_threshold"]), _f(averages["recall_at_threshold"]),
                      _f(averages["oracle_recall_at_target"]), _f(averages["image_f1_at_threshold"]),
                      _f(averages["image_f1_max"]), ""])
    decision_caption = ("The decision (is_anomalous) at the threshold stored in each index, calibrated on good "
                        "training images only (no test data involved). Realised FPR: share of the test set's good "
                        "images flagged. Oracle recall at target: the best recall any threshold reaches on this test "
                        "set while flagging at most the target FPR of its good images.")
    return "\n".join([
        "# PatchCore evaluation", "", caption, "", markdown_table(TABLE_COLUMNS, rows), "",
        decision_caption, "", markdown_table(DECISION_COLUMNS, decisions), "",
    ])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Pipe table; the first column left-aligned, the others right-aligned, cells padded to line up in plain text."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(cells)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else (":" + "-" * (w + 1)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def write_scores_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    write_text(path, json.dumps(document, indent=2, sort_keys=False) + "\n")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _grids(shapes: Sequence[Sequence[int]]) -> str:
    return ", ".join(f"{h}x{w}" for h, w in shapes)


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()
