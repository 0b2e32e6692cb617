"""The one frozen configuration that defines a detector.

It travels inside the index metadata (nanoGPT keeps its model args in the checkpoint the same way), so the server
rebuilds exactly the extractor, aggregation and scoring the builder used. Every field is validated on creation:
a bad value raises ``ConfigError`` naming the valid choices, and ``from_dict`` refuses unknown keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model.errors import ConfigError

INDEX_KINDS = ("flat", "ivf_flat", "hnsw", "ivf_pq")
PATCH_PADDINGS = ("zeros", "exclude")
AGGREGATIONS = ("concat", "pool")
CORESET_MODES = ("auto", "bounded", "exact")
DEFAULT_EMBEDDING_DIM = 128


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index holds the memory bank, and its parameters.

    flat:     exact search (IndexFlatL2). Default; best for banks up to a few hundred thousand vectors.
    ivf_flat: inverted lists over k-means cells; `nlist` cells, `nprobe` visited per query. Exact vectors.
    hnsw:     graph search (IndexHNSWFlat); `hnsw_m` links per node, `ef_construction`, `ef_search`.
    ivf_pq:   inverted lists with product-quantised vectors (`pq_m` sub-quantisers of `pq_nbits` bits). Smallest.
    """

    kind: str = "flat"
    nlist: int = 1024
    nprobe: int = 8
    hnsw_m: int = 32
    ef_construction: int = 200  # 64 left a poor graph on coreset banks: up to 24x overestimated patch scores
    ef_search: int = 64
    pq_m: int = 16
    pq_nbits: int = 8

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"unknown index kind {self.kind!r}; choose one of {', '.join(INDEX_KINDS)}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search", "pq_m"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"index.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.pq_nbits <= 16:
            raise ConfigError(f"index.pq_nbits must be in 1..16, got {self.pq_nbits}")


