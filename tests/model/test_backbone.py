from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from model.backbone import build_extractor
from model.config import PatchCoreConfig
from model.errors import BackboneError
from model.features import PatchEmbedder

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(BackboneError, match="mobilenet_v2.*wide_resnet50_2"):
        build_extractor(PatchCoreConfig(backbone="vgg16"))


def test_unknown_layer_lists_valid_layers():
    with pytest.raises(BackboneError, match=r"features\.6.*features\.13"):
        build_extractor(PatchCoreConfig(layers=("features.6", "classifier")))


def test_layers_out_of_order_are_refused():
    with pytest.raises(BackboneError, match="shallow to deep"):
        build_extractor(PatchCoreConfig(layers=("features.13", "features.6")))


def test_wide_resnet50_2_plumbing_with_random_init():
    """The paper's backbone: layer2 (512 ch, stride 8) + layer3 (1024 ch, stride 16) -> 1536-d on a 28x28 grid."""
    config = PatchCoreConfig(backbone="wide_resnet50_2", layers=("layer2", "layer3"), pretrained=False, aggregation="concat",
                             image_size=224)
    a = PatchEmbedder(config)
    assert (a.dim, a.grid) == (1536, (28, 28))
    image = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    emb = a.embed([image])
    assert emb.shape == (1, 28, 28, 1536) and np.isfinite(emb).all()
    np.testing.assert_array_equal(PatchEmbedder(config).embed([image]), emb)  # seeded init: same extractor


def test_default_backbone_dimensions():
    e = PatchEmbedder(PatchCoreConfig())
    assert (e.dim, e.grid) == (32 + 96, (32, 32))  # features.6 + features.13 at 256 px, stride 8


def test_real_weights_classify_a_real_photo():
    """Catches random or mis-loaded weights: the torchvision-loaded MobileNetV2 must see the cat."""
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    model = torchvision.models.mobilenet_v2(weights=weights).eval()
    x = weights.transforms()(Image.open(ASSETS / "chelsea.jpg").convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        top = int(model(x).argmax())
    assert weights.meta["categories"][top] in {"tabby", "tiger cat", "Egyptian cat"}


def test_extractor_features_come_from_the_pretrained_weights():
    """The feature extractor (BN folded, channels_last) gives the same layer output as the plain torchvision model."""
    config = PatchCoreConfig(layers=("features.6",), patch_size=1, image_size=64)
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    plain = torchvision.models.mobilenet_v2(weights=weights).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = plain.features[:7](x)
        got = build_extractor(config)(x)["features.6"]
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
