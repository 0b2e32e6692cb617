"""The extractor exported to ONNX: DIR/extractor.onnx, listed with its sha256 in DIR/metadata.json.

    patchcore-export indexes/bottle [indexes/screw ...]     # add extractor.onnx to existing indexes
    patchcore-build-index ...                                # writes it with every new index (--no-onnx: not)

The graph is everything before the nearest-neighbour search: ImageNet normalisation, the backbone's layers, the local
neighbourhood aggregation and the pooling (model.features.EmbeddingGraph). Input "pixels": (batch, S, S, 3)
float32 RGB in 0..255 (the onnx runtime casts a uint8 batch); output "embeddings": (batch, h, w, D) float32; the
batch size is dynamic. The memory bank stays in index.faiss, so the file is small (2.2 MB for MobileNetV2).
The model config is embedded as JSON (metadata_props "patchcore_config"); loading refuses a graph exported for
another config. Every export is checked against torch on a seeded probe batch before it is written.

Uses torch.onnx's TorchScript exporter (dynamo=False: offline, no onnxscript), the `onnx` package to embed the config,
and onnxruntime for the check: pip install 'patchcore-service[onnx]'.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

from index_store import store
from index_store.metadata import IndexMetadata
from model.config import PatchCoreConfig
from model.errors import PatchCoreError
from model.onnx_runtime import CONFIG_KEY, INPUT, OUTPUT, OnnxExtractor

log = logging.getLogger(__name__)
OPSET = 17
CHECK_TOLERANCE = 1e-4  # max |onnx - torch| over max |torch| on the probe batch


class ExportError(PatchCoreError):
    """The extractor cannot be exported; the message says how to fix it."""


def available() -> bool:
    """Whether this install can export (onnx and onnxruntime next to torch)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "onnx", "onnxruntime"))


def export_bytes(config: PatchCoreConfig) -> bytes:
    """The ONNX extractor of this config, checked against the torch extractor; raises ExportError."""
    if not available():
        raise ExportError("exporting the extractor needs torch, onnx and onnxruntime: pip install "
                          "'patchcore-service[onnx]'")
    import onnx
    import torch

    from model.features import PatchEmbedder

    embedder = PatchEmbedder(config, "cpu")
    graph = embedder.graph()
    s = config.input_size
    probe = np.random.default_rng(config.seed).integers(0, 256, (2, s, s, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the shapes it traces are fixed by the config
        torch.onnx.export(graph, (torch.from_numpy(probe).float(),), buffer, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    meta = {CONFIG_KEY: json.dumps(config.to_dict(), sort_keys=True),
            "patchcore_input": f"{INPUT}: (batch, {s}, {s}, 3) float32 RGB 0..255",
            "patchcore_output": f"{OUTPUT}: (batch, h, w, D) float32 patch embeddings"}
    onnx.helper.set_model_props(model, meta)
    model.doc_string = "PatchCore extractor: normalisation, backbone, local aggregation, pooling"
    data = model.SerializeToString()
    _check(data, config, embedder.embed_pixels(probe))
    return data


def _check(data: bytes, config: PatchCoreConfig, expected: np.ndarray) -> None:
    s = config.input_size
    probe = np.random.default_rng(config.seed).integers(0, 256, (2, s, s, 3), dtype=np.uint8)
    got = OnnxExtractor(data, config).embed_pixels(probe)
    error = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))
    if got.shape != expected.shape or not error <= CHECK_TOLERANCE:
        raise ExportError(f"the exported extractor differs from torch (shape {got.shape} vs {expected.shape}, "
                          f"relative error {error:.2e} > {CHECK_TOLERANCE}); use the torch runtime and report this")


def sidecar(config: PatchCoreConfig) -> dict[str, bytes]:
    """{extractor.onnx: bytes} for a new index, or {} (with a warning) where onnx is not installed."""
    if not available():
        log.warning("not writing %s: install onnx and onnxruntime (pip install 'patchcore-service[onnx]') and run "
                    "patchcore-export to add it later", store.EXTRACTOR_FILE)
        return {}
    return {store.EXTRACTOR_FILE: export_bytes(config)}


def export_index(index_dir: Path) -> IndexMetadata:
    """Export the extractor of an existing index into it; returns its new metadata."""
    metadata = store.read_metadata(index_dir)
    return store.add_sidecar(index_dir, store.EXTRACTOR_FILE, export_bytes(metadata.config))


def index_folders(path: Path) -> list[Path]:
    """path itself if it is an index folder, else its index sub-folders (dot folders skipped)."""
    if (path / store.METADATA_FILE).is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and (p / store.METADATA_FILE).is_file()) if path.is_dir() else []
    if not found:
        raise store.IndexStoreError(f"{path} is not an index folder and holds none; build one with "
                                    "patchcore-build-index --out")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="patchcore-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("index", type=Path, nargs="+", help="index folder(s), or folders of index folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        for path in [p for arg in args.index for p in index_folders(arg)]:
            store.load_index(path)  # a corrupt index is refused before anything is written
            metadata = export_index(path)
            print(f"{path / store.EXTRACTOR_FILE}: sha256 {metadata.sidecars[store.EXTRACTOR_FILE][:12]}..., "
                  f"{(path / store.EXTRACTOR_FILE).stat().st_size / 1e6:.1f} MB")
    except (PatchCoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
