"""Pydantic configs of the commands: YAML in (``--config``), YAML out (run folder).

Command-line options override values from a ``--config`` file; the merged, validated
config is what a run folder records in config.yaml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ZooBuildConfig(Strict):
    """`modelseal zoo build`: trains the tiny zoo (fields mirror models.zoo_build.ZooConfig)."""
    preset: Literal["full", "micro"] = "full"
    seed: int = 0
    clip_steps: int | None = Field(None, ge=1)
    judge_steps: int | None = Field(None, ge=1)
    vae_steps: int | None = Field(None, ge=1)
    unet_steps: int | None = Field(None, ge=1)
    evaluate: bool = True

    def to_zoo_config(self):
        from dataclasses import replace

        from .models.zoo_build import ZooConfig

        base = ZooConfig.micro() if self.preset == "micro" else ZooConfig()
        overrides = {k: v for k, v in self.model_dump().items()
                     if k.endswith("_steps") and v is not None}
        return replace(base, seed=self.seed, **overrides)


class ZooEvalConfig(Strict):
    """`modelseal zoo eval`: zero-shot CLIP accuracy and judged T2I prompt accuracy."""
    per_prompt: int = Field(10, ge=1, description="samples per (domain, digit) prompt")
    steps: int = Field(30, ge=1, description="DDIM steps")
    guidance: float = Field(4.0, ge=0.0, description="classifier-free guidance scale")
    seed: int = 0


class DemoConfig(Strict):
    """`modelseal demo`: the embedded default end to end, with an HTML report."""
    quick: bool = False
    seed: int = 0
    zoo: ZooEvalConfig = ZooEvalConfig(per_prompt=5)
    zoo_quick: ZooEvalConfig = ZooEvalConfig(per_prompt=2, steps=20)


CONFIGS = {"zoo-build": ZooBuildConfig, "zoo-eval": ZooEvalConfig, "demo": DemoConfig}


def load_config(path: str | Path | None, model: type[BaseModel], overrides: dict | None = None) -> BaseModel:
    """Read a YAML config (optional), apply non-None overrides, validate; bad input -> InputError."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"config file '{path}' does not exist", "give the path of a YAML file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise InputError(f"config file '{path}' is not valid YAML{where}", "fix the YAML syntax") from None
        if not isinstance(data, dict):
            raise InputError(f"config file '{path}' must hold a mapping of options", "write key: value lines")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise InputError(f"bad config value for '{loc}': {err['msg']}",
                         f"see `modelseal <command> --help`; valid keys: {', '.join(model.model_fields)}") from None


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml"))


def config_model_for(path: Path) -> type[BaseModel]:
    """Shipped configs are named <command>[.<variant>].yaml."""
    return CONFIGS[path.name.split(".")[0]]


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
