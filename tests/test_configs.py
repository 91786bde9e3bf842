"""Dry-run of every shipped config: it parses and validates against its command's model."""
import pytest

from modelseal.config import config_model_for, load_config, shipped_configs


def test_there_are_shipped_configs():
    assert len(shipped_configs()) >= 3


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_shipped_config_validates(path):
    cfg = load_config(path, config_model_for(path))
    if hasattr(cfg, "to_zoo_config"):
        zc = cfg.to_zoo_config()
        assert zc.unet_steps >= 1 and zc.seed == cfg.seed
