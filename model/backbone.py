"""Build the frozen feature extractor from the config.

Weights come through torchvision's own weights API (``mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)``):
online it downloads as usual, offline it reads torchvision's cache, which ``patchcore-fetch-weights`` seeds.
Features are taken with ``create_feature_extractor``: named outputs, no hooks, no shared state, and layers after
the deepest requested one are never computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import hub, nn
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torch.nn.utils.fusion import fuse_conv_bn_eval

from model.config import PatchCoreConfig
from model.errors import BackboneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., nn.Module]
    weights: models.WeightsEnum
    # Modules whose outputs make sensible patch features, shallow to deep, with their stride.
    feature_modules: dict[str, int]


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        models.mobilenet_v2,
        models.MobileNet_V2_Weights.IMAGENET1K_V1,
        {f"features.{i}": s for i, s in zip(range(1, 19), (2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32))},
    ),
    "wide_resnet50_2": BackboneSpec(
        models.wide_resnet50_2,
        models.Wide_ResNet50_2_Weights.IMAGENET1K_V1,
        {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32},
    ),
    "resnet18": BackboneSpec(
        models.resnet18,
        models.ResNet18_Weights.IMAGENET1K_V1,
        {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32},
    ),
}


def check_layers(config: PatchCoreConfig) -> BackboneSpec:
    """Raise ConfigError-like BackboneError naming valid choices for an unknown backbone or layer."""
    spec = BACKBONES.get(config.backbone)
    if spec is None:
        raise BackboneError(f"unknown backbone {config.backbone!r}; valid backbones: {', '.join(sorted(BACKBONES))}")
    bad = [layer for layer in config.layers if layer not in spec.feature_modules]
    if bad:
        raise BackboneError(
            f"unknown layer(s) {bad} for {config.backbone}; valid layers: {', '.join(spec.feature_modules)}"
        )
    strides = [spec.feature_modules[layer] for layer in config.layers]
    if strides != sorted(strides):
        raise BackboneError(f"layers must go from shallow to deep (strides {strides}); reorder {list(config.layers)}")
    return spec


def _load_model(config: PatchCoreConfig, spec: BackboneSpec) -> nn.Module:
    if not config.pretrained:
        # Random init, seeded without touching the global RNG: a rebuilt extractor is the same one.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return spec.build(weights=None)
    try:
        return spec.build(weights=spec.weights)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        raise BackboneError(
            f"cannot load the pretrained {config.backbone} weights ({spec.weights}): {exc}. Offline, put "
            f"{spec.weights.url.rsplit('/', 1)[-1]} into {hub.get_dir()}/checkpoints "
            "(for mobilenet_v2: run `patchcore-fetch-weights`)"
        ) from exc


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it (same outputs, ~2x less work on CPU).

    Covers the torchvision layouts: Conv2d then BatchNorm2d inside a Sequential (MobileNet, ResNet downsample), and
    convN / bnN attribute pairs (ResNet stem and blocks).
    """
    for module in model.modules():
        kids = module._modules
        names = list(kids)
        for first, second in zip(names, names[1:]):
            if isinstance(kids[first], nn.Conv2d) and isinstance(kids[second], nn.BatchNorm2d):
                if isinstance(module, nn.Sequential) or first.replace("conv", "bn") == second:
                    kids[first] = fuse_conv_bn_eval(kids[first], kids[second])
                    kids[second] = nn.Identity()
    return model


def build_extractor(config: PatchCoreConfig, device: torch.device | str = "cpu") -> nn.Module:
    """A frozen module mapping (B, 3, S, S) normalised images to {layer: (B, C, h, w)}."""
    spec = check_layers(config)
    model = fold_batchnorm(_load_model(config, spec).eval())
    nodes = set(get_graph_node_names(model)[1])
    missing = [layer for layer in config.layers if layer not in nodes and not any(n.startswith(layer + ".") for n in nodes)]
    if missing:
        raise BackboneError(f"layers {missing} are not nodes of {config.backbone}")
    extractor = create_feature_extractor(model, return_nodes={layer: layer for layer in config.layers})
    extractor.requires_grad_(False)
    # channels_last is what oneDNN's convolutions want on CPU (about 2x faster here for MobileNetV2).
    return extractor.eval().to(device=device, memory_format=torch.channels_last)
