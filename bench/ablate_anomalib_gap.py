"""Which differences between anomalib 2.7's PatchCore and ours explain anomalib's lead? Switch them one at a time.

    .venv-anomalib/bin/python bench/ablate_anomalib_gap.py                  # the four products, 3 coreset seeds
    .venv-anomalib/bin/python bench/ablate_anomalib_gap.py --products mvtec_ad/screw --seeds 0 1 2 3 4

Runs in the side venv of bench/compare_anomalib.py (anomalib 2.7.0; this script adds faiss-cpu to it if missing) and
mixes the two code bases piece by piece on the SAME backbone outputs (our BN-folded mobilenet_v2 extractor; its
agreement with anomalib's unfolded one is printed). Seven switches, each "O" (ours, today's defaults) or "A"
(anomalib 2.7 as a new user gets it):

    P  pre-processing   O: PIL bilinear resize of the uint8 picture to 256 x 256, then normalise
                        A: anomalib's read_image (float in [0, 1]) -> torchvision v2 Resize(256, antialias) -> Normalize
    Z  3x3 average pool O: padding cells not counted (count_include_pad=False)
                        A: nn.AvgPool2d(3, 1, 1): the zero padding is counted, border cells are pulled towards 0
    C  combination      O: "pool": each layer adaptively averaged to 128, then both to 128 (equal layer weights)
                        A: concatenation (32 + 96 = 128 channels)
    H  bank images      O: a seeded 10 % (at least 5) of the good images held out for calibration
                        A: every good image in the bank
    S  coreset          O: our exact greedy on the 128-d embeddings (no projection), seeded start
                        A: anomalib's: SparseRandomProjection(eps=0.9) (~300-d for 10^5 patches), torch.randint start;
                           the projection and start come from anomalib's own KCenterGreedy objects, the greedy
                           itself from model.coreset.greedy_k_center (the same selection, checked on cookies)
    R  image score      O: s* (max patch score)
                        A: re-weighted, paper eq. 7, k = 9 (anomalib's formula; model.scoring.reweight is the same)
    M  anomaly map      O: bilinear upsampling + scipy Gaussian sigma 4 (model/heatmap.py), pixel metrics only
                        A: nearest upsampling + anomalib's GaussianBlur2d (33 x 33, sigma 4, reflect)

Rows: all-O (ours), all-A (anomalib), each switch turned to A alone on ours ("+X"), each switch turned back to O
alone on anomalib ("A-X"). Image AUROC is the mean over --seeds (coreset seed; for H=O also the holdout split, as in
our builder) with its spread; every metric comes from evaluation/metrics.py. Writes
bench/results/ablate_anomalib_gap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, table  # noqa: E402  (also puts the repo on sys.path)

SWITCHES = "PZCHSRM"
NAMES = {"P": "float resize", "Z": "pad counted", "C": "concat", "H": "all images", "S": "anomalib coreset",
         "R": "re-weighting", "M": "nearest map"}


def ensure_environment() -> None:
    """Re-run under the side venv when anomalib is missing here; add faiss-cpu to the side venv when needed."""
    try:
        import anomalib  # noqa: F401
    except ImportError:
        from compare_anomalib import SIDE_VENV, ensure_side_venv

        python = ensure_side_venv(SIDE_VENV)
        os.execv(str(python), [str(python), *sys.argv])
    try:
        import faiss  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "faiss-cpu"], check=True)


def parse_args(argv):
    from compare_anomalib import DATA, PRODUCTS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--products", nargs="+", default=list(PRODUCTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--coreset-ratio", type=float, default=0.01)
    p.add_argument("--num-neighbors", type=int, default=9)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", nargs="+", default=None,
                   help="only these rows: names (ours anomalib +C A-C ...) or 7-letter switch strings (OAAAOOO)")
    p.add_argument("--out", type=Path, default=RESULTS / "ablate_anomalib_gap.json")
    p.add_argument("--report", type=Path, nargs="+", default=None,
                   help="print the tables of earlier runs' JSON files (merged per product) and exit")
    return p.parse_args(argv)


def rows() -> dict[str, str]:
    """row name -> its switch string ('O'/'A' per letter of SWITCHES)."""
    out = {"ours": "O" * 7, "anomalib": "A" * 7}
    for i, s in enumerate(SWITCHES):
        out[f"+{s} {NAMES[s]}"] = "O" * i + "A" + "O" * (6 - i)
        out[f"A-{s} {NAMES[s]}"] = "A" * i + "O" + "A" * (6 - i)
    return out


# ---------------------------------------------------------------- backbone outputs per pre-processing


@dataclass
class Product:
    root: Path
    train: list[Path]
    samples: list  # evaluation.datasets.Sample
    maps: dict  # "O"/"A" -> {"train": [(f6, f13)], "test": [(f6, f13)]} raw layer outputs, float32 tensors
    shapes: list[tuple[int, int]]
    masks: list[np.ndarray] | None
    extractor: object = None  # model.backbone.build_extractor's module
    config: object = None  # PatchCoreConfig (layers, image size)


def load_product(root: Path, extractor, config) -> Product:
    from compare_anomalib import eval_masks, image_shapes, test_samples
    from evaluation.datasets import _images_in

    samples = test_samples(root)
    shapes = image_shapes(samples)
    return Product(root, _images_in(root / "train" / "good"), samples, {}, shapes, eval_masks(samples, shapes),
                   extractor, config)


def layer_maps(product: Product, pre: str, batch: int = 16) -> dict:
    """Backbone outputs of every train and test image with pre-processing `pre`, computed once per product."""
    import torch

    if pre not in product.maps:
        config, found = product.config, {}
        for split, paths in (("train", product.train), ("test", [s.image_path for s in product.samples])):
            out = []
            for lo in range(0, len(paths), batch):
                x = preprocess(paths[lo : lo + batch], pre, config)
                with torch.inference_mode():
                    feats = product.extractor(x.contiguous(memory_format=torch.channels_last))
                out += [(feats[config.layers[0]][i].float(), feats[config.layers[1]][i].float())
                        for i in range(x.shape[0])]
            found[split] = out
        product.maps[pre] = found
    return product.maps[pre]


def preprocess(paths: list[Path], pre: str, config):
    """(B, 3, 256, 256) normalised input tensors, our way (O) or anomalib's (A)."""
    import torch

    if pre == "O":
        from imaging.decode import read_image
        from model.features import preprocess as ours

        return ours([read_image(p)[0] for p in paths], config)
    from anomalib.data.utils import read_image as anomalib_read
    from anomalib.models import Patchcore

    transform = Patchcore.configure_pre_processor().transform  # Resize(256, antialias) + Normalize
    return transform(torch.stack([anomalib_read(p, as_tensor=True) for p in paths]))


