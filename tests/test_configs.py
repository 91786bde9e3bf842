"""Dry-run of every shipped config: it parses and validates against its command's model."""
import pytest

from modelseal.config import ZooBuildConfig, ZooConfig, config_model_for, load_config, shipped_configs


def test_there_are_shipped_configs():
    assert len(shipped_configs()) >= 3


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_shipped_config_validates(path):
    load_config(path, config_model_for(path))


def test_a_zoo_preset_gives_the_recipe_options_not_given_and_a_recorded_config_keeps_them():
    full = load_config("zoo-build", ZooBuildConfig)
    assert full.model_dump(include=set(ZooConfig.model_fields)) == ZooConfig().model_dump()
    micro = load_config("micro", ZooBuildConfig, {"clip_steps": 9}, command="zoo build")
    assert (micro.clip_steps, micro.unet_steps, micro.unet_channels, micro.clip_lr) == (9, 6, [32, 64], full.clip_lr)
    assert load_config(micro.model_dump(), ZooBuildConfig) == micro


def test_the_tiny_embed_preset_is_the_shipped_sleepers_recipe():
    """What a user embeds their own key with is what the shipped sleeper was trained and measured with."""
    from modelseal.config import WatermarkEmbedConfig
    from modelseal.models.sleeper_entry import entry_record

    recipe = load_config("watermark-embed.tiny", WatermarkEmbedConfig, command="watermark embed").model_dump()
    shipped = entry_record()["stage2"]
    owner = {"key", "model_id", "codec"}  # the owner's own, not the recipe
    differ = {k: (recipe[k], v) for k, v in shipped.items() if k in recipe and k not in owner and recipe[k] != v}
    assert not differ, differ
    assert shipped["delta_scale"] == 3.0 and recipe["steps"] == shipped["steps"]


def test_the_fast_audit_preset_is_the_reference_with_fewer_steps():
    """audit.fast differs from audit only in its PGD steps (the default verdict does not use them)."""
    from modelseal.config import CONFIG_DIR, AuditConfig, InversionOptions

    ref, fast = load_config("audit", AuditConfig), load_config("audit.fast", AuditConfig)
    differ = {k for k, v in ref.model_dump().items() if fast.model_dump()[k] != v}
    assert differ == {"steps"} and fast.steps < ref.steps and fast.score == ref.score == AuditConfig().score
    # and sets nothing else: no model or input, so a LoRA's recorded base (lora_base.json) is not overridden
    import yaml

    keys = set(yaml.safe_load(CONFIG_DIR.joinpath("audit.fast.yaml").read_text()))
    assert keys == set(yaml.safe_load(CONFIG_DIR.joinpath("audit.yaml").read_text()))
    assert keys <= set(InversionOptions.model_fields) | {"metric", "score", "dtype"}, keys
