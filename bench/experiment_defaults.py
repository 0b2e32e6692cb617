"""Choosing the default model settings across the whole development suite (../shared/data), never on one product.

    python bench/experiment_defaults.py                 # every setting below, every product, 3 coreset seeds
    python bench/experiment_defaults.py --quick         # 1 seed, fewer settings

Every setting builds its memory bank from ALL training images of each product (the builder's behaviour), scores
the test set with the product's own functions, and reports image AUROC (mean over coreset seeds: at 1 % the seed
alone moves screw by about +-0.02) and, where masks exist, pixel AUROC and AUPRO (seed 0). One table per product,
then the mean over the four, with the change against the reference row (today's defaults before this experiment).

Settings are varied one factor at a time from the reference, plus the combinations the single factors point to:
aggregation (pool / concat), the 3x3 average's border (zero padding counted or excluded), re-weighting (eq. 7) and
its k, coreset ratio, resolution, non-square pictures (squash / keep the aspect) and the layer pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import suite  # noqa: E402

from evaluation import metrics  # noqa: E402

F6_13 = ("features.6", "features.13")
POOL = suite.Features(aggregation="pool")
REFERENCE = "reference: pool, exclude, 256, 1 %"  # the defaults before this experiment (schema 1)
# name -> (feature setting, model options, coreset ratio)
SETTINGS = {
    REFERENCE: (suite.Features(aggregation="pool", padding="exclude"), {}, 0.01),
    "zero padding": (POOL, {}, 0.01),
    "zero padding + reweight k=9": (POOL, {"reweight": True, "num_neighbors": 9}, 0.01),
    "zero padding + reweight k=3": (POOL, {"reweight": True, "num_neighbors": 3}, 0.01),
    "zero padding, concat": (suite.Features(aggregation="concat"), {}, 0.01),
    "concat, exclude": (suite.Features(aggregation="concat", padding="exclude"), {}, 0.01),
    "zero padding, 10 %": (POOL, {}, 0.10),
    "zero padding, 224": (suite.Features(aggregation="pool", image_size=224), {}, 0.01),
    "zero padding, 320": (suite.Features(aggregation="pool", image_size=320), {}, 0.01),
    "zero padding, 256 -> 224 crop": (suite.Features(aggregation="pool", crop_size=224), {}, 0.01),
    "zero padding, keep aspect": (suite.Features(aggregation="pool", aspect="keep"), {}, 0.01),
    "zero padding, f6+f10": (suite.Features(aggregation="pool", layers=("features.6", "features.10")), {}, 0.01),
    "zero padding, f6+f16": (suite.Features(aggregation="pool", layers=("features.6", "features.16")), {}, 0.01),
    "zero padding, f4+f13": (suite.Features(aggregation="pool", layers=("features.4", "features.13")), {}, 0.01),
    # the same factors varied from concatenation, which the rows above favour
    "concat + reweight k=9": (suite.Features(aggregation="concat"), {"reweight": True, "num_neighbors": 9}, 0.01),
    "concat, 10 %": (suite.Features(aggregation="concat"), {}, 0.10),
    "concat, 224": (suite.Features(aggregation="concat", image_size=224), {}, 0.01),
    "concat, 320": (suite.Features(aggregation="concat", image_size=320), {}, 0.01),
    "concat, keep aspect": (suite.Features(aggregation="concat", aspect="keep"), {}, 0.01),
    "concat, f6+f16": (suite.Features(aggregation="concat", layers=("features.6", "features.16")), {}, 0.01),
    "concat, f4+f13": (suite.Features(aggregation="concat", layers=("features.4", "features.13")), {}, 0.01),
}
QUICK = (REFERENCE, "zero padding", "zero padding, concat", "zero padding + reweight k=9")


def evaluate(name: str, features: suite.Features, model: dict, ratio: float, seeds: list[int]) -> dict:
    cat = suite.load_product(name)
    t = time.perf_counter()
    train, _ = suite.embed(list(cat.train), features)
    test, sizes = suite.embed([s.image_path for s in cat.test], features)
    extract_s = time.perf_counter() - t
    labels = np.array([s.label for s in cat.test])
    masks = suite.masks_on_eval_grid(cat, sizes)
    aurocs, row = [], {"product": name}
    for seed in seeds:
        config = features.config(seed=seed, **model)
        bank = suite.build_bank(train, config, ratio)
        scores, patches = suite.image_scores(bank, test)
        aurocs.append(metrics.image_auroc(labels, scores))
        if seed == seeds[0]:
            row["coreset_s"] = round(bank.seconds, 2)
            if masks is not None:
                maps = suite.maps_on_eval_grid(patches, sizes, features)
                row["pixel_auroc"] = metrics.pixel_auroc(masks, maps)
                row["pixel_aupro"] = metrics.aupro(masks, maps, fpr_limit=0.3)
    row.update(seeds=len(seeds), image_auroc=float(np.mean(aurocs)), image_auroc_min=float(np.min(aurocs)),
               image_auroc_max=float(np.max(aurocs)), extract_s=round(extract_s, 1))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", nargs="+", default=list(suite.PRODUCTS))
    parser.add_argument("--settings", nargs="+", help="names from SETTINGS (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--name", default="experiment_defaults",
                        help="results go to bench/results/NAME.json (rows so far: NAME_partial.json)")
    parser.add_argument("--report", nargs="+", type=Path, metavar="JSON",
                        help="no runs: merge the rows of these result files and print the tables")
    args = parser.parse_args()
    if args.report:
        rows = []
        for path in args.report:
            record = json.loads(path.read_text())
            rows += [{**r, "seeds": r.get("seeds", len(record["seeds"]))} for r in record["rows"]]
        names = list(dict.fromkeys(r["setting"] for r in rows))
        products = list(dict.fromkeys(r["product"] for r in rows))
        report(rows, products, names, args.name, seeds=None)
        return
    common.setup_threads(args.threads)
    names = args.settings or (QUICK if args.quick else list(SETTINGS))
    seeds = list(range(1 if args.quick else args.seeds))
    rows = []
    partial = common.RESULTS / f"{args.name}_partial.json"
    partial.parent.mkdir(parents=True, exist_ok=True)
    for setting in names:
        features, model, ratio = SETTINGS[setting]
        for product in args.products:
            row = {"setting": setting, **evaluate(product, features, model, ratio, seeds)}
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            partial.write_text(json.dumps({"seeds": seeds, "rows": rows}, indent=1) + "\n")  # survives a kill
    report(rows, args.products, names, args.name, seeds)


def report(rows: list[dict], products: list[str], names: list[str], name: str, seeds: list[int] | None) -> None:
    summary = summarise(rows, products, names)
    for product in products:
        print(common.table([r for r in rows if r["product"] == product], title=product,
                           columns=["setting", "seeds", "image_auroc", "image_auroc_min", "image_auroc_max", "pixel_auroc",
                                    "pixel_aupro", "coreset_s"]))
    print(common.table(summary, title="Mean over the suite (image AUROC over seeds; pixel metrics over the products "
                                      "with masks)"))
    common.write_json(name, {"seeds": seeds, "rows": rows, "summary": summary, "machine": common.machine()})


def summarise(rows: list[dict], products: list[str], names: list[str]) -> list[dict]:
    out = []
    ref = [r for r in rows if r["setting"] == REFERENCE]
    for setting in names:
        mine = [r for r in rows if r["setting"] == setting]
        entry = {"setting": setting, "mean_image_auroc": float(np.mean([r["image_auroc"] for r in mine]))}
        if ref:
            deltas = {r["product"]: r["image_auroc"] - q["image_auroc"] for r in mine for q in ref
                      if q["product"] == r["product"]}
            entry["vs_reference"] = entry["mean_image_auroc"] - float(np.mean([q["image_auroc"] for q in ref]))
            entry["worst_product_change"] = min(deltas.values())
        pix = [r["pixel_auroc"] for r in mine if "pixel_auroc" in r]
        pro = [r["pixel_aupro"] for r in mine if "pixel_aupro" in r]
        entry["mean_pixel_auroc"] = float(np.mean(pix)) if pix else None
        entry["mean_pixel_aupro"] = float(np.mean(pro)) if pro else None
        out.append(entry)
    return out


if __name__ == "__main__":
    main()
