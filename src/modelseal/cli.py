"""The `modelseal` command line: a thin layer over ``modelseal.api``, generated from the configs.

Each command's options are its config class's fields (``modelseal.config``): the field's
description is the help, its Literal the choices, its default the default shown; a field
spelled otherwise says so (``config.flag``). Every command also takes --out DIR (run folder:
config.yaml, manifest.json, log.txt, results.json), --json (print results.json on stdout),
--device, --config FILE.YAML or preset name, --overwrite. Only options given on the command
line override the --config file. Bad input exits with code 2 and one line on stderr that
says what and how to fix it. Fields holding a nested section (the demo's) are set through
--config only.
"""
from __future__ import annotations

import inspect
import json
import signal
import sys
import types
import typing
from pathlib import Path

import click
from click.core import ParameterSource
from pydantic import BaseModel

from . import __version__, api
from .config import CONFIGS, checked_config_text, command_key, preset_names
from .errors import InputError
from .models.quiet import quiet_loading
from .runs import stop_signal

GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
SCALARS = {int: click.INT, float: click.FLOAT, str: click.STRING, Path: click.Path(path_type=Path)}


def _strip_optional(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def option_for(model: type[BaseModel], name: str) -> click.Option | None:
    """The click option of config field `name` (None for a nested section: --config only)."""
    field = model.model_fields[name]
    tp = _strip_optional(field.annotation)
    multiple, nargs = typing.get_origin(tp) is list, 1
    if multiple:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        tp, nargs = args[0], len(args)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return None
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    spelling = extra.get("flag") or "--" + name.replace("_", "-")
    required = field.is_required()
    default = None if required else field.default
    help_ = (field.description or "") + (" [required: here or in --config]" if required else "")
    if tp is bool:
        if "/" not in spelling and "flag" not in extra:
            spelling = f"{spelling}/--no-{spelling[2:]}"
        return click.Option([spelling, name], is_flag=True, default=default, show_default=True, help=help_)
    if typing.get_origin(tp) is typing.Literal:
        values = typing.get_args(tp)
        kind = click.Choice([str(v) for v in values])
    else:
        kind = SCALARS[tp]
    if multiple:
        default = tuple(default or ())
    return click.Option([spelling, name], type=kind, default=default, multiple=multiple, nargs=nargs,
                        show_default=default not in (None, ()), help=help_)


def _value(model: type[BaseModel], name: str, value):
    """A click value as the config field takes it (Literal of ints back to int, tuples to lists)."""
    tp = _strip_optional(model.model_fields[name].annotation)
    inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
    if typing.get_origin(inner) is typing.Literal and all(isinstance(v, int) for v in typing.get_args(inner)):
        return [int(v) for v in value] if isinstance(value, tuple) and typing.get_origin(tp) is list else int(value)
    return list(value) if typing.get_origin(tp) is list else value


def config_options(model: type[BaseModel]) -> dict[str, click.Option]:
    """Field name -> click option, for every field the command line reaches; the command's own
    fields (its inputs) first, then those of the option classes it inherits."""
    own = [n for c in model.__mro__ for n in vars(c).get("__annotations__", {}) if n in model.model_fields]
    order = list(dict.fromkeys(own))
    return {n: o for n in order if (o := option_for(model, n)) is not None}


def _summary(model: type[BaseModel]) -> str:
    """The config's first line without its '`modelseal x`: ' prefix, capitalised."""
    doc = (model.__doc__ or "").strip().split("\n\n")[0]
    doc = doc.split(": ", 1)[1] if doc.startswith("`modelseal") else doc
    return " ".join(doc.split())[:1].upper() + " ".join(doc.split())[1:]


def make_command(command: str) -> click.Command:
    """The click command of `command` ('lock train'), generated from its config class."""
    model = CONFIGS[command_key(command)]
    fields = config_options(model)
    run = api.COMMANDS[command]
    is_build, has_device = command == "zoo build", command != "watermark prompts"

    def callback(out, as_json, config, overwrite=False, device="cpu", **values):
        ctx = click.get_current_context()
        options = {n: _value(model, n, v) for n, v in values.items() if ctx.get_parameter_source(n) in GIVEN}
        kwargs = {"out": out, "overwrite": overwrite} | ({"device": device} if has_device else {})
        result = run(config, **kwargs, **options)
        if as_json:
            sys.stdout.write(json.dumps(result.results, default=str) + "\n")

    common = [click.Option(["--out", "out"], type=click.Path(path_type=Path), required=not is_build,
                           help="zoo folder (default $MODELSEAL_HOME/zoo, which then wins over the shipped zoo)"
                           if is_build else "run folder to write (created if missing)"),
              click.Option(["--json", "as_json"], is_flag=True, help="print results.json on stdout"),
              click.Option(["--config", "config"], help="YAML file or shipped preset name (`modelseal config list`) "
                           "of options; options given here win")]
    if has_device:
        common.append(click.Option(["--device", "device"], default="auto", show_default=True,
                                   help="auto | cpu | cuda | cuda:N | mps"))
    common.append(click.Option(["--overwrite", "overwrite"], is_flag=True, help="--out holds another run (other "
                               "command or options): delete what that run wrote and start this one; the same "
                               "command and options resume (or repeat) the run there. A folder of your own is "
                               "written into beside your files, never over them"))
    doc = inspect.cleandoc(run.__doc__ or "").split("Options:")[0].strip()
    return click.Command(command.split()[-1], callback=callback, params=[*fields.values(), *common],
                         help=doc.replace("``", "'"), short_help=_summary(model))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="modelseal")
