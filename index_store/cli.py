"""patchcore-build-index: a folder of good images -> DIR/index.faiss + DIR/metadata.json.

    patchcore-build-index --data ../shared/data/mvtec_ad/bottle --out indexes/bottle

Exit codes: 0 built, 1 build failed (the message says why and what to do), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from distributed.options import add_ray_arguments, options_from_args
from index_store import onnx_export, store
from index_store.atomic import WriterLock
from index_store.build import BuildOptions, build_index
from imaging.decode import list_images
from index_store.runtime import configure_threads, release_gpu_library_pages, return_freed_memory
from model.calibration import DEFAULT_RULE, RULES
from model.config import CORESET_MODES, INDEX_KINDS, IndexConfig, PatchCoreConfig
from model.errors import PatchCoreError

log = logging.getLogger("patchcore")
DEFAULTS = PatchCoreConfig()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that define the detector (shared with patchcore-evaluate)."""
    from model.backbone import BACKBONES  # torch: not imported by `--update`, which can run on onnxruntime alone

    g = parser.add_argument_group("model")
    g.add_argument("--backbone", default=DEFAULTS.backbone, help=f"one of {', '.join(sorted(BACKBONES))}")
    g.add_argument("--layers", nargs="+", help="feature layers, shallow to deep (default: the backbone's pair)")
    g.add_argument("--random-init", action="store_true", help="seeded random weights (tests only)")
    g.add_argument("--image-size", type=int, default=DEFAULTS.image_size, help="resize to SIZE x SIZE")
    g.add_argument("--crop-size", type=int, default=0, help="centre crop after resizing (0: none)")
    g.add_argument("--patch-size", type=int, default=DEFAULTS.patch_size, help="local neighbourhood p x p")
    g.add_argument("--aggregation", choices=("concat", "pool"), default=DEFAULTS.aggregation)
    g.add_argument("--embedding-dim", type=int, help="target dimension for --aggregation pool (default 128)")
    g.add_argument("--coreset-ratio", type=float, default=DEFAULTS.coreset_ratio)
    g.add_argument("--projection-dim", type=int, default=DEFAULTS.projection_dim, help="0: no projection")
    g.add_argument("--coreset-mode", choices=CORESET_MODES, default=DEFAULTS.coreset_mode,
                   help="auto (default): exact up to 4,096 centres, bounded above; bounded: fast on any data, "
                   "within 1 - epsilon of the farthest point per pick; exact: the exact greedy (can take many times "
                   "the extraction on textured products at 10 %%)")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed)
    g.add_argument("--reweight", action="store_true", help="paper eq. 7 image-score re-weighting")
    g.add_argument("--num-neighbors", type=int, default=DEFAULTS.num_neighbors, help="b of eq. 7")
    g.add_argument("--tile", type=int, metavar="SIZE", help="cut pictures into SIZE x SIZE tiles at native resolution "
                   "(high-resolution pictures, small defects); sets --image-size SIZE")
    g.add_argument("--tile-overlap", type=float, default=DEFAULTS.tile_overlap, help="share of a tile that overlaps "
                   f"its neighbour (default {DEFAULTS.tile_overlap})")
    i = parser.add_argument_group("index")
    i.add_argument("--index-type", choices=INDEX_KINDS, default="flat")
    for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search", "pq_m", "pq_nbits"):
        i.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(IndexConfig(), name))


def add_calibration_arguments(parser: argparse.ArgumentParser, calibration_data: bool = True) -> None:
    """How the threshold is set (shared with patchcore-evaluate)."""
    g = parser.add_argument_group("threshold", "every good image goes into the bank; up to --calibration-images "
                                  "of them are scored leave-one-image-out and --threshold-rule sets the threshold")
    g.add_argument("--target-fpr", type=float, default=0.01,
                   help="share of good parts the threshold may flag (default 0.01)")
    g.add_argument("--threshold-rule", choices=RULES, default=DEFAULT_RULE, help=f"default {DEFAULT_RULE}")
    g.add_argument("--calibration-images", type=int, default=BuildOptions().calibration_images,
                   help="good images scored for the threshold (a seeded sample of the training images)")
    if calibration_data:
        g.add_argument("--calibration-data", type=Path, help="score this folder of good images instead (kept out of "
                       "the bank)")