def check_extractor(extractor, config, paths: list[Path]) -> float:
    """Max |ours - anomalib's TimmFeatureExtractor(torchvision module)| relative to the layer's max, same input."""
    import torch
    import torchvision
    from anomalib.models.components import TimmFeatureExtractor

    module = torchvision.models.mobilenet_v2(weights=torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1)
    theirs = TimmFeatureExtractor(backbone=module, layers=list(config.layers)).eval()
    x = preprocess(paths, "A", config)
    with torch.inference_mode():
        a, b = theirs(x), extractor(x)
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in config.layers)


# ---------------------------------------------------------------- one configuration


def embed(pairs, pad: str, combine: str):
    """[(f6, f13)] -> (N, h, w, 128) float32: 3x3 average (pad counted or not), f13 resized, pool or concat."""
    import torch
    import torch.nn.functional as F

    from model.features import aggregate

    f6 = torch.stack([p[0] for p in pairs])
    f13 = torch.stack([p[1] for p in pairs])
    pooled = [F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=(pad == "A")) for f in (f6, f13)]
    # model.features.aggregate with patch_size 1 skips its own (pad-excluding) pooling and does the rest as ours
    out = aggregate(pooled, 1, "concat" if combine == "A" else "pool", None if combine == "A" else 128)
    return out.numpy()


def coreset(bank: np.ndarray, kind: str, ratio: float, seed: int) -> np.ndarray:
    """Selected rows of bank (N, D): ours (exact greedy, seeded start, as index_store.build) or anomalib's."""
    from model.coreset import greedy_coreset, greedy_k_center

    if kind == "O":
        k = min(bank.shape[0], max(16, int(round(ratio * bank.shape[0]))))  # index_store.build's rule
        return greedy_coreset(bank, k, projection_dim=128, seed=seed)
    import torch
    from anomalib.models.components import KCenterGreedy
    from lightning.pytorch import seed_everything

    seed_everything(seed, verbose=False)
    sampler = KCenterGreedy(embedding=torch.from_numpy(bank), sampling_ratio=ratio)
    sampler.model.fit(sampler.embedding)  # the same RNG calls, in the same order, as select_coreset_idxs
    z = sampler.model.transform(sampler.embedding).numpy()
    start = int(torch.randint(high=sampler.n_observations, size=(1,)).squeeze())
    return greedy_k_center(z, sampler.coreset_size, start)


