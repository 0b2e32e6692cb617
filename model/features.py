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
from PIL import Image

from model.backbone import IMAGENET_MEAN, IMAGENET_STD, build_extractor
from model.config import PatchCoreConfig
from model.errors import InputError


def crop_offset(config: PatchCoreConfig) -> int:
    """Top/left offset of the centre crop inside the resized image (torchvision's rounding)."""
    return int(round((config.image_size - config.input_size) / 2.0))


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise InputError(f"expected an (H, W, 3) uint8 RGB array, got {got}; decode images with imaging.decode")
    if min(image.shape[:2]) < 8:
        raise InputError(f"image of {image.shape[1]}x{image.shape[0]} pixels is too small (min 8x8)")
    return image


def resize_crop(image: np.ndarray, config: PatchCoreConfig) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) uint8: antialiased bilinear resize to image_size, then the centre crop."""
    size, crop, top = config.image_size, config.input_size, crop_offset(config)
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return image[top : top + crop, top : top + crop]


def preprocess(images: Sequence[np.ndarray], config: PatchCoreConfig) -> torch.Tensor:
    """(H_i, W_i, 3) uint8 arrays -> (B, 3, S, S) float32, ImageNet-normalised, channels_last, S = input_size."""
    batch = np.stack([resize_crop(check_image(image), config) for image in images])  # (B, S, S, 3) uint8
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()  # (B, 3, S, S), channels_last strides
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    return x.sub_(mean).div_(std)


def aggregate(
    feature_maps: Sequence[torch.Tensor], patch_size: int, aggregation: str, embedding_dim: int | None,
    patch_padding: str = "zeros",
) -> torch.Tensor:
    """Layer outputs [(B, C_l, h_l, w_l)] -> (B, h_0, w_0, D) patch embeddings.

    Each cell is averaged with its patch_size x patch_size neighbourhood (patch_padding "zeros": the zero padding
    beyond the border counts, "exclude": it does not), deeper layers are bilinearly resized to the first layer's
    grid, then combined.
    """
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
    if aggregation == "concat":
        return torch.cat(parts, dim=-1).contiguous()
    # "pool", as the official PatchCore code: each layer (B*h*w, 1, C_l) adaptively averaged to D channels, the
    # layers side by side (B*h*w, 1, L*D), then averaged down to D. Adjacent channels of one layer are merged, never
    # channels of two layers, and each layer ends up with D / L dimensions: equal weight whatever its width.
    b = parts[0].shape[0]
    pooled = [F.adaptive_avg_pool1d(p.reshape(-1, 1, p.shape[-1]), embedding_dim) for p in parts]
    out = F.adaptive_avg_pool1d(torch.cat(pooled, dim=-1), embedding_dim)  # (B*h*w, 1, D)
    return out.reshape(b, h, w, embedding_dim).contiguous()


class PatchEmbedder:
    """The backbone plus aggregation: a batch of images -> (B, h, w, D) float32 patch embeddings.

    Stateless between calls (named outputs from create_feature_extractor), so one instance serves concurrent
    requests. ``grid`` and ``dim`` are measured once with a dry run at construction.
    """

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

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 RGB arrays -> (B, h, w, D) float32 patch embeddings."""
        return self.embed_tensor(preprocess(images, self.config))

    def embed_pictures(self, images: Sequence[np.ndarray], tile_batch: int = 8) -> np.ndarray:
        """What the builder stores per picture: ``embed`` untiled; with config.tile_size, each picture's tiles
        (model.tiling, tile_batch per backbone pass) stacked along the rows -> (B, n_tiles * h, w, D). Tiled, every
        picture must have the size of the first."""
        cfg = self.config
        if cfg.tile_size is None:
            return self.embed(images)
        from model import tiling

        shape = images[0].shape[:2]
        out = []
        for image in images:
            if image.shape[:2] != shape:
                raise InputError(f"tiled builds need pictures of one size: got {image.shape[1]}x{image.shape[0]} after "
                                 f"{shape[1]}x{shape[0]}; build one index per picture size")
            tiles = [self.embed(list(t)) for t in tiling.iter_tiles(check_image(image), cfg.tile_size,
                                                                     cfg.tile_overlap, tile_batch)]
            emb = np.concatenate(tiles)  # (n_tiles, h, w, D)
            out.append(emb.reshape(-1, *emb.shape[2:]))  # (n_tiles * h, w, D)
        return np.stack(out)
