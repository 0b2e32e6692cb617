"""The index metadata: one frozen, versioned record, stored as plain JSON next to index.faiss.

It embeds the whole model config, so whoever loads the index rebuilds exactly the extractor the builder used.
Any change in the meaning of a field bumps SCHEMA_VERSION; loading refuses other versions with a fix.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from model.config import PatchCoreConfig
from model.calibration import Calibration

SCHEMA_VERSION = 2
# 2: every good image in the bank and calibrated leave-one-image-out; the calibration keeps its per-image scores and
#    its rule; sidecar files (bank_image_ids.npy, images.tsv) with their sha256. Version 1 folders still load
#    (migrate_v1): their threshold stands, but they cannot be re-calibrated without a rebuild.
READABLE_VERSIONS = (1, 2)


class MetadataError(ValueError):
    """metadata.json is missing, unreadable or inconsistent; the message says how to fix it."""


@dataclass(frozen=True)
class Provenance:
    package_version: str
    torch_version: str
    torchvision_version: str
    faiss_version: str
    numpy_version: str
    dataset_fingerprint: str  # sha256 over the sorted (relative path, sha256 of bytes) of every image read
    n_images: int  # good images found
    n_skipped: int  # unreadable files skipped
    n_train_images: int  # images whose patches fed the memory bank
    n_calibration_images: int
    calibration_source: str  # "leave-one-image-out", "held-out" (chunked builds) or "calibration-data"
    built_at: str  # ISO 8601 UTC
    build_seconds: float
    peak_rss_mb: float
    stage_seconds: dict[str, float]
    # builds on a Ray cluster (distributed.ray_build): nodes, CPUs, GPUs, actors, worker-seconds per stage, peak RSS
    # per node; empty for builds in one process (and in indexes written before it existed)
    cluster: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lineage:
    """Where this version of an index comes from: a fresh build is version 1; each `patchcore-build-index --update`
    makes the next version from its parent. Added within schema 2, backward compatible: a record without it reads
    as version 1 with no parent."""

    version: int = 1
    parent_sha256: str | None = None  # index_sha256 of the version this one extends
    parent_dataset_fingerprint: str | None = None
    images_added: tuple[str, ...] = ()  # relative paths of the good images this version added to its parent

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "parent_sha256": self.parent_sha256,
                "parent_dataset_fingerprint": self.parent_dataset_fingerprint, "images_added": list(self.images_added)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Lineage:
        data = dict(data or {})
        unknown = sorted(set(data) - {"version", "parent_sha256", "parent_dataset_fingerprint", "images_added"})
        if unknown:
            raise ValueError(f"unknown lineage keys {unknown}")
        version = int(data.get("version", 1))
        if version < 1:
            raise ValueError(f"lineage version must be >= 1, got {version}")
        return cls(version=version, parent_sha256=data.get("parent_sha256"),
                   parent_dataset_fingerprint=data.get("parent_dataset_fingerprint"),
                   images_added=tuple(str(p) for p in data.get("images_added", ())))


@dataclass(frozen=True)
class IndexMetadata:
    schema_version: int
    name: str
    config: PatchCoreConfig
    embedding_dim: int
    grid: tuple[int, int]  # (h, w) patch grid per image
    bank_size: int  # vectors in the memory bank == index.ntotal
    n_patches_seen: int  # patch embeddings the coreset chose from
    coreset_method: str  # "single-pass" or "sequential(chunks=N)"
    index_sha256: str
    calibration: Calibration
    provenance: Provenance
    sidecars: dict[str, str] = field(default_factory=dict)  # file name in the index folder -> its sha256
    lineage: Lineage = field(default_factory=Lineage)

    def to_json(self) -> str:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        data["calibration"] = self.calibration.to_dict()
        data["grid"] = list(self.grid)
        data["lineage"] = self.lineage.to_dict()
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata.json") -> IndexMetadata:
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{source} is not valid JSON ({exc}); rebuild the index with patchcore-build-index") from exc
        if not isinstance(data, dict):
            raise MetadataError(f"{source} must hold a JSON object; rebuild the index with patchcore-build-index")
        version = data.get("schema_version")
        if version == 1:
            data = migrate_v1(data)
            version = SCHEMA_VERSION
        if version not in READABLE_VERSIONS:
            raise MetadataError(
                f"{source} has schema_version {version!r}, this software reads {SCHEMA_VERSION}: rebuild the index "
                "with this version's patchcore-build-index, or install the version that built it"
            )
        try:
            return cls(
                schema_version=version,
                name=str(data["name"]),
                # written before coreset_mode existed: those banks came from the exact greedy
                config=PatchCoreConfig.from_dict({"coreset_mode": "exact", **data["config"]}),
                embedding_dim=int(data["embedding_dim"]),
                grid=(int(data["grid"][0]), int(data["grid"][1])),
                bank_size=int(data["bank_size"]),
                n_patches_seen=int(data["n_patches_seen"]),
                coreset_method=str(data["coreset_method"]),
                index_sha256=str(data["index_sha256"]),
                calibration=Calibration.from_dict(data["calibration"]),
                provenance=Provenance(**data["provenance"]),
                sidecars={str(k): str(v) for k, v in data.get("sidecars", {}).items()},
                lineage=Lineage.from_dict(data.get("lineage")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise MetadataError(
                f"{source} is incomplete or malformed ({type(exc).__name__}: {exc}); rebuild the index with "
                "patchcore-build-index"
            ) from exc


def migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record (held-out calibration, Student-t bound, no per-image scores) in version-2 terms."""
    data = dict(data, schema_version=SCHEMA_VERSION)
    cal = dict(data["calibration"])
    cal.setdefault("rule", "student_t")
    cal.setdefault("achievable_fpr", cal.get("target_fpr", 0.01))
    cal.setdefault("method", "holdout")
    data["calibration"] = cal
    data["config"] = {"patch_padding": "exclude", "aggregation": "pool", **data["config"]}  # version 1's defaults
    return data
