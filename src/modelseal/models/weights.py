"""Weight files and the errors of loading them, as one line a user can act on.

Two different faults look alike from the outside and are told apart here:
  unreadable   the file is corrupt, truncated or not safetensors (read_safetensors)
  mismatched   the file reads, but its tensors do not fit the model built from the config:
               missing or extra names, other shapes (mismatch_line, from the error torch,
               diffusers or peft raised, without the libraries' advice on their own
               keyword arguments)
A LoRA file that reads is also checked for what no library refuses (check_lora_weights):
non-finite weights and layers with one half only.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import InputError


def read_safetensors(path: str | Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (on the CPU), or one InputError naming the file
    when it cannot be read: `what` names the file's role, `fix` says how to get a good one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot read {what} '{path}': it is corrupt, truncated or not safetensors ({why[:120]})",
                         fix) from None


# the two halves of a LoRA layer as each format names them: (down, up)
LORA_HALVES = ((".lora_A.", ".lora_B."), (".lora.down.", ".lora.up."), (".lora_down.", ".lora_up."),
               (".lora_linear_layer.down.", ".lora_linear_layer.up."))


def check_lora_weights(weights: dict[str, torch.Tensor], file: str | Path) -> None:
    """Refuse, in one line naming the file, a LoRA state dict that cannot be a working adapter:
    non-finite weights (NaN or inf, as a diverged training saves them), or a layer with only
    one of its two halves (lora_A / down without lora_B / up, or the other way round)."""
    bad = sorted(k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise InputError(f"the LoRA file '{file}' holds non-finite weights (NaN or inf) in {len(bad)} of "
                         f"{len(weights)} tensors (e.g. {bad[0]})",
                         "it was saved from a diverged training: retrain it (e.g. with a lower --lr) or give "
                         "another LoRA")
    for down, up in LORA_HALVES:
        downs = {k.split(down)[0] for k in weights if down in k}
        ups = {k.split(up)[0] for k in weights if up in k}
        for have, lack, a, b in ((downs, ups, down, up), (ups, downs, up, down)):
            alone = sorted(have - lack)
            if alone:
                raise InputError(f"the LoRA file '{file}' has {len(alone)} layer{'s' if len(alone) != 1 else ''} "
                                 f"with {a.strip('.')} weights but no {b.strip('.')} (e.g. {alone[0]})",
                                 "give the whole LoRA file, both halves of every layer (re-export it, or rerun "
                                 "`modelseal finetune --method lora`)")


def _names(text: str) -> list[str]:
    return sorted(re.findall(r'"([^"]+)"', text) or [n.strip(" '.") for n in text.split(",") if n.strip(" '.")])


def _describe(sizes: list[tuple[str, str, str]], missing: list[str], extra: list[str], file: str,
              model: str) -> str | None:
    """One line from (name, shape in the file, shape in the model) triples and the names only
    the model (missing) or only the file (extra) has; None when nothing differs."""
    parts = []
    if sizes:
        k, got, want = sorted(sizes)[0]
        more = f" and {len(sizes) - 1} more" if len(sizes) > 1 else ""
        parts.append(f"{k} is {got} in {file} but {want} in {model}{more}")
    for names, label, where in ((missing, "missing from", file), (extra, "not in", model)):
        if names:
            parts.append(f"{len(names)} weight name{'s' if len(names) != 1 else ''} {label} {where} "
                         f"(e.g. {sorted(names)[0]})")
    return "; ".join(parts) or None


def compare_shapes(want: dict[str, tuple], got: dict[str, tuple], file: str = "the file",
                   model: str = "the model") -> str | None:
    """How tensors of shapes `got` (a file's) do not fit a model whose state has shapes `want`,
    in one line; None when they fit."""
    sizes = [(k, str(tuple(got[k])), str(tuple(want[k]))) for k in want.keys() & got.keys()
             if tuple(got[k]) != tuple(want[k])]
    return _describe(sizes, sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys()), file, model)


def mismatch_line(err: BaseException, file: str = "the file", model: str = "the model") -> str | None:
    """How a weights file does not fit a model, in one line, from the exception a load raised
    (torch's load_state_dict, diffusers' from_pretrained, peft's adapter loading); None when
    the error is not a mismatch of names or shapes. `file` and `model` name the two sides."""
    text = str(err)
    size = r"torch\.Size\(\[([^\]]*)\]\)"
    sizes = [(k, f"({got})", f"({want})") for k, got, want in re.findall(
        rf"size mismatch for ([^:\s]+): copying a param with shape {size} from checkpoint, the shape in current "
        rf"model is {size}", text)]
    sizes += [(k, f"({got})", f"({want})") for k, want, got in
              re.findall(rf"(\S+) expected shape {size}, but got {size}", text)]
    missing, extra = [], []
    for names, pattern in ((missing, r"Missing key\(s\) in state_dict: ([^\n]*)"),
                           (extra, r"Unexpected key\(s\) in state_dict: ([^\n]*)"),
                           (missing, r"the following keys are missing:\s*([^\n]*)"),
                           (extra, r"Target modules? \{?([^}\n]*)\}? not found in the base model")):
        m = re.search(pattern, text)
        if m:
            names += _names(m[1])
    return _describe(sizes, missing, extra, file, model)


def library_error_line(err: BaseException) -> str:
    """The first line of a library's error without its advice about its own keyword arguments
    (diffusers: 'pass `low_cpu_mem_usage=False` ...'), which a command-line user cannot act on."""
    text = next((" ".join(ln.split()) for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    return re.split(r"\s*(?:If you want to|Please make sure to pass|For more information)", text)[0].rstrip(" .:")
