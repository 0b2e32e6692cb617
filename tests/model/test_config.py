import pytest

from model.config import IndexConfig, PatchCoreConfig
from model.errors import ConfigError


def test_round_trip_through_dict():
    c = PatchCoreConfig(layers=("features.5", "features.12"), crop_size=224, index=IndexConfig(kind="hnsw"))
    assert PatchCoreConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("changes, message", [
    ({"coreset_ratio": 0.0}, "coreset_ratio"),
    ({"coreset_ratio": 1.5}, "coreset_ratio"),
    ({"crop_size": 300}, "crop_size"),
    ({"patch_size": 2}, "odd"),
    ({"aggregation": "sum"}, "concat, pool"),
    ({"aggregation": "pool", "embedding_dim": 0}, "embedding_dim >= 1"),
    ({"aggregation": "concat", "embedding_dim": 64}, "applies to aggregation 'pool' only"),
    ({"layers": ()}, "non-empty"),
])
def test_bad_values_raise_with_the_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        PatchCoreConfig(**changes)


def test_defaults_are_the_measured_ones():
    c = PatchCoreConfig()
    assert (c.backbone, c.layers, c.image_size, c.crop_size) == ("mobilenet_v2", ("features.6", "features.13"), 256, None)
    assert (c.aggregation, c.embedding_dim, c.coreset_ratio, c.patch_padding) == ("concat", None, 0.01, "zeros")
    assert PatchCoreConfig(aggregation="pool").embedding_dim == 128


def test_unknown_keys_and_index_kinds_are_refused():
    with pytest.raises(ConfigError, match="unknown model config keys"):
        PatchCoreConfig.from_dict({**PatchCoreConfig().to_dict(), "corset_ratio": 0.1})
    with pytest.raises(ConfigError, match="flat, ivf_flat, hnsw, ivf_pq"):
        IndexConfig(kind="lsh")