@dataclass(frozen=True)
class PatchCoreConfig:
    """Everything that defines a PatchCore detector (Roth et al., CVPR 2022)."""

    backbone: str = "mobilenet_v2"
    # Feature layers, shallow to deep; deeper maps are resized to the first one's grid.
    layers: tuple[str, ...] = ("features.6", "features.13")
    # False builds the backbone with seeded random weights (tests only: the scores mean nothing).
    pretrained: bool = True
    # Pre-processing: resize the whole image to image_size x image_size, then centre-crop crop_size
    # (None: no crop, the whole picture is inspected). The paper uses 256 -> 224.
    image_size: int = 256
    crop_size: int | None = None
    # Local neighbourhood aggregation f_agg (paper eq. 2): patch_size x patch_size average. At the feature map's
    # border, "zeros" averages over the zero padding too (as anomalib and the official code do: border cells are
    # damped, which keeps the picture's edge from dominating the image score); "exclude" averages the cells that
    # exist only.
    patch_size: int = 3
    patch_padding: str = "zeros"
    # "concat": channels of all layers side by side (anomalib's choice; 32 + 96 = 128-d for the default layers).
    # "pool": each layer adaptively pooled to embedding_dim, then the layers side by side pooled to embedding_dim
    # (the official code's pre-projection): equal layer weights. Chosen across the development suite
    # (bench/experiment_defaults.py, docs/defaults.md): concat is ahead on mean image AUROC, pool on bottle's AUPRO.
    aggregation: str = "concat"
    embedding_dim: int | None = None  # "pool": None means DEFAULT_EMBEDDING_DIM
    # Greedy coreset (paper section 3.2): fraction of patch embeddings kept in the memory bank, computed on a
    # seeded random projection to projection_dim dimensions (None or >= embedding dim: no projection).
    coreset_ratio: float = 0.01
    projection_dim: int | None = 128
    # "exact": the exact greedy (model.coreset). "bounded": each pick within 1 - epsilon of the farthest point and
    # each new centre updating its nearest groups only (model.coreset_bounded): bounded time on any data. "auto"
    # (default): exact up to 4,096 centres (model.coreset_bounded.AUTO_EXACT_MAX_CENTRES), bounded above. Not
    # bounded everywhere: at 1 % on the small sets the suite measures, the bounded bank's leave-one-out threshold
    # missed the decision bar on screw and cookies where the exact one met it (README, "Accuracy on the development
    # suite"); above 4,096 centres the exact greedy's time grows with N x k on hard data.
    # Indexes written before this field existed were built with "exact" (index_store.metadata).
    coreset_mode: str = "auto"
    seed: int = 0
    # Image score: max patch score s*, optionally re-weighted by paper eq. 7 over num_neighbors bank neighbours.
    reweight: bool = False
    num_neighbors: int = 9
    # Anomaly map: bilinear upsampling to the crop, then Gaussian blur (paper: sigma = 4).
    blur_sigma: float = 4.0
    # Tiling for high-resolution pictures (model/tiling.py): None inspects the whole picture resized to image_size.
    # A size cuts every picture into tile_size x tile_size tiles at native resolution (image_size must equal it),
    # overlapping by tile_overlap; the bank covers tile patches and the patch scores are stitched over the picture.
    tile_size: int | None = None
    tile_overlap: float = 0.25
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers or not all(isinstance(x, str) and x for x in self.layers):
            raise ConfigError(f"layers must be a non-empty list of layer names, got {self.layers!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layers must not repeat, got {self.layers!r}")
        if self.image_size < 32:
            raise ConfigError(f"image_size must be >= 32, got {self.image_size}")
        if self.crop_size is not None and not 32 <= self.crop_size <= self.image_size:
            raise ConfigError(
                f"crop_size must be between 32 and image_size ({self.image_size}), got {self.crop_size}; "
                "use None for no crop"
            )
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be an odd number >= 1, got {self.patch_size}")
        if self.patch_padding not in PATCH_PADDINGS:
            raise ConfigError(f"unknown patch_padding {self.patch_padding!r}; choose one of {', '.join(PATCH_PADDINGS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {self.aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        if self.aggregation == "pool" and self.embedding_dim is None:
            object.__setattr__(self, "embedding_dim", DEFAULT_EMBEDDING_DIM)
        if self.aggregation == "pool" and self.embedding_dim < 1:
            raise ConfigError(f"aggregation 'pool' needs embedding_dim >= 1, got {self.embedding_dim}")
        if self.aggregation == "concat" and self.embedding_dim is not None:
            raise ConfigError("embedding_dim applies to aggregation 'pool' only; leave it unset for 'concat'")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.coreset_mode not in CORESET_MODES:
            raise ConfigError(f"unknown coreset_mode {self.coreset_mode!r}; choose one of {', '.join(CORESET_MODES)}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ConfigError(f"projection_dim must be >= 1 or None, got {self.projection_dim}")
        if self.num_neighbors < 1:
            raise ConfigError(f"num_neighbors must be >= 1, got {self.num_neighbors}")
        if self.blur_sigma < 0:
            raise ConfigError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        if self.tile_size is not None:
            if self.tile_size != self.image_size or self.crop_size is not None:
                raise ConfigError(f"tiles are embedded at native resolution: image_size must equal tile_size "
                                  f"({self.tile_size}) and crop_size be None, got {self.image_size} / {self.crop_size}")
            if self.reweight:
                raise ConfigError("reweight (paper eq. 7) is not implemented for tiled configs; drop --reweight")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ConfigError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")
        if isinstance(self.index, dict):
            object.__setattr__(self, "index", IndexConfig(**self.index))

    @property
    def input_size(self) -> int:
        """Side of the square tensor the backbone sees."""
        return self.crop_size if self.crop_size is not None else self.image_size

    def replace(self, **changes: Any) -> PatchCoreConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchCoreConfig:
        data = dict(data)
        _refuse_unknown(cls, data, "model config")
        index = data.pop("index", {}) or {}
        _refuse_unknown(IndexConfig, index, "index config")
        if "layers" in data:
            data["layers"] = tuple(data["layers"])
        return cls(index=IndexConfig(**index), **data)


def _refuse_unknown(cls: type, data: dict[str, Any], what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; valid keys are {sorted(known)}")