def app():
    """Protect and prove ownership of large vision models."""


GROUPS = {"zoo": "The tiny model zoo: build, evaluate, list.", "data": "Built-in data sets.",
          "lock": "IP-CLIP: lock a CLIP model to its licensed data domain.",
          "watermark": "SleeperMark: a trigger watermark in a text-to-image model.",
          "config": "Shipped option presets (--config NAME)."}
groups = {name: app.group(name, help=text, no_args_is_help=True)(lambda: None) for name, text in GROUPS.items()}
for _cmd in api.COMMANDS:
    _parts = _cmd.split()
    (groups[_parts[0]] if len(_parts) == 2 else app).add_command(make_command(_cmd))


def _table(rows: list[dict], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for r in rows:
        table.add_row(*(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in columns))
    Console().print(table)


@groups["zoo"].command("real-layout")
@click.argument("names", nargs=-1, required=True, type=click.Choice(["sd15", "sd21", "sdxl", "clip-b16"]))
@click.option("--out", type=click.Path(path_type=Path), help="root folder (default $MODELSEAL_HOME/real-layout)")
@click.option("--force", is_flag=True, help="rebuild a folder that is already there")
def zoo_real_layout(names, out, force):
    """Random-weight checkpoints with the exact published configs and hub folder layout of SD 1.5,
    SD 2.1 (v-prediction), SDXL base and CLIP ViT-B/16: every command can then be tried on real
    shapes without a download (several GB each)."""
    from .models.real_layout import build

    quiet_loading()
    for name in names:
        api.stderr_log(f"{name}: {build(name, out, log=api.stderr_log, force=force)}")


@groups["zoo"].command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON on stdout")
def zoo_list(as_json):
    """Each tiny model: size, parameters, origin (shipped or rebuilt) and content hash."""
    from .models.zoo import zoo_table

    rows = zoo_table()
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    for r in rows:
        r["sha256"] = r["sha256"][:16]
    _table(rows, ["model", "origin", "size_mb", "params_m", "sha256", "folder"])


@groups["data"].command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON on stdout")
def data_list(as_json):
    """The built-in data sets with their split sizes."""
    from .data.sources import builtin_table

    rows = builtin_table()
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    _table(rows, ["source", "train", "test", "classes", "description"])


@groups["watermark"].command("keygen")
@click.option("--key", type=click.Path(path_type=Path), required=True, help="key file to create (mode 0600)")
@click.option("--overwrite", is_flag=True, help="replace an existing key file")
def wm_keygen(key, overwrite):
    """Create an owner key file. Keep it secret: whoever holds it can verify (and forge) the mark."""
    api.stderr_log(f"key: {api.watermark_keygen(key, overwrite)}")


@groups["config"].command("list")
def config_list():
    """The shipped presets, by command."""
    for name in preset_names():
        click.echo(f"{name:36s} modelseal {name.split('.')[0].replace('-', ' ', 1)} --config {name}")


@groups["config"].command("show")
@click.argument("name")
def config_show(name):
    """Print a preset's YAML (a starting point for your own --config file), or check a config
    file of your own and print it."""
    click.echo(checked_config_text(name), nl=False)


def _fail(msg: str, code: int = 2) -> typing.NoReturn:
    sys.stderr.write(" ".join(msg.split()) + "\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0, 2 on bad input (one line), 128 + signal when interrupted."""
    try:
        with app.make_context("modelseal", list(sys.argv[1:] if argv is None else argv)) as ctx:
            app.invoke(ctx)
    except InputError as e:
        _fail(f"error: {e}")
    except KeyboardInterrupt as e:
        sig = getattr(e, "signum", None) or stop_signal() or signal.SIGINT
        how = "" if sig == signal.SIGINT else f" ({signal.Signals(sig).name})"
        _fail(f"interrupted{how}; rerun the same command to resume", 128 + int(sig))
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else app.get_help(click.Context(app)))
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        where = e.ctx.command_path if getattr(e, "ctx", None) else "modelseal"
        _fail(f"error: {e.format_message()} (fix: see '{where} --help')", e.exit_code)


if __name__ == "__main__":
    main()
