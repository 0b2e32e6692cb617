"""Run anomalib 2.7 PatchCore on one MVTec-form category; write its raw per-image scores and anomaly maps (.npz).

Runs INSIDE the side venv made by bench/compare_anomalib.py (.venv-anomalib: anomalib 2.7.0, torch 2.14.1,
torchvision 0.29.1); it imports nothing from this repository, so the two environments never mix. The parent computes
every metric from the raw outputs with evaluation/metrics.py, so both tools are measured by the same code.

"As a new user would": Patchcore(backbone=<torchvision mobilenet_v2 module>, layers, coreset_sampling_ratio,
num_neighbors) with its default pre-processor (Resize 256x256, antialias, ImageNet normalisation, no crop), a Folder
data module with val_split_mode="same_as_test" (anomalib's F1-adaptive threshold and min-max normalisation are then
fitted on the test set, which is what its own numbers use), Engine defaults. The backbone weights come from
torchvision's offline cache (TORCH_HOME, seeded by patchcore-fetch-weights): nothing is downloaded.

The ablation flags (--pool-pad exclude, --exclude-train, --num-neighbors 1, --center-crop, --image-size) switch
single pieces of anomalib's pipeline; bench/ablate_anomalib_gap.py uses them.

    .venv-anomalib/bin/python bench/anomalib_worker.py --category-root ../shared/data/mvtec_ad/screw --out x.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--category-root", type=Path, required=True, help="MVTec-form folder: train/good, test/*")
    p.add_argument("--out", type=Path, required=True, help="the .npz to write")
    p.add_argument("--layers", nargs="+", default=["features.6", "features.13"])
    p.add_argument("--coreset-ratio", type=float, default=0.01)
    p.add_argument("--num-neighbors", type=int, default=9, help="anomalib's k of the re-weighting; 1 turns it off")
    p.add_argument("--seed", type=int, default=0, help="lightning seed_everything (coreset start + projection)")
    p.add_argument("--num-workers", type=int, default=2, help="data loader workers (anomalib's default is 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--image-size", type=int, default=None, help="pre-processor resize (default: anomalib's 256)")
    p.add_argument("--center-crop", type=int, default=None, help="pre-processor centre crop (default: none)")
    p.add_argument("--pool-pad", choices=("include", "exclude"), default="include",
                   help="3x3 average pool: anomalib counts the zero padding (include, its default)")
    p.add_argument("--exclude-train", type=Path, default=None,
                   help="text file of train/good file names to leave out of the memory bank (one a line)")
    p.add_argument("--no-engine-test", action="store_true",
                   help="skip engine.test (anomalib's own metrics and visualisations): faster ablations")
    p.add_argument("--work-dir", type=Path, default=None, help="anomalib's default_root_dir (default: next to --out)")
    return p.parse_args(argv)


def category_dirs(root: Path) -> dict:
    """Folder arguments for one MVTec-form category; masks only when ground_truth/ exists."""
    defects = sorted(d.name for d in (root / "test").iterdir() if d.is_dir() and d.name != "good")
    masks = [root / "ground_truth" / d for d in defects if (root / "ground_truth" / d).is_dir()]
    if masks and len(masks) != len(defects):
        raise SystemExit(f"{root}: ground_truth/ lacks folders for some of {defects}")
    return {
        "normal_dir": root / "train" / "good",
        "abnormal_dir": [root / "test" / d for d in defects],
        "normal_test_dir": root / "test" / "good",
        "mask_dir": masks or None,
    }


def backbone_module():
    """torchvision mobilenet_v2 with IMAGENET1K_V1 from the offline cache; refuses to download."""
    import torch.hub
    import torchvision

    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise SystemExit(f"{cached} is missing: seed it with .venv/bin/patchcore-fetch-weights (same TORCH_HOME)")
    return torchvision.models.mobilenet_v2(weights=weights)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from lightning.pytorch import seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed, workers=True)
    root = args.category_root.resolve()
    work = (args.work_dir or args.out.with_suffix("")).resolve()
    dirs = category_dirs(root)
    if args.exclude_train is not None:
        dirs["normal_dir"] = _train_subset(dirs["normal_dir"], args.exclude_train, work / "train_subset")
    if dirs["mask_dir"]:
        dirs["mask_dir"] = _mask_links(dirs["abnormal_dir"], dirs["mask_dir"], work / "masks")

    pre_processor = True
    if args.image_size is not None or args.center_crop is not None:
        size = args.image_size or 256
        crop = (args.center_crop, args.center_crop) if args.center_crop else None
        pre_processor = Patchcore.configure_pre_processor(image_size=(size, size), center_crop_size=crop)
    model = Patchcore(backbone=backbone_module(), layers=args.layers, coreset_sampling_ratio=args.coreset_ratio,
                      num_neighbors=args.num_neighbors, pre_processor=pre_processor,
                      visualizer=not args.no_engine_test)
    if args.pool_pad == "exclude":
        model.model.feature_pooler = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    # Time the fit up to the end of the coreset (engine.fit then also runs a validation pass over the test set).
    marks: dict[str, float] = {}
    original_fit = model.fit

    def timed_fit() -> None:
        marks["extract_done"] = time.perf_counter()
        original_fit()
        marks["coreset_done"] = time.perf_counter()

    model.fit = timed_fit
    datamodule = Folder(name=root.name, root=root, val_split_mode="same_as_test", num_workers=args.num_workers,
                        **dirs)
    engine = Engine(default_root_dir=work, logger=False, enable_progress_bar=False)
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_wall = time.perf_counter() - t0
    own_metrics = {}
    if not args.no_engine_test:
        results = engine.test(model=model, datamodule=datamodule, verbose=False)
        own_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}

    paths, labels, scores, maps, seconds = raw_outputs(model, datamodule)
    np.savez(
        args.out, image_paths=np.array([str(Path(p).relative_to(root)) for p in paths]),
        labels=np.asarray(labels, np.int64), scores=np.asarray(scores, np.float64),
        maps=np.stack(maps).astype(np.float32),
        info=json.dumps({
            "anomalib_metrics": own_metrics,
            "bank_size": int(model.model.memory_bank.shape[0]),
            "n_train_images": len(datamodule.train_data),
            "fit_s": round(marks["coreset_done"] - t0, 3),
            "extract_s": round(marks["extract_done"] - t0, 3),
            "coreset_s": round(marks["coreset_done"] - marks["extract_done"], 3),
            "engine_fit_wall_s": round(fit_wall, 3),
            "inference_ms_per_image": round(1e3 * seconds / max(len(paths), 1), 2),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "versions": _versions(),
        }),
    )
    print(f"wrote {args.out} ({len(paths)} test images, bank {model.model.memory_bank.shape[0]})", file=sys.stderr)
    return 0


def raw_outputs(model, datamodule):
    """Raw (un-normalised) image scores and anomaly maps of every test image, from the same pre-processing and
    torch model that engine.test uses, but before anomalib's post-processor (whose min-max clamp makes ties).
    Timed from the decoded batch to the maps: pre-processing + backbone + search + re-weighting + map."""
    import torch

    model.eval()
    transform = model.pre_processor.transform
    paths, labels, scores, maps, seconds = [], [], [], [], 0.0
    with torch.inference_mode():
        for batch in datamodule.test_dataloader():
            t = time.perf_counter()
            out = model.model(transform(batch.image))
            seconds += time.perf_counter() - t
            paths += list(batch.image_path)
            labels += [int(x) for x in batch.gt_label]
            scores += [float(x) for x in out.pred_score.reshape(-1)]
            maps += [m for m in out.anomaly_map.reshape(len(batch.image_path), *out.anomaly_map.shape[-2:]).numpy()]
    return paths, labels, scores, maps, seconds


def _train_subset(normal_dir: Path, exclude_file: Path, folder: Path) -> Path:
    """A folder of symlinks to the train images not named in exclude_file (the same bank images as ours)."""
    skip = {line.strip() for line in exclude_file.read_text().splitlines() if line.strip()}
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    kept = 0
    for path in sorted(normal_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.name not in skip:
            (folder / path.name).symlink_to(path)
            kept += 1
    if not kept:
        raise SystemExit(f"--exclude-train {exclude_file} leaves no training image")
    return folder


def _mask_links(abnormal_dirs: list[Path], mask_dirs: list[Path], folder: Path) -> list[Path]:
    """Folder pairs masks with images by SORTED ORDER of their paths, so `anomaly-1_mask.png` (sorts after
    `anomaly-10_mask.png`) would meet `anomaly-1.jpg` (sorts before `anomaly-10.jpg`) out of step and stop with
    MisMatchError; as anomalib's message advises, the masks are given the images' names (as symlinks)."""
    out = []
    for images, masks in zip(abnormal_dirs, mask_dirs):
        target = folder / images.name
        target.mkdir(parents=True, exist_ok=True)
        for old in target.iterdir():
            old.unlink()
        for image in sorted(images.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                mask = masks / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise SystemExit(f"{image} has no mask {mask}")
                (target / f"{image.stem}.png").symlink_to(mask)
        out.append(target)
    return out


def _versions() -> dict:
    import anomalib
    import torch
    import torchvision

    return {"anomalib": anomalib.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


if __name__ == "__main__":
    raise SystemExit(main())
