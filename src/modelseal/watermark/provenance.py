"""Provenance of an adapted extractor: what lets its reading count as evidence.

An extractor fitted to a model's own outputs (`watermark adapt`) can learn to answer any
message on that model's images: fitted to a model nobody ever marked, with a key of the
fitter's choosing, its key test "verifies" the model. The key test's null ("the message is
independent of this model") does not hold for an extractor fitted on the suspect or its
parent. So an adapted reading is evidence only under this protocol:

1. Stage 1 first. `watermark adapt` runs stage 1's verification before anything else: the
   fixed stage-1 extractor (trained on real latents, never on any model's generations) must
   find the key's message in the model, by the key test at alpha on the verification prompts
   and seeds. A model it does not verify is refused: adaptation only sharpens a mark that
   stage 1 already proves.
2. Recorded. The adapted codec carries that evidence, the stage-1 extractor itself
   (stage1_extractor.safetensors) with the stage-1 codec's hash, and the hash of the weights
   of the model it was fitted on (`provenance` in its config.json meta).
3. Both readings. `watermark verify` with an adapted codec reads the suspect with both
   extractors and reports each; the verdict is their Bonferroni union (verify.combine_readings),
   so a random key still passes at most alpha of the time. An adapted codec without this
   record is refused.
4. Published. The owner publishes the codec's release hash (release_sha256: the codec
   folder's files, the record included) when the model is released. An adapted reading
   counts only for a codec whose hash was published before the suspect appeared: a codec
   made later could have been fitted to the suspect itself.
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch

from .. import stats
from ..errors import InputError
from ..models.diffusion import T2IModel
from ..models.weights import read_safetensors
from ..models.zoo_files import folder_hash
from .codec import Codec
from .codec_folder import WEIGHTS_NAME, file_sha256
from .verify import decide, generate, quantize, read_bits

STAGE1_WEIGHTS = "stage1_extractor.safetensors"
PROTOCOL = 1


def is_adapted(codec: Codec) -> bool:
    """Whether the codec's extractor was fitted to a model's outputs (`watermark adapt`)."""
    return bool(codec.meta.get("adapted_to") or codec.meta.get("provenance"))


def weights_sha256(model: T2IModel) -> str:
    """sha256 of the denoiser's weights (names, dtypes, shapes, bytes): the model an
    extractor was fitted on, whatever folder or hub id it was loaded from."""
    h = hashlib.sha256()
    for name, t in sorted(model.unet.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def release_sha256(folder: str | Path) -> str:
    """The hash an owner publishes with the model: every weight and config file of the codec
    folder (the provenance record included)."""
    return folder_hash(folder)


def stage1_evidence(model: T2IModel, codec: Codec, bits: torch.Tensor, prompts: list[str], seeds: list[int],
                    trigger: str, guidance: float, steps: int, alpha: float) -> dict:
    """Stage 1's verification of `model`: its triggered images on the verification prompts
    and seeds, read with the stage-1 `codec`, the key test at `alpha`."""
    images = quantize(generate(model, prompts, seeds, trigger, guidance, steps))
    res = decide(read_bits(codec, images), bits, alpha)
    return {"p_value": res["p_value"], "log10_p_value": res["log10_p_value"], "alpha": alpha,
            "watermarked": res["watermarked"], "bit_accuracy": res["bit_accuracy"], "n_images": len(images),
            "guidance": guidance, "sample_steps": steps, "first_seed": seeds[0] if seeds else None}


def refuse_unverified(evidence: dict, model: str) -> None:
    """adapt's gate: one line when stage 1 does not verify the model."""
    if not evidence["watermarked"]:
        raise InputError(
            f"the stage-1 extractor does not find this key's message in '{model}' (key test p "
            f"{stats.format_p(evidence['p_value'])} > alpha {evidence['alpha']:g} on {evidence['n_images']} "
            "triggered images): adaptation only sharpens a mark stage 1 already verifies",
            "check --key, --model-id and --trigger against the ones `watermark embed` used, and give the "
            "stage-1 codec (OUT/codec of `watermark codec`, e.g. tiny:codec) and the watermarked model")


