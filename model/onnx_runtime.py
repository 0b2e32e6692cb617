"""The ONNX runtime of the extractor contract (model/extractor.py): onnxruntime runs extractor.onnx, no torch.

    extractor = OnnxExtractor(model_bytes, config, device="cpu", threads=2)
    extractor.embed_pixels(pixels)   # (B, S, S, 3) uint8 / float32 0..255 -> (B, h, w, D) float32

The graph (written by index_store/onnx_export.py) holds normalisation, backbone, local aggregation and pooling; its
input "pixels" is (batch, S, S, 3) float32 with a dynamic batch, its output "embeddings" (batch, h, w, D).
The model arrives as bytes: reading and checking the file is index_store's job.

Providers: CPUExecutionProvider on device "cpu"; CUDAExecutionProvider (then CPU) on "cuda" / "cuda:N", which needs
the onnxruntime-gpu package. The intra-op pool does not spin when idle (session.intra_op.allow_spinning = 0): a
spinning pool steals the cores FAISS's OpenMP threads search on, right after the forward pass.
"""

from __future__ import annotations

import json

import numpy as np

from model.config import PatchCoreConfig
from model.errors import BackboneError
from model.extractor import check_pixels

INPUT, OUTPUT = "pixels", "embeddings"
CONFIG_KEY = "patchcore_config"  # the ONNX model's metadata_props entry holding the model config as JSON


def providers_for(device: str, available: list[str]) -> list:
    """onnxruntime providers for a device name, or BackboneError saying what to install."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackboneError(f"device {device!r} with the onnx runtime needs onnxruntime's CUDA provider (pip install "
                                f"onnxruntime-gpu); this onnxruntime has {available}. Use PATCHCORE_RUNTIME=torch or "
                                "--device cpu")
        ordinal = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": ordinal}), "CPUExecutionProvider"]
    raise BackboneError(f"unknown device {device!r}; use cpu, cuda or cuda:N")


class OnnxExtractor:
    runtime = "onnx"

    def __init__(self, model_bytes: bytes, config: PatchCoreConfig, device: str = "cpu",
                 threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackboneError("the onnx runtime needs onnxruntime: pip install 'patchcore-service[onnx]', or use "
                                "PATCHCORE_RUNTIME=torch") from exc
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initialisers are noise
        try:
            self.session = ort.InferenceSession(model_bytes, options,
                                                providers=providers_for(str(device), ort.get_available_providers()))
        except (RuntimeError, ValueError) as exc:  # onnxruntime's Fail / InvalidProtobuf derive from RuntimeError
            raise BackboneError(f"onnxruntime cannot load the extractor ({str(exc).splitlines()[0]}); re-export it "
                                "with patchcore-export") from exc
        self.config = config
        self.device = str(device)
        self.model_config = json.loads(self.session.get_modelmeta().custom_metadata_map.get(CONFIG_KEY, "null"))
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([INPUT], [OUTPUT]):
            raise BackboneError(f"the extractor graph has inputs/outputs {names}, expected ([{INPUT!r}], "
                                f"[{OUTPUT!r}]); re-export it with patchcore-export")
        s = config.input_size
        probe = self.embed_pixels(np.zeros((1, s, s, 3), dtype=np.uint8))
        self.grid: tuple[int, int] = (int(probe.shape[1]), int(probe.shape[2]))
        self.dim: int = int(probe.shape[3])

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 or float32 0..255 -> (B, h, w, D) float32 patch embeddings."""
        return self.session.run([OUTPUT], {INPUT: check_pixels(pixels, self.config)})[0]

    def embed(self, images) -> np.ndarray:
        """uint8 RGB arrays -> (B, h, w, D) float32 patch embeddings."""
        from model.preprocess import pixels

        return self.embed_pixels(pixels(images, self.config))
