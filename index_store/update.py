"""Incremental update: newly approved good images extend a built index, without a rebuild, as its next version.

    patchcore-build-index --update indexes/bottle --data new_good/ [--out indexes/bottle-v2]

1. The parent's memory bank is read back (from a flat index, else from its bank_vectors.npy sidecar), with the
   source image of each vector (bank_image_ids.npy, images.tsv). Images whose bytes the parent already holds are
   skipped.
2. The new images are embedded, and the greedy k-center continues over their patches exactly as the chunked builder
   extends its bank chunk by chunk (index_store.build): the running distances start from each new patch's distance
   to the parent's bank, so centres go only where the new patches are not yet covered, coreset_ratio x new patches
   of them.
3. The threshold is recalibrated from the parent's stored per-image good scores plus the new images' leave-one-image-
   out scores against the new bank (model.leave_out, with the new images' patches as the refill candidates).
   Trade-off, chosen for speed: the parent's training patches are not stored (bottle: 110 MB per 209 images), so the
   parent's images are not re-scored against the larger bank. Their stored scores were computed against a bank
   without the new vectors, and a larger bank can only bring a patch's nearest vector closer, so they are upper
   bounds: the threshold stays on the safe side (at most slightly higher than a rebuild's); bench/bench_update.py
   measures the difference. Re-embedding the parent's images would cost as much as the rebuild it replaces.
4. The result is written atomically (index_store.store.save) as version parent + 1, with its lineage: parent sha256,
   parent dataset fingerprint and the images added; the dataset fingerprint covers every image of the new version.

Bounded: the new images' patches must fit one chunk (--max-chunk-patches); larger additions go in several updates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from index_store import store
from index_store.build import (
    MIN_CALIBRATION,
    BuildError,
    BuildOptions,
    BuildResult,
    _chunk_rows,
    _provenance,
    _relative,
    _Stages,
    chunk_picks,
    embed_stream,
    greedy_continuation,
    picture_grid,
    sample_ids,
    skip_recorder,
)
from index_store.metadata import Lineage
from model import knn
from model.calibration import calibrate as threshold_from
from model.leave_out import LeaveOneOut

log = logging.getLogger(__name__)


def update_index(index_dir: Path, paths: Sequence[Path], options: BuildOptions = BuildOptions(),
                 root: Path | None = None, runtime: str = "auto", threads: int | None = None) -> BuildResult:
    """The next version of the index at index_dir with the good images `paths` added; nothing is written here.
    options.name, calibration_paths and threshold_rule are not used: the parent's name, rule and target FPR stay.

    runtime: which extractor embeds the new images (store.open_extractor): "auto" takes the parent's own
    extractor.onnx in onnxruntime when both are there (no torch import, the serving graph itself), else torch; both
    give the builder's embeddings (tests/index_store/test_onnx.py: within 1e-4). threads: onnxruntime's."""
    started, stages = time.perf_counter(), _Stages()
    t = time.perf_counter()
    parent, index = store.load_index(index_dir)
    if parent.coreset_method.startswith("sequential") or parent.calibration.method == "held-out":
        log.info("the parent was built in chunks; its held-out calibration scores are kept")
    bank = store.read_bank_vectors(index_dir, parent, index)
    owners = store.read_bank_image_ids(index_dir, parent)
    old_images = store.read_images(index_dir, parent)
    config = parent.config
    known = {digest for _, digest in old_images}
    stages.add("load_parent", time.perf_counter() - t)

    paths = list(dict.fromkeys(paths))
    if not paths:
        raise BuildError("no new images to add; pass a folder with PNG/JPEG/BMP/TIFF good images")
    t = time.perf_counter()
    embedder = store.open_extractor(index_dir, parent, runtime, options.device, threads)
    stages.add("load_model", time.perf_counter() - t)
    log.info("embedding the new images with the %s runtime", embedder.runtime)
    if embedder.dim != parent.embedding_dim or embedder.grid != parent.grid:
        raise BuildError(f"{config.backbone} now gives {embedder.dim}-d embeddings on a {embedder.grid} grid, the "
                         f"index holds {parent.embedding_dim}-d on {parent.grid}; rebuild it with --force")
    grid = picture_grid(paths, embedder)
    per_image = grid[0] * grid[1]
    if len(paths) * per_image > _chunk_rows(per_image, options):
        raise BuildError(f"{len(paths)} new images x {per_image} patches is more than one chunk "
                         f"(--max-chunk-patches {options.max_chunk_patches}); add them in several updates, or rebuild")

    skipped: list[str] = []
    on_skip = skip_recorder(options, skipped)

    # (n_new * per_image, D) new patch embeddings, image by image; duplicates of the parent's images are left out.
    t = time.perf_counter()
    rows = np.empty((len(paths) * per_image, embedder.dim), np.float32)
    used: list[tuple[Path, str]] = []
    n_duplicates = 0
    for emb, names in embed_stream(paths, embedder, options, on_skip, "embed new"):
        if emb[0].size != per_image * embedder.dim:
            raise BuildError(f"tiled index: the new pictures must have the size of the first ({names[0][0]} differs)")
        for j, (path, digest) in enumerate(names):
            if digest in known:
                n_duplicates += 1
                log.warning("skipping %s: the index already holds an image with the same bytes", path)
                continue
            known.add(digest)
            rows[len(used) * per_image : (len(used) + 1) * per_image] = emb[j].reshape(-1, embedder.dim)
            used.append((path, digest))
    if not used:
        raise BuildError(f"none of the {len(paths)} images could be added ({n_duplicates} already in the index, "
                         f"{len(skipped)} unreadable)")
    rows = rows[: len(used) * per_image]
    stages.add("extract", time.perf_counter() - t)
    stages.done("extract")

    # Greedy continuation (paper section 3.2, seeded with the parent's bank): the builder's extend_bank, with the
    # index's coreset_mode (auto, exact or bounded).
    t = time.perf_counter()
    seed = config.seed
    picked = greedy_continuation(rows, bank, chunk_picks(rows.shape[0], config), config)
    n_old = len(old_images)
    row_owners = np.repeat(np.arange(n_old, n_old + len(used), dtype=np.int32), per_image)
    new_bank = np.concatenate([bank, rows[picked]])
    new_owners = np.concatenate([owners, row_owners[picked]]).astype(np.int32)
    stages.add("coreset", time.perf_counter() - t)
    stages.done("coreset")
    t = time.perf_counter()
    new_index = knn.build_index(new_bank, config.index, seed)
    stages.add("index", time.perf_counter() - t)

    # Recalibration: the parent's stored scores + the new images scored leave-one-image-out (module docstring, 3).
    t = time.perf_counter()
    ids = n_old + sample_ids(len(used), options.calibration_images, seed)
    loo = LeaveOneOut(new_index, new_bank, new_owners, rows, row_owners, seed=seed)
    new_scores = loo.image_scores(ids, config.num_neighbors if config.reweight else None).tolist()
    old_cal = parent.calibration
    scores = [*old_cal.scores, *new_scores]
    images_scored = (*old_cal.images, *(_relative(used[i - n_old][0], root) for i in ids))
    if len(scores) < MIN_CALIBRATION:
        raise BuildError(f"calibration needs >= {MIN_CALIBRATION} good image scores, got {len(scores)}")
    method = old_cal.method if old_cal.method.endswith("+update") else f"{old_cal.method}+update"
    calibration = threshold_from(np.asarray(scores), old_cal.target_fpr, old_cal.rule, method=method,
                                 images=images_scored if len(images_scored) == len(scores) else ())
    stages.add("calibration", time.perf_counter() - t)
    stages.done("calibration")

    added = tuple((_relative(p, root), d) for p, d in used)
    images = (*(tuple(x) for x in old_images), *added)
    provenance = _provenance(images, len(images), skipped, len(images), len(scores), method, started, stages, {})
    metadata = dataclasses.replace(
        parent, bank_size=int(new_index.ntotal), n_patches_seen=parent.n_patches_seen + rows.shape[0],
        coreset_method=f"{parent.coreset_method.split('+')[0]}+update", index_sha256="", calibration=calibration,
        provenance=provenance, sidecars={},
        lineage=Lineage(version=parent.lineage.version + 1, parent_sha256=parent.index_sha256,
                        parent_dataset_fingerprint=parent.provenance.dataset_fingerprint,
                        images_added=tuple(p for p, _ in added)),
    )
    return BuildResult(index=new_index, metadata=metadata, bank_image_ids=new_owners, images=images,
                       stage_seconds=dict(stages.seconds),
                       bank_vectors=None if config.index.kind == "flat" else new_bank, extract_runtime=embedder.runtime)


def carried_sidecars(index_dir: Path) -> dict[str, bytes]:
    """The parent's sidecars that stay valid for its next version: extractor.onnx (the model config does not change
    in an update, so the exported extractor is the same), checked against the parent's metadata; an onnx-served
    index keeps its runtime after an update and a hot reload."""
    parent = store.read_metadata(index_dir)
    out = {}
    for name in (store.EXTRACTOR_FILE,):
        if name in parent.sidecars:
            data = (Path(index_dir) / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != parent.sidecars[name]:
                raise store.IndexStoreError(f"{Path(index_dir) / name} is corrupt (sha256 differs from metadata.json); "
                                            f"re-export it with patchcore-export {index_dir}, then update")
            out[name] = data
    return out


def main(argv: list[str]) -> int:
    """patchcore-build-index --update INDEX --data NEW_GOOD [--out NEW] [--force]: the model options come from INDEX
    (giving them here is an error); writes INDEX's next version atomically (in place unless --out)."""
    import argparse
    import json
    import sys

    from imaging.decode import list_images
    from index_store.atomic import WriterLock
    from index_store.runtime import configure_threads
    from model.errors import PatchCoreError

    parser = argparse.ArgumentParser(prog="patchcore-build-index --update",
                                     description="add good images to a built index as its next version")
    parser.add_argument("--update", type=Path, required=True, help="the index folder to extend")
    parser.add_argument("--data", type=Path, required=True, help="folder of the new good images")
    parser.add_argument("--out", type=Path, help="write the new version here (default: replace --update in place)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--runtime", choices=list(store.RUNTIME_CHOICES), default="auto",
                        help="extractor for the new images: auto = the index's extractor.onnx in onnxruntime when "
                             "both are there (no torch), else torch")
    parser.add_argument("--calibration-images", type=int, default=BuildOptions().calibration_images,
                        help="new images scored leave-one-image-out (a seeded sample when there are more)")
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--max-chunk-patches", type=int, default=BuildOptions().max_chunk_patches)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    out = args.out or args.update
    try:
        threads = configure_threads(args.threads)
        paths = list_images(args.data)
        if not paths:
            raise BuildError(f"no PNG/JPEG/BMP/TIFF images found under {args.data}; check the path")
        options = BuildOptions(device=args.device, batch_size=args.batch_size,
                               calibration_images=args.calibration_images, strict=args.strict,
                               max_chunk_patches=args.max_chunk_patches, progress=not args.no_progress)
        with WriterLock(out) as lock:
            if args.out is not None and args.out.exists() and not args.force:
                raise store.IndexStoreError(f"{args.out} already exists; pass --force to replace it")
            result = update_index(args.update, paths, options, root=args.data, runtime=args.runtime,
                                  threads=threads)
            metadata = store.save_result(out, result, force=True, lock=lock,
                                         extra_files=carried_sidecars(args.update))
    except (PatchCoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "out": str(out), "version": metadata.lineage.version, "parent_sha256": metadata.lineage.parent_sha256,
        "images_added": len(metadata.lineage.images_added), "bank_size": metadata.bank_size,
        "threshold": round(metadata.calibration.threshold, 4), "images": metadata.provenance.n_train_images,
        "runtime": result.extract_runtime, "stage_seconds": metadata.provenance.stage_seconds, "build_seconds": metadata.provenance.build_seconds,
    }
    print(json.dumps(summary) if args.json else "\n".join(f"{k:>20}: {v}" for k, v in summary.items()))
    return 0
