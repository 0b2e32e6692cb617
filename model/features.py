"""Images -> patch embeddings (paper section 3.1).

    uint8 RGB arrays -> resize (+ centre crop) -> ImageNet normalisation -> backbone layers
    -> local p x p neighbourhood average per layer (f_agg, eq. 2) -> deeper layers resized to the first grid
    -> concatenation (or per-layer adaptive pooling to a fixed dimension) -> (B, h, w, D) patch embeddings
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import build_extractor
from model.config import PatchCoreConfig
from model.extractor import check_pixels
# Re-exported: the torch-free pre-processing lives in model/preprocess.py.
from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_image, crop_offset, pixels, resize_crop  # noqa: F401


def _mean_std() -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std in 0..255 pixel units, (1, 3, 1, 1)."""
    return (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)


def preprocess(images: Sequence[np.ndarray], config: PatchCoreConfig) -> torch.Tensor:
    """(H_i, W_i, 3) uint8 arrays -> (B, 3, S, S) float32, ImageNet-normalised, channels_last, S = input_size."""
    return normalise_pixels(torch.from_numpy(pixels(images, config)))


def normalise_pixels(batch: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 or float 0..255 -> (B, 3, S, S) float32 ImageNet-normalised (channels_last strides)."""
    mean, std = _mean_std()
    x = batch.permute(0, 3, 1, 2).to(torch.float32, copy=True)  # (B, S, S, 3) -> (B, 3, S, S), never the caller's
    return x.sub_(mean).div_(std)


def local_parts(feature_maps: Sequence[torch.Tensor], patch_size: int, patch_padding: str) -> list[torch.Tensor]:
    """[(B, C_l, h_l, w_l)] -> [(B, h_0, w_0, C_l)]: each cell averaged with its neighbourhood (f_agg, eq. 2), deeper
    layers bilinearly resized to the first layer's grid."""
    h, w = feature_maps[0].shape[-2:]
    parts = []
    for fmap in feature_maps:
        fmap = fmap.float()
        if patch_size > 1:
            fmap = F.avg_pool2d(fmap, patch_size, stride=1, padding=patch_size // 2,
                                count_include_pad=patch_padding == "zeros")
        if fmap.shape[-2:] != (h, w):
            fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
        parts.append(fmap.permute(0, 2, 3, 1))  # (B, C, h, w) -> (B, h, w, C)
    return parts


def pool_matrix(channels: Sequence[int], embedding_dim: int) -> torch.Tensor:
    """The "pool" aggregation as one linear map: (sum C_l, D) float32 with cat(parts) @ matrix == aggregate(...).

    Adaptive average pooling is linear, so pooling the identity gives its matrix (computed in float64). The ONNX
    graph uses it: the legacy exporter has no adaptive pooling to a size that does not divide the input.
    """
    total = sum(channels)
    eye = torch.eye(total, dtype=torch.float64)
    parts, lo = [], 0
    for c in channels:
        parts.append(eye[:, lo : lo + c].reshape(total, 1, 1, c))  # basis vectors as (B=total, h=1, w=1, C_l)
        lo += c
    return _pool(parts, embedding_dim).reshape(total, embedding_dim).float()


def _pool(parts: Sequence[torch.Tensor], embedding_dim: int) -> torch.Tensor:
    # "pool", as the official PatchCore code: each layer (B*h*w, 1, C_l) adaptively averaged to D channels, the
    # layers side by side (B*h*w, 1, L*D), then averaged down to D. Adjacent channels of one layer are merged, never
    # channels of two layers, and each layer ends up with D / L dimensions: equal weight whatever its width.
    b, h, w = parts[0].shape[:3]
    pooled = [F.adaptive_avg_pool1d(p.reshape(-1, 1, p.shape[-1]), embedding_dim) for p in parts]
    out = F.adaptive_avg_pool1d(torch.cat(pooled, dim=-1), embedding_dim)  # (B*h*w, 1, D)
    return out.reshape(b, h, w, embedding_dim).contiguous()


def aggregate(
    feature_maps: Sequence[torch.Tensor], patch_size: int, aggregation: str, embedding_dim: int | None,
    patch_padding: str = "zeros",
) -> torch.Tensor:
    """Layer outputs [(B, C_l, h_l, w_l)] -> (B, h_0, w_0, D) patch embeddings.

    Each cell is averaged with its patch_size x patch_size neighbourhood (patch_padding "zeros": the zero padding
    beyond the border counts, "exclude": it does not), deeper layers are bilinearly resized to the first layer's
    grid, then combined.
    """
    parts = local_parts(feature_maps, patch_size, patch_padding)
    if aggregation == "concat":
        return torch.cat(parts, dim=-1).contiguous()
    return _pool(parts, embedding_dim)


class PatchEmbedder:
    """The torch runtime of the extractor contract (model/extractor.py): pixels -> (B, h, w, D) float32 patch
    embeddings, with torchvision's backbone.

    Stateless between calls (named outputs from create_feature_extractor), so one instance serves concurrent
    requests. ``grid`` and ``dim`` are measured once with a dry run at construction.
    """

    runtime = "torch"

    def __init__(self, config: PatchCoreConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.extractor = build_extractor(config, self.device)
        probe = self.embed_tensor(torch.zeros(1, 3, config.input_size, config.input_size))
        self.grid: tuple[int, int] = (int(probe.shape[1]), int(probe.shape[2]))
        self.dim: int = int(probe.shape[3])

    @torch.inference_mode()
    def embed_tensor(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) normalised -> (B, h, w, D) float32 numpy."""
        outputs = self.extractor(batch.to(self.device, memory_format=torch.channels_last, non_blocking=True))
        maps = [outputs[layer] for layer in self.config.layers]
        emb = aggregate(maps, self.config.patch_size, self.config.aggregation, self.config.embedding_dim,
                        self.config.patch_padding)
        return emb.cpu().numpy()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 or float32 0..255 -> (B, h, w, D) float32 patch embeddings."""
        return self.embed_tensor(normalise_pixels(torch.from_numpy(check_pixels(pixels, self.config))))

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 RGB arrays -> (B, h, w, D) float32 patch embeddings."""
        return self.embed_tensor(preprocess(images, self.config))

    def graph(self) -> nn.Module:
        """This extractor as one module from pixels to patch embeddings, for the ONNX export."""
        return EmbeddingGraph(self.extractor, self.config).eval()


class EmbeddingGraph(nn.Module):
    """(B, S, S, 3) float32 RGB pixels in 0..255 -> (B, h, w, D) patch embeddings: normalisation, backbone, local
    aggregation and pooling in one traceable module (what extractor.onnx computes). The pooling is its matrix
    (pool_matrix); everything else is the same code as PatchEmbedder."""

    def __init__(self, extractor: nn.Module, config: PatchCoreConfig) -> None:
        super().__init__()
        self.extractor = extractor
        self.config = config
        mean, std = _mean_std()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        s = config.input_size
        with torch.inference_mode():
            probe = extractor(torch.zeros(1, 3, s, s, device=mean.device))
        channels = [int(probe[layer].shape[1]) for layer in config.layers]
        if config.aggregation == "pool":
            self.register_buffer("pool", pool_matrix(channels, config.embedding_dim))
        else:
            self.pool = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.permute(0, 3, 1, 2) - self.mean) / self.std  # (B, S, S, 3) -> (B, 3, S, S), normalised
        outputs = self.extractor(x)
        parts = local_parts([outputs[layer] for layer in self.config.layers], self.config.patch_size,
                            self.config.patch_padding)
        joined = torch.cat(parts, dim=-1)  # (B, h, w, sum C_l)
        return joined if self.pool is None else joined @ self.pool  # (B, h, w, D)
