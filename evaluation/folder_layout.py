"""`--layout folder`: a user's own product as it lies on disk, the way anomalib's Folder data module takes it.

    ROOT/good/*            good images (--normal-dir); split into train and test unless --normal-test-dir is given
    ROOT/<defect kind>/*   one folder per defect kind (--abnormal-dir, repeatable; default: every other image folder)
    ROOT/masks/...         optional masks (--mask-dir; default: ROOT/masks or ROOT/ground_truth when present), found
                           by the image's stem: masks/<kind>/<stem>[_mask].<ext> or masks/<stem>[_mask].<ext>

Without masks the category has image labels only: image metrics are complete, pixel metrics are "-".
The split of the good images is seeded, so the same folder always gives the same train and test sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.datasets import Category, DatasetError, Sample, by_stem, images_in, make_category, subfolders

MASK_DIR_NAMES = ("masks", "ground_truth")


@dataclass(frozen=True)
class FolderSpec:
    """anomalib Folder's arguments: normal_dir, abnormal_dir, normal_test_dir, mask_dir, test_split_ratio, seed."""

    normal_dir: str = "good"
    abnormal_dirs: tuple[str, ...] = ()  # () = every image folder of ROOT that is not good, normal-test or masks
    normal_test_dir: str | None = None
    mask_dir: str | None = None  # None = ROOT/masks or ROOT/ground_truth if present
    test_split_ratio: float = 0.2  # share of the good images moved to the test set (no normal_test_dir)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.test_split_ratio < 1.0:
            raise DatasetError(f"--test-split-ratio must be in (0, 1), got {self.test_split_ratio}")


def load_folder(root: Path | str, spec: FolderSpec = FolderSpec()) -> Category:
    """ROOT laid out as in the module docstring -> Category named after ROOT."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data {root} is not a folder: pass the folder that holds '{spec.normal_dir}/' and one "
                           "folder per defect kind")
    good = images_in(root / spec.normal_dir)
    if not good:
        found = [p.name for p in subfolders(root)]
        raise DatasetError(f"no good images in {root / spec.normal_dir}; folders under {root}: {found}. Name the "
                           "good-image folder with --normal-dir")
    mask_root = _mask_root(root, spec)
    if spec.normal_test_dir:
        train, test_good = good, images_in(root / spec.normal_test_dir)
        if not test_good:
            raise DatasetError(f"--normal-test-dir {root / spec.normal_test_dir} holds no images")
    else:
        train, test_good = split_good(good, spec.test_split_ratio, spec.seed)
    test = [Sample(path, 0, "good", None) for path in test_good]
    for kind in _abnormal_dirs(root, spec, mask_root):
        masks = _masks_of(mask_root, kind.name) if mask_root else {}
        for image in images_in(kind):
            mask = masks.get(image.stem) if mask_root else None
            if mask_root and mask is None:
                raise DatasetError(f"defect image {image} has no mask under {mask_root} (looked for "
                                   f"{kind.name}/{image.stem}[_mask].* and {image.stem}[_mask].*); add it, or point "
                                   "--mask-dir at an empty name to evaluate image labels only")
            test.append(Sample(image, 1, kind.name, mask))
    if not any(s.label for s in test):
        raise DatasetError(f"no defect images under {root}: add one folder per defect kind next to "
                           f"'{spec.normal_dir}/', or name them with --abnormal-dir")
    return make_category(root.name, train, test, root)


def split_good(paths: list[Path], test_ratio: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded split of the good images -> (train, test); at least one image on each side."""
    n = len(paths)
    if n < 2:
        raise DatasetError(f"only {n} good image: the folder layout needs >= 2 (some train, some test), or pass "
                           "--normal-test-dir")
    n_test = min(n - 1, max(1, int(round(test_ratio * n))))
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_test].tolist())
    return ([p for i, p in enumerate(paths) if i not in chosen], [p for i, p in enumerate(paths) if i in chosen])


def _mask_root(root: Path, spec: FolderSpec) -> Path | None:
    if spec.mask_dir is not None:
        if not spec.mask_dir:
            return None  # "" = image labels only
        if not (root / spec.mask_dir).is_dir():
            raise DatasetError(f"--mask-dir {root / spec.mask_dir} is not a folder")
        return root / spec.mask_dir
    return next((root / name for name in MASK_DIR_NAMES if (root / name).is_dir()), None)


def _abnormal_dirs(root: Path, spec: FolderSpec, mask_root: Path | None) -> list[Path]:
    if spec.abnormal_dirs:
        missing = [name for name in spec.abnormal_dirs if not (root / name).is_dir()]
        if missing:
            raise DatasetError(f"--abnormal-dir {missing} not found under {root}; folders there: "
                               f"{[p.name for p in subfolders(root)]}")
        return [root / name for name in spec.abnormal_dirs]
    skip = {spec.normal_dir, spec.normal_test_dir, mask_root.name if mask_root else None}
    return [p for p in subfolders(root) if p.name not in skip and images_in(p)]


def _masks_of(mask_root: Path, kind: str) -> dict[str, Path]:
    """stem of the defect image -> its mask: mask_root/kind/ first, then mask_root/ itself; `_mask` suffix allowed."""
    found: dict[str, Path] = {}
    for folder in (mask_root, mask_root / kind):  # the kind's own folder wins
        for stem, path in by_stem(images_in(folder)).items():
            found[stem.removesuffix("_mask")] = path
    return found