def config_from_args(args: argparse.Namespace) -> PatchCoreConfig:
    layers = tuple(args.layers) if args.layers else _default_layers(args.backbone)
    index = IndexConfig(
        kind=args.index_type, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction, ef_search=args.ef_search, pq_m=args.pq_m, pq_nbits=args.pq_nbits,
    )
    config = PatchCoreConfig(
        backbone=args.backbone, layers=layers, pretrained=not args.random_init,
        image_size=args.tile or args.image_size, tile_size=args.tile or None, tile_overlap=args.tile_overlap,
        crop_size=args.crop_size or None, patch_size=args.patch_size, aggregation=args.aggregation,
        embedding_dim=args.embedding_dim, coreset_ratio=args.coreset_ratio,
        projection_dim=args.projection_dim or None, coreset_mode=args.coreset_mode, seed=args.seed,
        reweight=args.reweight, num_neighbors=args.num_neighbors, index=index,
    )
    from model.backbone import check_layers

    check_layers(config)  # fail fast, before any image is read
    return config


def _default_layers(backbone: str) -> tuple[str, ...]:
    return DEFAULTS.layers if backbone == "mobilenet_v2" else ("layer2", "layer3")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="patchcore-build-index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of good images, or an MVTec category root")
    parser.add_argument("--out", type=Path, required=True, help="index folder to write")
    parser.add_argument("--update", type=Path, metavar="INDEX", help="add --data's good images to the index INDEX "
                        "as its next version (see patchcore-build-index --update X --help)")
    parser.add_argument("--name", help="index name (default: the --out folder's name)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch, OpenMP, FAISS and BLAS threads (default: all cores)")
    add_calibration_arguments(parser)
    parser.add_argument("--strict", action="store_true", help="fail on unreadable files instead of skipping them")
    parser.add_argument("--max-chunk-patches", type=int, default=2_000_000, help="embedding buffer rows")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the build summary as JSON")
    parser.add_argument("--no-onnx", action="store_true", help="do not write extractor.onnx (the ONNX extractor, "
                        "written when onnx and onnxruntime are installed; patchcore-export adds it later)")
    add_model_arguments(parser)
    add_ray_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--update" or a.startswith("--update=") for a in argv):  # its own options: index_store/update.py
        from index_store import update

        return update.main(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        config, paths, options = _check(args)  # bad options and an empty folder fail before anything is written
        with WriterLock(args.out) as lock:  # refuses now, not after the build: another writer, a read-only folder
            if args.out.exists() and not args.force:
                raise store.IndexStoreError(f"{args.out} already exists; pass --force to replace it")
            log.info("building %s from %d images under %s", options.name, len(paths), args.data)
            result = _build(paths, config, options, args)
            extra = {} if args.no_onnx else onnx_export.sidecar(config)
            metadata = store.save_result(args.out, result, force=args.force, lock=lock, extra_files=extra)
    except (PatchCoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "out": str(args.out), "bank_size": metadata.bank_size, "patches_seen": metadata.n_patches_seen,
        "coreset": metadata.coreset_method, "threshold": round(metadata.calibration.threshold, 4),
        "images": metadata.provenance.n_train_images, "calibration_images": metadata.provenance.n_calibration_images,
        "skipped": metadata.provenance.n_skipped, "stage_seconds": metadata.provenance.stage_seconds,
        "build_seconds": metadata.provenance.build_seconds, "peak_rss_mb": metadata.provenance.peak_rss_mb,
    }
    print(json.dumps(summary) if args.json else "\n".join(f"{k:>20}: {v}" for k, v in summary.items()))
    return 0


def _build(paths, config, options, args):
    ray_options = options_from_args(args)
    if ray_options is None:
        return build_index(paths, config, options, root=args.data)
    try:
        from distributed.ray_build import build_index_ray
    except ImportError as exc:
        from distributed.options import INSTALL_HINT

        raise PatchCoreError(f"--ray: {INSTALL_HINT} ({exc})") from exc
    return build_index_ray(paths, config, options, ray_options, root=args.data)


def _check(args: argparse.Namespace) -> tuple[PatchCoreConfig, list[Path], BuildOptions]:
    config = config_from_args(args)
    configure_threads(args.threads)
    return_freed_memory()
    if args.device == "cpu":
        log.info("released %.0f MiB of GPU-only library pages (CPU build)", release_gpu_library_pages())
    paths = list_images(args.data)
    if not paths:
        raise store.IndexStoreError(f"no PNG/JPEG/BMP/TIFF images found under {args.data}; check the path")
    calibration = tuple(list_images(args.calibration_data)) if args.calibration_data else ()
    options = BuildOptions(
        name=args.name or args.out.name, device=args.device, batch_size=args.batch_size,
        calibration_images=args.calibration_images, calibration_paths=calibration, target_fpr=args.target_fpr,
        threshold_rule=args.threshold_rule, strict=args.strict, max_chunk_patches=args.max_chunk_patches, progress=not args.no_progress,
        heap_after_extract=True,  # return_freed_memory above
    )
    return config, paths, options


if __name__ == "__main__":
    raise SystemExit(main())
