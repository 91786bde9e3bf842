"""The command line is the configs: for every command its options are its config's fields,
with the same names, defaults and choices, and a value given on the command line reaches
the config the run records."""
import types
import typing

import click
import pytest
from pydantic import BaseModel

from modelseal import api
from modelseal.cli import app, config_options
from modelseal.config import CONFIGS, command_key, load_config, option_flag
from modelseal.errors import InputError

COMMON = {"out", "as_json", "config", "device", "overwrite"}


def _command(name: str) -> click.Command:
    node = app
    for part in name.split():
        node = node.commands[part]
    return node


def _literal(tp):
    tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if typing.get_origin(tp) in (
        typing.Union, types.UnionType) else tp
    tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


@pytest.mark.parametrize("name", list(api.COMMANDS))
def test_cli_options_equal_config_fields(name):
    model = CONFIGS[command_key(name)]
    params = {p.name: p for p in _command(name).params if p.name not in COMMON}
    nested = {n for n, f in model.model_fields.items()
              if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    assert set(params) == set(model.model_fields) - nested  # every field reachable, nothing else
    for n, p in params.items():
        field = model.model_fields[n]
        assert option_flag(model, n) in p.opts, (n, p.opts)
        default = None if field.is_required() else field.default
        shown = tuple(default) if isinstance(default, list) else default
        if p.multiple and default is None:  # a required list: click's empty tuple
            shown = ()
        assert p.default == shown, (n, p.default, shown)
        assert p.help.startswith(field.description or "")
        choices = _literal(field.annotation)
        if choices is not None:
            assert list(p.type.choices) == [str(c) for c in choices], n


def test_nested_sections_are_config_only():
    assert set(config_options(CONFIGS["demo"])) == {"quick", "seed", "sections", "processes"}


def test_a_given_option_reaches_the_config_others_keep_the_file(tmp_path, monkeypatch):
    seen = {}

    def fake(config, **kw):
        cfg = load_config(config, CONFIGS["finetune"], {k: v for k, v in kw.items()
                                                         if k not in ("out", "device", "overwrite")}, "finetune")
        seen["cfg"] = cfg
        return api.Run(tmp_path, "finetune", cfg, {})

    monkeypatch.setitem(api.COMMANDS, "finetune", fake)
    from modelseal.cli import make_command

    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("steps: 7\nrank: 4\nbits: 4\n")
    cmd = make_command("finetune")
    cmd.main(["--out", str(tmp_path / "o"), "--config", str(yaml_file), "--rank", "16", "--flip",
              "--bits", "2", "--crop", "0.8"], standalone_mode=False)
    cfg = seen["cfg"]
    assert (cfg.steps, cfg.rank, cfg.flip, cfg.bits, cfg.crop, cfg.lr) == (7, 16, True, 2, 0.8, None)


def test_api_refuses_unknown_and_non_finite_options_before_any_work(tmp_path):
    with pytest.raises(InputError, match="did you mean 'steps'"):
        api.lock_train(out=tmp_path / "a", stepz=3)
    with pytest.raises(InputError, match="--lr: input should be a finite number"):
        api.finetune(out=tmp_path / "b", lr=float("inf"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_presets_by_name(tmp_path):
    from modelseal.config import resolve_config

    assert resolve_config("tiny", "watermark embed").name == "watermark-embed.tiny.yaml"
    assert resolve_config("lock-train.ownership").name == "lock-train.ownership.yaml"
    with pytest.raises(InputError, match="is for `modelseal lock train`"):
        resolve_config("lock-train.ownership", "audit")
    with pytest.raises(InputError, match="neither a file nor a shipped preset"):
        resolve_config("nope", "audit")


def test_a_run_reads_like_its_results(tmp_path):
    run = api.Run(tmp_path, "watermark verify", None, {"p_value": 0.5})
    assert run["p_value"] == 0.5 and "p_value" in run and "fidelity" not in run
    assert run.get("fidelity") is None and run.get("fidelity", {}) == {}
    with pytest.raises(KeyError):
        run["fidelity"]