def evaluate(product: Product, switches: str, seed: int, args, cache: dict) -> dict:
    from evaluation.runner import EvaluationError  # noqa: F401  (our evaluation package must import)
    from compare_anomalib import measure, resize_maps
    from index_store.build import split_holdout
    from model import heatmap, knn, scoring
    from model.config import IndexConfig, PatchCoreConfig
    from model.detector import Detector

    p, z, c, h, s, r, m = switches
    key = (p, z, c)
    if key not in cache:
        maps = layer_maps(product, p)
        cache[key] = (embed(maps["train"], z, c), embed(maps["test"], z, c))
    train, test = cache[key]
    keep = np.arange(len(product.train))
    if h == "O":
        bank_paths, _ = split_holdout(product.train, 0.1, seed)
        kept = set(bank_paths)
        keep = np.array([i for i, path in enumerate(product.train) if path in kept])
    rows = train[keep].reshape(-1, train.shape[-1])
    t = time.perf_counter()
    picked = coreset(rows, s, args.coreset_ratio, seed)
    coreset_s = time.perf_counter() - t
    config = PatchCoreConfig(aggregation="concat" if c == "A" else "pool", reweight=(r == "A"),
                             num_neighbors=args.num_neighbors)
    index = knn.build_index(np.ascontiguousarray(rows[picked]), IndexConfig(), 0)
    detector = Detector(config, SimpleNamespace(dim=rows.shape[1]), index, scoring.calibrate(np.array([0.0, 1.0])))
    patch, nn_ids = detector.patch_scores(test)
    scores = detector.image_scores(test, patch, nn_ids)
    labels = [smp.label for smp in product.samples]
    maps = None
    if product.masks is not None:
        if m == "O":
            maps = [heatmap.anomaly_map(ps, shape, config) for ps, shape in zip(patch, product.shapes)]
        else:
            import torch
            from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator

            generator = AnomalyMapGenerator()
            square = generator(torch.from_numpy(patch)[:, None], (256, 256))[:, 0].numpy()
            maps = resize_maps(square, product.shapes)
    out = measure(labels, scores, product.masks, maps)
    worst = patch.reshape(patch.shape[0], -1).argmax(axis=1)
    hh, ww = patch.shape[1:]
    on_border = np.isin(worst // ww, (0, hh - 1)) | np.isin(worst % ww, (0, ww - 1))
    good = np.asarray(labels) == 0
    out["max_patch_on_border_good"] = float(on_border[good].mean())  # outer ring of the patch grid
    out["max_patch_on_border_anomalous"] = float(on_border[~good].mean())
    out.update({"bank_size": int(picked.size), "n_bank_images": int(keep.size), "coreset_s": round(coreset_s, 2)})
    return out


def check_coreset_equivalence(product: Product, args) -> bool:
    """anomalib's KCenterGreedy.select_coreset_idxs == our reproduction (same seed) on the A embeddings."""
    import torch
    from anomalib.models.components import KCenterGreedy
    from lightning.pytorch import seed_everything

    bank = embed(layer_maps(product, "A")["train"], "A", "A").reshape(-1, 128)
    seed_everything(0, verbose=False)
    theirs = KCenterGreedy(embedding=torch.from_numpy(bank), sampling_ratio=args.coreset_ratio).select_coreset_idxs()
    mine = coreset(bank, "A", args.coreset_ratio, 0).tolist()
    return theirs == mine


# ---------------------------------------------------------------- main


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in ("image_auroc", "image_f1_max", "pixel_auroc", "pixel_aupro"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = float(np.mean(values))
            out[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    out["per_seed_image_auroc"] = [r["image_auroc"] for r in runs]
    border = [r["max_patch_on_border_good"] for r in runs if "max_patch_on_border_good" in r]  # older runs lack it
    if border:
        out["max_patch_on_border_good"] = float(np.mean(border))
    return out


def report(paths: list[Path]) -> int:
    """Tables of saved runs, merged: each row's runs are pooled by coreset seed over the files (same seed: one run)."""
    pooled: dict = {}  # product -> row -> {"switches", "by_seed": {seed: run}}
    for path in paths:
        document = json.loads(Path(path).read_text())
        for product, results in document["products"].items():
            for row, r in results.items():
                entry = pooled.setdefault(product, {}).setdefault(row, {"switches": r["switches"], "by_seed": {}})
                entry["by_seed"].update(zip(document["seeds"], r["runs"]))
    merged = {"products": {product: {row: {"switches": e["switches"], **summarise(list(e["by_seed"].values())),
                                           "seeds": sorted(e["by_seed"])}
                                     for row, e in rows_.items()}
                           for product, rows_ in pooled.items()}}
    for product, results in merged["products"].items():
        print(product_table(product, results) + "\n")
    print(effects_table(merged))
    print("\n(rows pool every seed found for them; rows with different seed sets are compared as they are)")
    return 0


def main(argv=None) -> int:
    if "--report" in (argv if argv is not None else sys.argv):
        return report(parse_args(argv).report)
    ensure_environment()
    import torch

    from index_store.runtime import configure_threads
    from model.backbone import build_extractor
    from model.config import PatchCoreConfig

    args = parse_args(argv)
    configure_threads(args.threads)
    started = time.perf_counter()
    config = PatchCoreConfig()
    extractor = build_extractor(config, torch.device("cpu"))
    chosen = {k: v for k, v in rows().items() if args.rows is None or k.split()[0] in args.rows}
    for custom in args.rows or []:  # a 7-letter O/A string is a row of its own
        if len(custom) == len(SWITCHES) and set(custom) <= {"O", "A"} and custom not in chosen.values():
            chosen[custom] = custom
    document = {"switches": {s: NAMES[s] for s in SWITCHES}, "seeds": args.seeds,
                "coreset_ratio": args.coreset_ratio, "num_neighbors": args.num_neighbors, "products": {}}
    for product_name in args.products:
        root = args.data / product_name
        product = load_product(root, extractor, config)
        if "extractor_rel_diff" not in document:
            document["extractor_rel_diff"] = check_extractor(extractor, config, product.train[:4])
        if "coreset_equivalence" not in document and root.name == "cookies":
            document["coreset_equivalence"] = check_coreset_equivalence(product, args)
        cache: dict = {}
        results = {}
        for name, switches in chosen.items():
            if product.masks is None and name.split()[0] in ("+M", "A-M"):
                continue  # the map changes pixel metrics only, and this product has no masks
            runs = [evaluate(product, switches, seed, args, cache) for seed in args.seeds]
            results[name] = {"switches": switches, **summarise(runs), "runs": runs}
            print(f"  {name:24s} {switches}  image AUROC {results[name]['image_auroc']:.3f} "
                  f"± {results[name].get('image_auroc_sd', 0):.3f}", file=sys.stderr)
        document["products"][product_name] = results
        print(product_table(product_name, results) + "\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")  # after each product: partial runs keep it
    print(effects_table(document))
    document["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nextractor agreement (max relative difference): {document.get('extractor_rel_diff')}; "
          f"anomalib coreset reproduced exactly: {document.get('coreset_equivalence')}; wrote {args.out}")
    return 0


def product_table(name: str, results: dict) -> str:
    base = results.get("ours", {}).get("image_auroc")
    rows_out = []
    for row, r in results.items():
        rows_out.append({
            "row": row, "PZCHSRM": r["switches"], "image AUROC": f"{r['image_auroc']:.3f} ± {r['image_auroc_sd']:.3f}",
            "Δ vs ours": f"{r['image_auroc'] - base:+.3f}" if base is not None else "",
            "image F1-max": f"{r['image_f1_max']:.3f}",
            "pixel AUROC": f"{r['pixel_auroc']:.3f}" if "pixel_auroc" in r else "–",
            "pixel AUPRO": f"{r['pixel_aupro']:.3f}" if "pixel_aupro" in r else "–",
            "good: max patch on border": f"{r['max_patch_on_border_good']:.2f}" if 'max_patch_on_border_good' in r else "",
        })
    return table(rows_out, title=f"{name}: image AUROC mean ± sd over coreset seeds")


def effects_table(document: dict) -> str:
    """Per switch: image AUROC change when turned on alone in ours, and lost when turned off alone in anomalib's."""
    lines = []
    for s in SWITCHES:
        row = {"switch": f"{s} {NAMES[s]}"}
        alone, dropped = [], []
        for product, results in document["products"].items():
            short = Path(product).name
            if f"+{s} {NAMES[s]}" in results and "ours" in results:
                d = results[f"+{s} {NAMES[s]}"]["image_auroc"] - results["ours"]["image_auroc"]
                row[f"{short} alone"] = f"{d:+.3f}"
                alone.append(d)
            if f"A-{s} {NAMES[s]}" in results and "anomalib" in results:
                d = results["anomalib"]["image_auroc"] - results[f"A-{s} {NAMES[s]}"]["image_auroc"]
                row[f"{short} in anomalib"] = f"{d:+.3f}"
                dropped.append(d)
        row["mean alone"] = f"{np.mean(alone):+.3f}" if alone else ""
        row["mean in anomalib"] = f"{np.mean(dropped):+.3f}" if dropped else ""
        lines.append(row)
    columns = list(dict.fromkeys(key for row in lines for key in row))
    return table(lines, columns, title="effect of each switch on image AUROC: '+X' = ours with X alone minus ours; "
                              "'A-X' = anomalib minus anomalib without X")


if __name__ == "__main__":
    raise SystemExit(main())