def refuse_adapted_input(codec: Codec) -> None:
    """adapt fits a stage-1 extractor; an adapted one would hide the fixed reader."""
    if is_adapted(codec):
        source = (codec.meta.get("provenance") or {}).get("stage1_codec") or codec.meta.get("adapted_from")
        raise InputError(f"the codec in '{codec.folder}' is already adapted to a model's outputs",
                         "give the stage-1 codec it was adapted from"
                         + (f" ({source})" if source else " (OUT/codec of `watermark codec`)"))


def record(stage1: Codec, model: T2IModel, model_name: str, evidence: dict, model_id: str, trigger: str) -> dict:
    """The provenance an adapted codec's config.json carries (meta['provenance'])."""
    return {"protocol": PROTOCOL, "stage1_codec": str(stage1.folder),
            "stage1_codec_sha256": file_sha256(Path(stage1.folder) / WEIGHTS_NAME),
            "stage1_extractor": STAGE1_WEIGHTS, "fitted_model": model_name,
            "fitted_model_sha256": weights_sha256(model), "model_id": model_id, "trigger": trigger,
            "stage1_evidence": evidence}


def save_stage1(stage1: Codec, folder: str | Path) -> str:
    """Write the stage-1 extractor beside the adapted codec; returns its sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in stage1.extractor.state_dict().items()}
    path = Path(folder) / STAGE1_WEIGHTS
    save_file(state, str(path), metadata={"format": "pt"})
    return file_sha256(path)


def load_stage1(codec: Codec) -> tuple[Codec, dict]:
    """The stage-1 codec an adapted `codec` carries (its extractor put back) and the
    provenance; one InputError when the record is missing, incomplete or does not match."""
    prov = codec.meta.get("provenance")
    fix = ("verify with the stage-1 codec (OUT/codec of `watermark codec`, e.g. tiny:codec), or adapt again with "
           "this modelseal, which records the provenance")
    if not isinstance(prov, dict) or prov.get("protocol") != PROTOCOL:
        raise InputError(f"the adapted codec in '{codec.folder}' records no stage-1 provenance (an older modelseal, "
                         "or an edited folder): a reading fitted to one model's outputs is no evidence alone", fix)
    evidence = prov.get("stage1_evidence") or {}
    if not evidence.get("watermarked"):
        raise InputError(f"the adapted codec in '{codec.folder}' records no stage-1 verification of the model it was "
                         "fitted on", fix)
    path = Path(codec.folder) / STAGE1_WEIGHTS
    if not path.is_file():
        raise InputError(f"the adapted codec in '{codec.folder}' lacks its stage-1 extractor ({STAGE1_WEIGHTS})",
                         "restore the codec folder as `watermark adapt` wrote it")
    if prov.get("stage1_extractor_sha256") and file_sha256(path) != prov["stage1_extractor_sha256"]:
        raise InputError(f"the stage-1 extractor in '{path}' is not the one recorded with the adapted codec",
                         "restore the codec folder as `watermark adapt` wrote it")
    state = read_safetensors(path, "the stage-1 extractor", "restore the codec folder as `watermark adapt` wrote it")
    stage1 = copy.deepcopy(codec)
    try:
        stage1.extractor.load_state_dict({k: v.to(next(codec.parameters()).device) for k, v in state.items()},
                                         strict=True)
    except RuntimeError:
        raise InputError(f"the stage-1 extractor in '{path}' does not fit the codec's architecture",
                         "restore the codec folder as `watermark adapt` wrote it") from None
    stage1.meta = {k: v for k, v in codec.meta.items() if k not in ("adapted_to", "provenance")}
    return stage1.eval(), prov


def summary(prov: dict, release: str) -> str:
    """One line for the log: what the adapted reading rests on (`release`: the codec's
    release_sha256)."""
    ev = prov["stage1_evidence"]
    return (f"adapted extractor fitted on '{prov['fitted_model']}' (weights {prov['fitted_model_sha256'][:12]}), "
            f"which stage 1 verified at p {stats.format_p(ev['p_value'])} (alpha {ev['alpha']:g}); codec release "
            f"hash {release[:16]}: the adapted reading counts only if this hash was published before "
            "the suspect appeared")
