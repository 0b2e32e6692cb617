import numpy as np
import pytest
import torch

from model.backbone import fold_batchnorm
from model.config import PatchCoreConfig
from model.features import aggregate, crop_offset, preprocess, resize_crop


def test_aggregation_matches_a_hand_computed_case():
    # One 3x3 single-channel map; 3x3 neighbourhood average counting only cells inside the map ("exclude"), or the
    # zero padding too ("zeros": every average is over 9 cells).
    x = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    sums = np.array([[0 + 1 + 3 + 4, 0 + 1 + 2 + 3 + 4 + 5, 1 + 2 + 4 + 5],
                     [0 + 1 + 3 + 4 + 6 + 7, 36, 1 + 2 + 4 + 5 + 7 + 8],
                     [3 + 4 + 6 + 7, 3 + 4 + 5 + 6 + 7 + 8, 4 + 5 + 7 + 8]], dtype=float)
    cells = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]], dtype=float)
    for padding, expected in (("exclude", sums / cells), ("zeros", sums / 9)):
        out = aggregate([x], patch_size=3, aggregation="concat", embedding_dim=None, patch_padding=padding)
        assert out.shape == (1, 3, 3, 1)
        np.testing.assert_allclose(out[0, :, :, 0].numpy(), expected, rtol=1e-6)


def test_deeper_layer_is_resized_to_the_first_grid_and_concatenated():
    shallow = torch.ones(2, 4, 8, 8)
    deep = torch.full((2, 6, 4, 4), 3.0)
    out = aggregate([shallow, deep], patch_size=3, aggregation="concat", embedding_dim=None, patch_padding="exclude")
    assert out.shape == (2, 8, 8, 10)
    np.testing.assert_allclose(out[..., :4].numpy(), 1.0)
    np.testing.assert_allclose(out[..., 4:].numpy(), 3.0, rtol=1e-6)  # constant map stays constant


def test_pool_aggregation_gives_each_layer_half_the_dimensions_without_mixing_them():
    a = torch.arange(4, dtype=torch.float32).view(1, 4, 1, 1).expand(1, 4, 2, 2)  # channels 0, 1, 2, 3
    b = torch.full((1, 12, 2, 2), 5.0)
    out = aggregate([a, b], patch_size=1, aggregation="pool", embedding_dim=4)
    assert out.shape == (1, 2, 2, 4)
    # layer a pooled to 4 then merged in pairs: (0+1)/2, (2+3)/2; layer b: 5, 5. Whatever the channel counts.
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0.5, 2.5, 5.0, 5.0])


def test_preprocess_resizes_crops_and_normalises():
    config = PatchCoreConfig(image_size=64, crop_size=48)
    image = np.zeros((100, 150, 3), np.uint8)
    image[..., 0] = 255
    x = preprocess([image, image], config)
    assert x.shape == (2, 3, 48, 48) and crop_offset(config) == 8
    np.testing.assert_allclose(x[0, 0].numpy(), (1 - 0.485) / 0.229, rtol=1e-5)
    np.testing.assert_allclose(x[0, 1].numpy(), -0.456 / 0.224, rtol=1e-5)


def test_centre_crop_keeps_the_centre():
    config = PatchCoreConfig(image_size=64, crop_size=32)
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 200  # exactly the crop window
    np.testing.assert_array_equal(resize_crop(image, config), 200)


def test_batchnorm_folding_keeps_the_outputs():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    for m in model.modules():  # non-trivial statistics, so a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        after = fold_batchnorm(model)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
