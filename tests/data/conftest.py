import ml_collections
import pytest

DEFAULTS = dict(source="embedded", name="imagenet2012", split="train", data_dir=None, manual_dir=None,
                folder=None, synthetic_size=64)


@pytest.fixture
def data_config():
    """data_config(**overrides) -> a `data` ConfigDict with the keys mimjax.data reads."""
    return lambda **kw: ml_collections.ConfigDict({**DEFAULTS, **kw})
