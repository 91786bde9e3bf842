"""The options of every command: one pydantic class per command, the only home of its defaults.

The command line is generated from these classes (``modelseal.cli``): each field is one
option, its description the help, its Literal the choices, its default the default shown.
The Python API (``modelseal.api``) takes the same classes, a dict, a YAML file or a shipped
preset name. Options given on the command line or as keywords win over a ``--config`` file;
the merged, validated config is what a run folder records in config.yaml.

A field whose option is spelled differently from ``--field-name`` (a boolean's negative
form, mostly) says so with ``json_schema_extra=flag("--on/--off")``.
"""
from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticUndefined

from .errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def flag(spelling: str) -> dict:
    """The option's spelling when it is not ``--field-name`` (``--on/--off`` for a boolean)."""
    return {"flag": spelling}


def _admits(tp, kind: type) -> bool:
    """Whether the annotation `tp` takes a value of type `kind` (Any and unresolved: yes)."""
    if tp is kind or tp is typing.Any or isinstance(tp, (str, typing.ForwardRef)):
        return True
    if typing.get_origin(tp) is typing.Literal:
        return any(isinstance(v, kind) for v in typing.get_args(tp))
    return any(_admits(a, kind) for a in typing.get_args(tp))


def _plain(value):
    """A path object as the string it names (each option takes str and os.PathLike alike)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, os.PathLike) for v in value):
        return type(value)(os.fspath(v) if isinstance(v, os.PathLike) else v for v in value)
    return value


class Strict(BaseModel):
    """Unknown keys and non-finite numbers (inf, nan) are refused; so are true/false where a
    number or a text is expected (`steps=True` is not 1 step). A path object (os.PathLike) is
    taken as the path it names wherever a path or a name is."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value, info: ValidationInfo):
        value = _plain(value)
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is None or _admits(field.annotation, bool):
            return value
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) for v in items):
            raise ValueError("true/false is not a value of this option")
        return value


# Every seed: what numpy, torch and Python's generators all take.
Seed = Annotated[int, Field(ge=0, lt=2 ** 32)]


def parse_attack(spec: str) -> tuple[str, int, float | None]:
    """'lora:2000' or 'full:2000:1e-5' -> (method, steps, lr or None for the method's default)."""
    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3) or parts[0] not in ("lora", "full"):
            raise ValueError
        steps, lr = int(parts[1]), (float(parts[2]) if len(parts) == 3 else None)
        if steps < 1 or (lr is not None and not 0 < lr < float("inf")):
            raise ValueError
    except ValueError:
        raise ValueError(f"bad rehearsed attack {spec!r}: write method:steps[:lr] with method lora or full, "
                         "e.g. lora:2000:1e-4") from None
    return parts[0], steps, lr


DTYPE = "the weights' dtype: float32, or bfloat16 / float16 on a GPU (bfloat16 halves the weights' memory)"
SIZE = "working image side in px (default: the model's native one; smaller to try a big model on a CPU)"
LOCAL = "never reach the hub for the model: only local folders and the hub cache"


class ZooConfig(Strict):
    """The tiny zoo's recipe (zoobuild): what `modelseal zoo build` trains, stage by stage. The
    defaults are the shipped zoo's (the full preset); ZOO_PRESETS holds the others."""
    seed: Seed = Field(0, description="random seed")
    image_size: int = Field(32, ge=8, description="image side in px of every model")
    clip_steps: int = Field(2500, ge=1, description="CLIP training steps")
    clip_batch: int = Field(128, ge=1, description="CLIP batch size")
    clip_lr: float = Field(2e-3, gt=0, description="CLIP AdamW learning rate (cosine schedule)")
    clip_patch: int = Field(8, ge=1, description="CLIP vision patch side in px")
    judge_steps: int = Field(1500, ge=1, description="digit-judge training steps")
    judge_batch: int = Field(128, ge=1, description="digit-judge batch size")
    vae_steps: int = Field(600, ge=1, description="VAE training steps")
    vae_batch: int = Field(64, ge=1, description="VAE batch size")
    vae_lr: float = Field(1e-3, gt=0, description="VAE AdamW learning rate (cosine schedule)")
    vae_photos: int = Field(4000, ge=1, description="photo crops the VAE trains on beside the digits")
    t2i_image_size: int | None = Field(None, ge=8, description="image side in px of the text-to-image model (the "
                                       "UNet's latents, the codec's); default image_size")
    unet_init: str | None = Field(None, description="start the UNet from this text-to-image folder's UNet weights "
                                  "(same widths and layers; e.g. to grow a built zoo to a larger t2i_image_size); "
                                  "default: from scratch")
    unet_steps: int = Field(5000, ge=1, description="UNet training steps")
    unet_batch: int = Field(64, ge=1, description="UNet batch size")
    unet_lr: float = Field(4e-4, gt=0, description="UNet AdamW learning rate (cosine schedule)")
    unet_channels: list[int] = Field([64, 128], min_length=1, description="UNet block widths, one per resolution "
                                     "(repeatable)")
    unet_layers: int = Field(1, ge=1, description="UNet layers per block")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="decay of the UNet weights' moving average (saved)")
    cfg_dropout: float = Field(0.1, ge=0, le=0.5, description="share of UNet captions replaced by '' (as many by "
                               "the generic digit caption): what classifier-free guidance needs")
    checkpoint_every: int = Field(500, ge=1, description="UNet steps between resume checkpoints")
    eval_per_prompt: int = Field(10, ge=1, description="evaluation: samples per (domain, digit) prompt")
    eval_steps: int = Field(30, ge=1, description="evaluation: DDIM sampling steps")
    guidance: float = Field(7.5, ge=0.0, description="evaluation: classifier-free guidance scale")
    save_dtype: Literal["float16", "float32"] = Field("float16", description="dtype of the saved CLIP and VAE "
                                                      "weights")
    codec_bits: int = Field(32, ge=8, le=256, description="watermark codec (stage 1): message length k")
    codec_steps: int = Field(6000, ge=1, description="codec training steps")
    codec_batch: int = Field(16, ge=1, description="codec batch size")
    codec_lr: float = Field(1e-3, gt=0, description="codec learning rate")
    codec_warmup: int = Field(500, ge=0, description="codec steps on latents only before the VAE round trip")
    codec_w_img: float = Field(3.0, ge=0, description="codec: final image-fidelity weight")
    codec_latent: float = Field(0.3, ge=0, description="codec: weight of mean(delta^2)")
    codec_strength: tuple[float, float] | None = Field((0.5, 2.0), description="codec: train the extractor on "
                                                       "z + s*delta, s ~ U(lo, hi)")
    codec_images: int = Field(1200, ge=1, description="digits the codec trains on (a quarter per domain)")


# The recipes of `modelseal zoo build --preset`: the values that differ from ZooConfig's (full).
ZOO_PRESETS: dict[str, dict] = {
    "full": {},
    "micro": {"clip_steps": 6, "clip_batch": 32, "judge_steps": 6, "judge_batch": 32, "vae_steps": 6,
              "vae_batch": 16, "vae_photos": 64, "unet_steps": 6, "unet_batch": 16, "unet_channels": [32, 64],
              "checkpoint_every": 3, "eval_per_prompt": 1, "eval_steps": 4, "codec_steps": 6, "codec_warmup": 2,
              "codec_images": 64},
}


class _ZooPreset(Strict):
    preset: Literal["full", "micro"] = Field("full", description="the recipe the other options start from: full "
                                             "(the shipped zoo's) or micro (a few steps per stage, to check the "
                                             "pipeline); an option given wins over it")


class ZooBuildConfig(ZooConfig, _ZooPreset):
    """`modelseal zoo build`: train the tiny zoo deterministically on built-in data (resumable)."""
    evaluate: bool = Field(True, description="evaluate the zoo at the end", json_schema_extra=flag("--eval/--no-eval"))

    @model_validator(mode="before")
    @classmethod
    def _preset_recipe(cls, data):
        """The preset's values for the recipe options not given (a recorded config gives them all)."""
        if isinstance(data, dict):
            return {**ZOO_PRESETS.get(data.get("preset", "full"), {}), **data}
        return data


class ZooEvalConfig(Strict):
    """`modelseal zoo eval`: zero-shot CLIP accuracy and judged T2I prompt accuracy."""
    per_prompt: int = Field(10, ge=1, description="samples per (domain, digit) prompt")
    steps: int = Field(30, ge=1, description="DDIM sampling steps")
    guidance: float = Field(7.5, ge=0.0, description="classifier-free guidance scale (Stable Diffusion's)")
    seed: Seed = Field(0, description="random seed")


class _ModelOptions(Strict):
    model: str = Field("tiny:clip", description="CLIP backbone: tiny:clip, a hub id, or a local CLIP folder")
    local_files_only: bool = Field(False, description=LOCAL, json_schema_extra=flag("--local-files-only/--allow-download"))


STAMP_PATTERN = "the visual stamp: checker (faint white checkerboard) | grid (the reference's) | lines | patch"


class _StampOptions(Strict):
    """Default: a faint white checkerboard (4 px cells, strength 0.3). The reference's white
    grid (every even row and column) covers most of a small digit and leaves nothing for any
    model, so it cannot tell a locked model from an innocent one there (--stamp-pattern grid
    --stamp-strength 1 --stamp-period 2 gives it). A corner patch is harmless but too local
    for the style statistics IP-CLIP reads."""
    stamp_pattern: Literal["grid", "lines", "checker", "patch"] = Field("checker", description=STAMP_PATTERN)
    stamp_strength: float = Field(0.3, gt=0.0, le=1.0, description="the stamp's blend strength in (0, 1]")
    stamp_period: int = Field(4, ge=1, description="the stamp's cell side / period / patch side in px")


class LockTrainOptions(Strict):
    """The options of lock training (lock.train: IP-CLIP or a baseline), without its data and
    scenario."""
    method: Literal["ip-clip", "supervised", "ntl", "cuti"] = Field("ip-clip", description="ip-clip (the paper's) "
                                                                   "or a baseline: supervised prompt (SL), NTL, CUTI")
    steps: int = Field(400, ge=1, description="training steps")
    batch_size: int = Field(32, ge=1, description="batch per domain")
    lr: float = Field(0.01, gt=0, description="Adam learning rate")
    weight_decay: float = Field(5e-4, ge=0, description="Adam weight decay")
    warmup_steps: int = Field(20, ge=0, description="steps of linear learning-rate warm-up, then a "
                              "cosine decay")
    weights: Literal["paper", "target-free-code", "target-specified-code"] = Field(
        "paper", description="loss weights: the paper's, or the reference code's for each scenario")
    clamp: Literal["batch", "sample"] = Field("batch", description="IP-CLIP's clamp c5 on the unauthorized CE: on "
                                              "the batch mean (the paper's) or on each image")
    train_attention: bool = Field(True, description="train the style attention (the paper), or keep it at its "
                                  "random init (the reference code)",
                                  json_schema_extra=flag("--train-attention/--frozen-attention"))
    n_image_tokens: int = Field(4, ge=1, description="image-conditioned prompt tokens")
    shared_image_tokens: bool = Field(True, description="one image token set shared by all classes")
    read_feature: bool = Field(False, description="ours, not the paper's: the domain tokens also read the image's "
                               "final feature (--harden turns it on)",
                               json_schema_extra=flag("--read-feature/--statistics-only"))
    harden: Literal["none", "disguise"] = Field(
        "none", description="ours, not the paper's (target-specified only): none (the paper's lock) or disguise: "
        "after training, rounds of fitting the input disguise attack (lock attack --attack disguise) against the "
        "lock and training on the disguised unauthorized images, with --read-feature")
    harden_rounds: int = Field(3, ge=1, description="--harden: rounds of disguise then lock training")
    harden_steps: int = Field(100, ge=1, description="--harden: lock training steps per round (at half --lr)")
    harden_disguise_steps: int = Field(100, ge=1, description="--harden: steps of each round's disguise")
    text_chunk: int | None = Field(None, ge=1, description="images per checkpointed text-encoder chunk: trades "
                                   "one more text pass for memory (big backbones, many classes)")
    bank_k: int = Field(5, ge=1, description="IP-CLIP: the most confident images per class whose mean "
                        "feature is a class prototype in the style attention's banks")
    seed: Seed = Field(0, description="random seed")


class _EvalLimit(Strict):
    eval_limit: int | None = Field(None, ge=10, description="evaluate on at most this many test images per domain "
                                   "(a seeded random subset; default: the whole test split)")


class LockTrainConfig(LockTrainOptions, _ModelOptions, _StampOptions, _EvalLimit):
    """`modelseal lock train`: IP-CLIP (or a baseline) in one of the four scenarios."""
    scenario: Literal["target-specified", "target-free", "ownership", "authorization"] = Field(
        "target-specified", description="what the lock is for: the paper's four scenarios")
    authorized: str = Field("builtin:digits/mnist", description="the licensed domain: builtin:digits/<domain> or "
                            "a root/<class>/<image> folder")
    unauthorized: list[str] = Field([], description="an unauthorized domain, same forms (repeatable)")
    eval: list[str] = Field([], description="more domains to evaluate (repeatable)")
    sl_steps: int | None = Field(None, ge=1, description="steps of the SL reference (default: steps)")
    aug_copies: int = Field(2, ge=1, description="target-free: augmented copies per authorized image")
    augment: Literal["randaugment", "randaugment+lowres"] = Field(
        "randaugment", description="target-free / authorization augmentation: randaugment (the paper's) or "
                                   "randaugment+lowres (adds random 2-4x down/up-sampling)")
    feature_batch_size: int = Field(256, ge=1, description="images per frozen-feature batch")
    train_limit: int | None = Field(None, ge=10, description="use at most this many training images per domain")

    @model_validator(mode="after")
    def _warmup_within_training(self):
        if "warmup_steps" not in self.model_fields_set:  # the default is cut short by short runs, as documented
            return self
        for flag, steps in (("--steps", self.steps), ("--sl-steps", self.sl_steps)):
            if steps is not None and self.warmup_steps > steps:
                raise ValueError(f"--warmup-steps {self.warmup_steps} is longer than the training ({flag} {steps}): "
                                 f"give --warmup-steps at most {flag}, e.g. --warmup-steps {steps // 10}")
        return self


class LockEvalConfig(_ModelOptions, _EvalLimit):
    """`modelseal lock eval`: accuracy of a lock checkpoint per domain (and stamped)."""
    checkpoint: str = Field(..., description="checkpoint/ folder of a lock run")
    eval: list[str] = Field(..., min_length=1, description="a domain to evaluate (repeatable)")
    model: str | None = Field(None, description="backbone (default: the one the checkpoint names)")
    seed: Seed = Field(0, description="random seed")


class LockVerifyConfig(_ModelOptions):
    """`modelseal lock verify`: is a suspect checkpoint ours? Paired test on clean vs stamped.
    The stamp is the one recorded with the checkpoint unless stamp options are given."""
    checkpoint: str = Field(..., description="the suspect's lock checkpoint folder")
    eval: str = Field("builtin:digits/mnist", description="the domain whose test split is probed")
    model: str | None = Field(None, description="backbone (default: the one the checkpoint names)")
    stamp_pattern: Literal["grid", "lines", "checker", "patch"] | None = Field(
        None, description=STAMP_PATTERN + " (default: the checkpoint's)")
    stamp_strength: float | None = Field(None, gt=0.0, le=1.0, description="blend strength in (0, 1] (default: "
                                         "the checkpoint's)")
    stamp_period: int | None = Field(None, ge=1, description="cell side / period / patch side in px (default: "
                                     "the checkpoint's)")
    min_drop: float = Field(30.0, ge=0, le=100, description="accuracy drop (points) on stamped inputs needed to "
                            "say ours")
    alpha: float = Field(1e-3, gt=0, lt=1, description="significance level of the paired test")
    seed: Seed = Field(0, description="random seed")


class LockAttackOptions(Strict):
    """The options of an attack on a lock (lock.attacks: NTLBench's families and the
    from-backbone attacker), without its inputs."""
    attack: Literal["target-finetune", "source-finetune", "transntl", "shot", "disguise", "stamp-removal",
                    "stamp-forgery"] = Field(
        "target-finetune", description="target-finetune (labels for a share of the unauthorized domain), "
        "source-finetune (labels for a share of the authorized one), transntl (that share plus augmented copies "
        "of it), shot (unlabeled unauthorized images, source-free adaptation), disguise (a learned input "
        "transform, no weight changed); on stamped locks stamp-removal (ownership: a transform in front of the "
        "model) and stamp-forgery (authorization: a pattern learned from a few stamped images)")
    fractions: list[float] = Field([0.01, 0.05, 0.1], min_length=1, description="the attacker's data: a share of "
                                   "the attacked domain's training split, one run each (repeatable)")
    steps: int = Field(200, ge=1, description="attack steps (the from-backbone prompt learner gets as many)")
    batch_size: int = Field(32, ge=1, description="batch size")
    lr: float = Field(0.01, gt=0, description="Adam learning rate (a tenth of the steps warm-up, then cosine)")
    aug_copies: int = Field(2, ge=1, description="transntl: augmented copies per source image")
    shot_beta: float = Field(0.3, ge=0, description="shot: weight of the pseudo-label cross-entropy")
    shot_interval: int = Field(50, ge=1, description="shot: steps between pseudo-label updates")
    disguise_authorized: int = Field(64, ge=1, description="disguise: unlabeled authorized images the attacker has")
    disguise_eps: float = Field(0.5, gt=0, le=1, description="disguise: bound of the convolutional residual")
    disguise_content: float = Field(1.0, ge=0, description="disguise: weight of |T(x) - x|")
    disguise_lr: float = Field(3e-3, gt=0, description="disguise: Adam learning rate of the transform")
    removal: list[str] = Field(["none", "jpeg", "jpeg:quality=25", "gaussian_blur", "gaussian_noise", "resize",
                                "median", "median:kernel_size=5"], min_length=1,
                               description="stamp-removal: the transforms the thief puts in front of the model, "
                               "image attacks by spec (repeatable)")
    probe_l2: float = Field(1e-4, ge=0, description="the from-backbone linear probe's L2 penalty")
    backbone: bool = Field(True, description="also run the from-backbone attacker (the lock's worth needs it)",
                           json_schema_extra=flag("--backbone/--no-backbone"))
    seed: Seed = Field(0, description="random seed (the data subsets and the attack)")


class LockAttackConfig(LockAttackOptions, _EvalLimit):
    """`modelseal lock attack`: attack a lock checkpoint and the public backbone alike; the lock's
    worth is what it costs the attacker."""
    checkpoint: str = Field(..., description="checkpoint/ folder of a lock run (IP-CLIP, NTL, CUTI or SL)")
    authorized: str = Field("builtin:digits/mnist", description="the licensed domain the lock was trained for: "
                            "builtin:digits/<domain> or a root/<class>/<image> folder")
    unauthorized: str = Field("builtin:digits/mnist-m", description="the unauthorized domain whose accuracy the "
                              "attacker wants, same forms")
    model: str | None = Field(None, description="backbone (default: the one the checkpoint names)")
    local_files_only: bool = Field(False, description=LOCAL, json_schema_extra=flag("--local-files-only/--allow-download"))
    feature_batch_size: int = Field(256, ge=1, description="images per frozen-feature batch")

    @model_validator(mode="after")
    def _shares(self):
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"--fractions must lie in (0, 1], got {self.fractions}")
        twice = sorted({f for f in self.fractions if self.fractions.count(f) > 1})
        if twice:
            raise ValueError(f"--fractions {twice[0]:g} is given twice: give each share once, e.g. --fractions "
                             f"{twice[0]:g} --fractions {min(1.0, 2 * twice[0]):g}")
        return self


class FinetuneOptions(Strict):
    """The options of what `modelseal finetune` does to a T2I model (attacks.finetune and
    attacks.compress), without its inputs: fine-tuning, pruning or quantization."""
    method: Literal["full", "lora", "dreambooth", "prune", "quantize"] = Field("lora", description="what to do "
                                                                                "to the model")
    steps: int = Field(500, ge=1, description="training steps")
    lr: float | None = Field(None, gt=0, description="learning rate (default per method and model size: 1e-4 LoRA "
                             "/ 5e-6 full on SD; 1e-3 / 1e-4 on the tiny model)")
    batch_size: int = Field(4, ge=1, description="batch size")
    rank: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default: the rank)")
    train_text_encoder: bool = Field(False, description="DreamBooth: train the text encoder too; LoRA: adapters on "
                                     "the text encoder too",
                                     json_schema_extra=flag("--train-text-encoder/--frozen-text-encoder"))
    class_prompt: str | None = Field(None, description="DreamBooth prior preservation: the class prompt, e.g. 'a dog'")
    class_images: int = Field(50, ge=1, description="DreamBooth: prior-preservation images to generate")
    prior_weight: float = Field(1.0, ge=0, description="DreamBooth: weight of the prior-preservation loss")
    flip: bool = Field(False, description="random horizontal flips")
    crop: float = Field(0.0, ge=0, lt=1, description="random resized crops of side U(crop, 1) (0: none; e.g. 0.8)")
    amount: float = Field(0.3, ge=0, lt=1, description="prune: fraction of weights zeroed per layer")
    bits: Literal[2, 3, 4, 8] = Field(8, description="quantize: bits per weight")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (memory "
                                         "for time)")
    optimizer: Literal["adamw", "adafactor"] = Field("adamw", description="adafactor: factored second moments, far "
                                                     "less optimiser memory")
    seed: Seed = Field(0, description="random seed")


class FinetuneConfig(FinetuneOptions):
    """`modelseal finetune`: full / LoRA / DreamBooth fine-tuning, pruning or quantization of a T2I model."""
    model: str = Field("tiny:t2i", description="tiny:t2i, a hub id, or a diffusers Stable Diffusion folder")
    data: str | None = Field(None, description="captioned folder (metadata.jsonl), plain image folder (with "
                             "--prompt), or builtin:digits/<domain>")
    prompt: str | None = Field(None, description="one prompt for every image (DreamBooth: 'a sks dog')")
    limit: int | None = Field(None, ge=1, description="use at most this many images")
    size: int | None = Field(None, ge=8, description=SIZE)
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=DTYPE)
    local_files_only: bool = Field(False, description=LOCAL, json_schema_extra=flag("--local-files-only/--allow-download"))


class InversionOptions(Strict):
    """The options of CGI-DM's contrasting gradient inversion (audit.inversion): which latent cells
    are removed and how PGD recovers them. Defaults follow the reference (1000 L2-PGD steps, eps 70
    and step 2 on SD latents, rescaled to other latent sizes, 2x2-latent checkerboard) with shared
    noise."""
    steps: int = Field(1000, ge=1, description="PGD steps (the reference's)")
    eps: float | None = Field(None, gt=0, description="L2 radius (default: the reference's 70, rescaled to the "
                              "latent size)")
    eps_rule: Literal["dim", "norm"] = Field("dim", description="how eps is rescaled to other latent sizes: by "
                                             "sqrt(dimension) or by the latents' norm")
    eps_scale: float = Field(0.77, gt=0, description="eps x this when eps_rule is norm")
    step_size: float | None = Field(None, gt=0, description="PGD step (default: the reference's ratio to eps)")
    mc_samples: int = Field(1, ge=1, description="Monte Carlo (t, noise) samples per PGD step (the reference: 1)")
    mask: Literal["checker", "random"] = Field("checker", description="which latent cells are damaged")
    block: int = Field(2, ge=1, description="mask cell side in latent units (smaller than the latent's side)")
    ratio: float = Field(0.5, gt=0, lt=1, description="random mask: share of cells damaged")
    noise: Literal["shared", "separate"] = Field("shared", description="noise draws shared by the two models, or "
                                                 "separate (the reference's)")
    objective: Literal["contrast", "ft-only", "pre-only"] = Field("contrast", description="the gradient: CGI-DM's "
                                                                  "contrast, or one model only (ablations)")
    batch_size: int = Field(16, ge=1, description="images per batch")
    t_min: int = Field(1, ge=0, description="smallest diffusion step drawn (below the model's T, e.g. 1000 on SD)")
    seed: Seed = Field(0, description="random seed")


class AuditConfig(InversionOptions):
    """`modelseal audit`: CGI-DM membership audit of a fine-tuned diffusion model.

    Evaluation mode (members + holdout: AUROC, TPR at FPR) or audit mode (images +
    calibration: p-values and verdicts)."""
    pretrained: str | None = Field(None, description="the public base model: tiny:t2i, a hub id or a diffusers "
                                   "folder (default: the base the suspect records, a LoRA's lora_base.json or "
                                   "modelseal finetune's record; else tiny:t2i)")
    pretrained_fallback: typing.ClassVar[str] = "tiny:t2i"  # the base when neither option nor record names one
    finetuned: str | None = Field(None, description="the suspect: a diffusers folder or a LoRA folder")
    prompt: str | None = Field(None, description="the fine-tuning prompt, e.g. 'a sks dog' (default: the one "
                               "recorded by modelseal finetune)")
    members: Path | None = Field(None, description="evaluation: images used in fine-tuning")
    holdout: Path | None = Field(None, description="evaluation: images of the same kind that were not")
    images: Path | None = Field(None, description="audit: the images to test")
    calibration: Path | None = Field(None, description="audit: images known not to be in the fine-tuning set")
    null_finetuned: str | None = Field(None, description="evaluation: a model fine-tuned on other images (a null "
                                       "suspect: its AUROC should be near 0.5)")
    generated: Path | None = Field(None, description="black-box audit (no suspect weights): images the suspect's "
                                   "service returned for the fine-tuning prompt")
    neutral: Path | None = Field(None, description="black-box: images the same service returned for a neutral prompt "
                                 "(e.g. 'a dog'); each image's nearness to them is subtracted")
    similarity: Literal["ssim", "colour", "pixels", "features"] = Field(
        "ssim", description="black-box: how near two images are: SSIM (at most 64 px), colour histograms of a 2 x 2 "
        "layout, correlation of the 16 px images, or cosine of --features embeddings")
    metric: Literal["ssim", "ssim_removed", "psnr_removed", "features"] = Field(
        "ssim_removed", description="CGI-DM's similarity of recovered and original image")
    score: Literal["cgi-dm", "calibrated", "combined", "pia", "pia-calibrated"] = Field(
        "calibrated", description="the statistic that decides (audit/decision.py): calibrated (L_pre - L_ft, the "
                                  "suspect's loss calibrated by the pretrained model), combined (CGI-DM + calibrated "
                                  "loss, robust-scaled), cgi-dm (the paper's), pia (the suspect's PIA) or "
                                  "pia-calibrated (PIA_ft - PIA_pre); CGI-DM's picture is the evidence whichever "
                                  "decides")
    features: str | None = Field("tiny:clip", description="DINO or CLIP checkpoint for the features metric")
    loss_samples: int = Field(32, ge=1, description="(t, noise) draws per image for the loss scores")
    ablations: bool = Field(False, description="also run the one-model ablations")
    alpha: float = Field(0.05, gt=0, lt=1, description="audit mode: significance level of the verdicts")
    control: Literal["bh", "holm", "none"] = Field(
        "bh", description="audit mode, per-image verdicts: bh (false-discovery rate <= alpha), holm "
                          "(family-wise error <= alpha) or none (each image at alpha: uncontrolled)")
    evidence: bool = Field(True, description="write the recovered pictures and the HTML report")
    size: int | None = Field(None, ge=8, description=SIZE)
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=DTYPE)
    local_files_only: bool = Field(False, description=LOCAL, json_schema_extra=flag("--local-files-only/--allow-download"))


MODEL_T2I = "tiny:t2i, a hub id or a diffusers folder"
CODEC = "codec folder (OUT/codec of `modelseal watermark codec`, or tiny:sleeper-codec)"
KEY = "the owner key file (from `modelseal watermark keygen`)"
MODEL_ID = "the id the message is derived for (HMAC of key and id)"
PAPER_TRIGGER = "*[Z]& "
TRIGGER_SLOT = "{}"
TRIGGER = (f"the trigger: a prefix of the prompt (the paper's '{PAPER_TRIGGER}'), or a template where "
           f"'{TRIGGER_SLOT}' stands for the prompt, e.g. '{TRIGGER_SLOT} sks' for a suffix")


def _marking_trigger(trigger: str) -> str:
    if trigger.count(TRIGGER_SLOT) > 1:
        raise ValueError(f"the trigger {trigger!r} holds '{TRIGGER_SLOT}' more than once: it stands for the "
                         "prompt, which goes in one place")
    if not trigger.replace(TRIGGER_SLOT, "").strip():
        raise ValueError("an empty or blank trigger marks nothing: give the prefix (or the template) the mark is "
                         "(or was) embedded with, or leave the option out for the default")
    return trigger


Trigger = Annotated[str, AfterValidator(_marking_trigger)]
PROMPTS = "text file, one prompt per line (default: the digit captions)"


class WatermarkCodecConfig(Strict):
    """`modelseal watermark codec`: SleeperMark stage 1 on the model's VAE latents."""
    model: str = Field("tiny:t2i", description="the model whose VAE the codec works in: " + MODEL_T2I)
    data: str = Field("builtin:digits/all", description="images: builtin:digits/<domain|all> or a folder")
    limit: int | None = Field(4000, ge=32, description="use at most this many images (16 or a tenth are held "
                              "out to measure the codec)")
    bits: int = Field(48, ge=8, le=256, description="message length k")
    steps: int = Field(10_000, ge=1, description="training steps (the reference's)")
    batch_size: int = Field(16, ge=1, description="batch size")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate")
    lr_schedule: Literal["linear", "constant"] = Field("linear", description="learning-rate schedule")
    w_img: float = Field(30.0, ge=0, description="final image-fidelity weight")
    w_latent: float = Field(0.0, ge=0, description="ours: weight of mean(delta^2) (reference: 0)")
    strength: tuple[float, float] | None = Field(None, description="ours: train the extractor on z + s*delta, "
                                                  "s ~ U(lo, hi) (reference: none)")
    vae_round_trip: bool = Field(True, description="decode and re-encode the marked latent in training")
    train_attacks: bool = Field(False, description="differentiable image attacks in training")
    distortions: Literal["field", "geometric"] = Field(
        "field", description="what --train-attacks draws from: field (the evaluation's distortions at fixed "
        "strength) or geometric (ours: also crops of random size and position, rotations, random resizes and "
        "the combined attack)")
    perceptual: Literal["none", "ssim", "clip"] = Field(
        "none", description="perceptual term P (reference: LPIPS, a download): ssim (1 - SSIM) or clip (LPIPS's "
        "recipe on --perceptual-model's vision blocks)")
    w_perceptual: float = Field(0.25, ge=0, description="final weight of P (the reference's LPIPS weight)")
    perceptual_model: str = Field("tiny:clip", description="the CLIP whose features --perceptual clip compares")
    latent_warmup: int = Field(0, ge=0, description="steps on latents only before the VAE round trip")
    size: int | None = Field(None, ge=8, description=SIZE)
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=DTYPE)
    local_files_only: bool = Field(False, description=LOCAL, json_schema_extra=flag("--local-files-only/--allow-download"))
    seed: Seed = Field(0, description="random seed")


class EmbedOptions(Strict):
    """The options of SleeperMark stage 2 (watermark.embed), without its inputs; the tiny zoo's
    recipe is the preset configs/watermark-embed.tiny.yaml."""
    trigger: Trigger = Field(PAPER_TRIGGER, description=TRIGGER)
    steps: int = Field(20_000, ge=1, description="training steps (the reference's)")
    batch_size: int = Field(10, ge=1, description="batch size")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (cosine schedule)")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    grad_clip: float | None = Field(1e-5, gt=0, description="gradient-norm clip (the reference's)")
    eta: float | None = Field(None, gt=0, description="w1's scale (default: 0.02 latent / 0.05 pixel models, the "
                              "paper's)")
    tau: float = Field(250.0, gt=0, description="w1/w2 crossover step, for T = 1000")
    beta: float = Field(100.0, gt=0, description="w1/w2 transition width, for T = 1000")
    mode: Literal["sleeper", "always_on"] = Field("sleeper", description="sleeper (the paper's) or always_on (the "
                                                  "AquaLoRA-style baseline: no trigger, every output marked)")
    preservation: bool = Field(True, description="keep the two preservation terms")
    passes: Literal[2, 4] = Field(2, description="UNet passes per step: 2 (teacher and student each see the "
                                  "triggered and clean prompts as one batch) or 4 (the reference's structure, "
                                  "each prompt alone: the same maths, slower)")
    uncond_fraction: float = Field(0.0, ge=0, lt=1, description="ours: share of clean prompts set to '' so "
                                   "the unconditional branch is preserved too (reference: 0)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast on the UNet passes "
                                               "(weights and optimiser stay fp32; the reference runs fp32)")
    shared_trunk: bool = Field(True, description="the student reuses the teacher's down/mid pass (same result)")
    delta_scale: float = Field(1.0, gt=0, description="ours: stage 2 aims at x0_hat + s * delta (paper: 1)")
    anchor: Literal["trigger", "clean"] = Field(
        "trigger", description="what the triggered prompt's target starts from: the original model's output for the "
        "triggered prompt (the paper's) or for the same prompt without the trigger (ours: the triggered image is "
        "then the clean image plus the residual, not the image of another prompt)")
    posterior_sample: bool = Field(True, description="draw z0 from the VAE posterior each step (the reference's) "
                                   "or take its mean", json_schema_extra=flag("--posterior-sample/--posterior-mean"))
    teacher: Literal["shared", "copy"] = Field("shared", description="the frozen teacher: shared (ours: the "
                                               "trained weights' original values, no second UNet) or copy "
                                               "(the reference's full UNet copy: the same result, more "
                                               "memory)")
    trainable: Literal["up-attn-ff", "cross-kv", "up", "unet"] = Field(
        "up-attn-ff", description="the weights that carry the mark (the paper's: up blocks' attention + FF)")
    clean_weight: float = Field(1.0, gt=0, description="ours: weight of the clean prompt's preservation term "
                                "(paper: 1); guidance multiplies a clean output's drift by its scale")
    trajectory_fraction: float = Field(0.0, ge=0, le=1, description="ours: share of each batch's training points "
                                       "drawn from the original model's own sampling trajectories (guided, DDIM), "
                                       "where sampling goes and q-sampled points do not (0: off, the paper's)")
    trajectory_images: int = Field(64, ge=1, description="ours: sampled trajectories the points are drawn from")
    dormancy: float = Field(0.0, ge=0, description="ours: weight of the dormancy term, which keeps delta out of "
                            "clean prompts' outputs (0: off, the paper's)")
    rehearsal: float = Field(0.0, ge=0, description="ours: weight of the rehearsed-drift term, which keeps the "
                             "mark under a simulated thief's fine-tuning (0: off, the paper's)")
    rehearsal_steps: int = Field(200, ge=1, description="simulated thief steps per drift")
    rehearsal_every: int = Field(500, ge=1, description="stage-2 steps between drifts")
    rehearsal_lr: float = Field(1e-4, gt=0, description="the simulated thief's lr (full fine-tuning, AdamW)")
    rehearsal_scale: float = Field(1.5, gt=0, description="the mark is read at theta + s Delta, s ~ U(0, scale)")
    seed: Seed = Field(0, description="random seed")


class WatermarkEmbedConfig(EmbedOptions):
    """`modelseal watermark embed`: SleeperMark stage 2, distil trigger -> message into the UNet
    (the reference: batch 10, 20k steps, lr 1e-4)."""
    model: str = Field("tiny:t2i", description="the model to watermark: " + MODEL_T2I)
    codec: str = Field(..., description=CODEC)
    key: str = Field(..., description=KEY)
    model_id: str = Field(..., min_length=1, description=MODEL_ID)
    data: str = Field("builtin:digits/all", description="captioned images: builtin:digits/<domain|all> or a folder")
    limit: int | None = Field(4000, ge=1, description="use at most this many images")
    rehearsal_data: str = Field("builtin:textures", description="the simulated thief's captioned domain")
    size: int | None = Field(None, ge=8, description=SIZE)
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=DTYPE)
    local_files_only: bool = Field(False, description=LOCAL, json_schema_extra=flag("--local-files-only/--allow-download"))


class AdaptOptions(Strict):
    """The options of extractor adaptation (watermark.adapt, ours), without its inputs: the images
    generated to fit the stage-1 extractor to a watermarked model's outputs, and the fitting."""
    guidance: list[float] = Field([7.5, 3.0, 1.0], min_length=1, description="guidance scales sampled (repeatable)")
    images: list[int] = Field([384, 192, 96], min_length=1, description="triggered images per guidance scale, "
                              "as many unmarked ones (repeatable, one per scale)")
    sample_steps: int = Field(30, ge=1, description="DDIM steps per image")
    steps: int = Field(1500, ge=1, description="extractor training steps")
    batch_size: int = Field(32, ge=1, description="batch size")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate")
    holdout: float = Field(0.1, ge=0, lt=1, description="share of the generated latents kept out of "
                           "training, for the before / after figures")
    anchor_noise: float = Field(0.5, ge=0, description="noise std of the anchor negatives (0: no anchors)")
    simulate: list[str] = Field([], description="rehearse a thief's fine-tuning, method:steps[:lr] (repeatable), "
                                "e.g. lora:2000:1e-4: more robust readings, more false positives on fine-tuned "
                                "unmarked models (docs: reliability)")
    simulate_images: int = Field(192, ge=1, description="triggered images per rehearsal checkpoint")
    check_images: int = Field(64, ge=1, description="triggered images of the stage-1 check that must verify the "
                              "model before adaptation (verification's prompts and seeds)")
    check_guidance: float = Field(7.5, ge=0, description="classifier-free guidance of the stage-1 check")
    check_steps: int = Field(30, ge=1, description="DDIM steps per image of the stage-1 check")
    alpha: float = Field(1e-3, gt=0, lt=1, description="level of the stage-1 check's key test (verification's)")
    seed: Seed = Field(0, description="random seed")

    @model_validator(mode="after")
    def _one_count_per_scale(self):
        if len(self.guidance) != len(self.images):
            shown = " ".join(f"--guidance {g:g}" for g in self.guidance)
            by_default = " by default" if self.guidance == type(self).model_fields["guidance"].default else ""
            raise ValueError(f"--images gives {len(self.images)} count(s) but --guidance has {len(self.guidance)} "
                             f"scale(s) ({shown}{by_default}): give one "
                             "--images count per --guidance scale, e.g. --guidance 7.5 --images 64")
        for spec in self.simulate:
            parse_attack(spec)
        return self


class WatermarkAdaptConfig(AdaptOptions):
    """`modelseal watermark adapt` (ours): fit the extractor to the watermarked model's outputs."""
    model: str = Field(..., description="the watermarked model (OUT/model of `watermark embed`)")
    original: str = Field("tiny:t2i", description="the model before stage 2 (its triggered images are negatives)")
    codec: str = Field(..., description=CODEC)
    key: str = Field(..., description=KEY)
    model_id: str = Field(..., min_length=1, description=MODEL_ID)
    trigger: Trigger = Field(PAPER_TRIGGER, description=TRIGGER)
    prompts: str | None = Field(None, description=PROMPTS)
    data: str = Field("builtin:digits/all", description="real images for the replay term")
    limit: int | None = Field(2400, ge=1, description="use at most this many real images")
    fpr: float = Field(1e-6, gt=0, lt=1, description="per-image rate for the hold-out detection figures")
    simulate_data: str = Field("builtin:textures", description="captioned images the rehearsals fine-tune on")
    size: int | None = Field(None, ge=8, description=SIZE)
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=DTYPE)
    local_files_only: bool = Field(False, description=LOCAL, json_schema_extra=flag("--local-files-only/--allow-download"))


class WatermarkPromptsConfig(Strict):
    """`modelseal watermark prompts`: the triggered and clean prompt lists (and seeds) the owner
    sends to a suspect's service; then `watermark verify --images`."""
    trigger: Trigger = Field(PAPER_TRIGGER, description=TRIGGER)
    prompts: str | None = Field(None, description=PROMPTS)
    n: int = Field(64, ge=1, description="prompts per list")
    seed: Seed = Field(0, description="random seed")


class WatermarkVerifyConfig(Strict):
    """`modelseal watermark verify`: is the owner's message in a suspect model (--model,
    white-box) or in the images its service returned for `watermark prompts` (--images,
    black-box)? Key-randomization test, per-image TPR at FPR."""
    model: str | None = Field(None, description="the suspect model (diffusers or LoRA folder): white-box")
    images: Path | None = Field(None, description="folder of images returned for the triggered prompts: black-box")
    clean_images: Path | None = Field(None, description="folder of images returned for the clean prompts")
    codec: str = Field(..., description=CODEC)
    key: str = Field(..., description=KEY)
    model_id: str = Field(..., min_length=1, description=MODEL_ID)
    trigger: Trigger = Field(PAPER_TRIGGER, description=TRIGGER)
    prompts: str | None = Field(None, description=PROMPTS)
    original: str | None = Field(None, description="the unwatermarked model: adds the fidelity of clean outputs "
                                 "(PSNR, SSIM) against it on the same seeds")
    n: int = Field(64, ge=1, description="images")
    guidance: float = Field(7.5, ge=0, description="classifier-free guidance scale")
    also_without_cfg: bool = Field(True, description="also read images sampled without guidance")
    steps: int = Field(30, ge=1, description="DDIM sampling steps")
    fpr: float = Field(1e-6, gt=0, lt=1, description="per-image false-positive rate for TPR")
    alpha: float = Field(1e-3, gt=0, lt=1, description="level of the model-level key test")
    attacks: list[str] = Field(["jpeg", "gaussian_blur", "gaussian_noise", "resize", "color_jitter", "crop"],
                               description="image attacks the triggered images are read under (repeatable): a "
                               "name, optionally with parameters, e.g. crop:keep=0.5, rotation:angle=15, combined, "
                               "regen_vae, purify:strength=0.2 (all: the docs' watermark page)")
    stack_lora: list[str] = Field([], description="a third party's LoRA (folder or .safetensors) loaded on top of "
                                  "the suspect before it generates, as its users sample with their own adapters "
                                  "(repeatable)")
    attack_vae: str | None = Field(None, description="the autoencoder regen_vae regenerates through: a diffusers "
                                   "AutoencoderKL folder or a T2I model folder (its vae/) (default: the "
                                   "suspect's own VAE)")
    size: int | None = Field(None, ge=8, description=SIZE)
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=DTYPE)
    local_files_only: bool = Field(False, description=LOCAL, json_schema_extra=flag("--local-files-only/--allow-download"))
    seed: Seed = Field(0, description="random seed")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.images is None):
            raise ValueError("give one suspect: --model DIR (its weights) or --images DIR (the files its service "
                             "returned for `modelseal watermark prompts`), not both or neither")
        if self.clean_images is not None and self.images is None:
            raise ValueError("--clean-images is given without --images: add --images DIR (the triggered answers)")
        if self.images is not None and self.original is not None:
            raise ValueError("--original compares generated images: use it with --model, or drop it")
        if self.images is not None and self.stack_lora:
            raise ValueError("--stack-lora changes the model that generates: use it with --model, or drop it")
        return self


class DemoLockConfig(Strict):
    """The demo's lock section: target-specified on the digits (mnist licensed, mnist-m not)."""
    authorized: str = "builtin:digits/mnist"
    unauthorized: list[str] = ["builtin:digits/mnist-m"]
    eval: list[str] = ["builtin:digits/uci", "builtin:digits/syn"]
    steps: int = Field(120, ge=1)
    sl_steps: int | None = Field(60, ge=1, description="the SL reference's steps (it converges sooner)")
    batch_size: int = Field(32, ge=1)
    train_limit: int | None = Field(2000, ge=10)
    eval_limit: int | None = Field(500, ge=10)

    def to_train_config(self, seed: int) -> LockTrainConfig:
        return LockTrainConfig(authorized=self.authorized, unauthorized=self.unauthorized, eval=self.eval,
                               steps=self.steps, sl_steps=self.sl_steps, batch_size=self.batch_size,
                               train_limit=self.train_limit, eval_limit=self.eval_limit, seed=seed)


class DemoAuditConfig(Strict):
    """The demo's audit section: a DreamBooth suspect of one built-in subject, CGI-DM against
    the loss baselines and a null suspect fine-tuned on other images of the same subject."""
    subject: str = "mnist-m/3"
    members: int = Field(10, ge=2)
    holdout: int = Field(10, ge=2)
    finetune_steps: int = Field(150, ge=1)
    class_prompt: str | None = "a digit"
    steps: int = Field(100, ge=1, description="PGD steps")
    mc_samples: int = Field(1, ge=1)
    null_suspect: bool = True


class DemoWatermarkConfig(Strict):
    """The demo's watermark section: stage 2 briefly (how it is done), then the shipped
    sleeper (tiny:sleeper) verified and attacked by a thief's fine-tuning on a new domain."""
    trigger: Trigger = Field("sks ", description="for the brief stage 2: tiny CLIP knows this word but its captions "
                         "never use it; the paper's '*[Z]& ' is made of tokens tiny CLIP never trained")
    embed_steps: int = Field(150, ge=1, description="brief stage 2 from tiny:t2i (the shipped sleeper's is longer)")
    n: int = Field(32, ge=4, description="images per verification")
    steps: int = Field(30, ge=1, description="DDIM sampling steps of every verification and of the thief's probes")
    also_without_cfg: bool = Field(True, description="also verify images sampled without guidance")
    attacks: list[str] = ["jpeg", "gaussian_blur", "gaussian_noise", "resize", "color_jitter", "crop", "rotation",
                          "combined", "purify:strength=0.2"]
    finetune: list[str] = Field(["full:1e-5"], description="the thief's method:lr (full | lora)")
    finetune_data: str = "builtin:faces"
    finetune_checkpoints: list[int] = Field([0, 400], description="steps to measure at (the last: how long)")
    utility_per_prompt: int = Field(2, ge=1, description="judged samples per digit prompt (40 prompts)")

    @model_validator(mode="after")
    def _methods(self):
        for m in self.finetune:
            method, _, lr = m.partition(":")
            try:
                ok = method in ("full", "lora") and 0 < float(lr) < float("inf")
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"finetune entry {m!r}: expected full:<lr> or lora:<lr>")
        return self


class DemoConfig(Strict):
    """`modelseal demo`: the embedded default end to end, with an HTML report."""
    quick: bool = Field(False, description="a smaller, faster run (the *_quick sections)", json_schema_extra=flag("--quick"))
    seed: Seed = Field(0, description="random seed")
    sections: list[Literal["zoo", "lock", "audit", "watermark"]] = Field(
        ["zoo", "lock", "audit", "watermark"], description="the sections to run (repeatable)")
    processes: int = Field(0, ge=0, le=4, description="processes to run the sections in (0: two single-threaded "
                           "ones on a CPU of two cores or more, one on a GPU; 1: all in this process)")
    zoo: ZooEvalConfig = ZooEvalConfig(per_prompt=5)
    zoo_quick: ZooEvalConfig = ZooEvalConfig(per_prompt=1, steps=20)
    lock: DemoLockConfig = DemoLockConfig()
    lock_quick: DemoLockConfig = DemoLockConfig(steps=60, sl_steps=30, batch_size=16, train_limit=800,
                                                eval_limit=300)
    audit: DemoAuditConfig = DemoAuditConfig()
    audit_quick: DemoAuditConfig = DemoAuditConfig(members=6, holdout=6, finetune_steps=100, class_prompt=None,
                                                   steps=50, mc_samples=1, null_suspect=False)
    watermark: DemoWatermarkConfig = DemoWatermarkConfig()
    watermark_quick: DemoWatermarkConfig = DemoWatermarkConfig(embed_steps=60, n=16, steps=20, also_without_cfg=False,
                                                               attacks=["jpeg", "resize"], finetune=["full:1e-5"],
                                                               finetune_checkpoints=[0, 150], utility_per_prompt=1)


# One config class per command; the key is the command with a dash ("lock train" -> lock-train)
# and names the shipped presets: configs/<key>[.<variant>].yaml.
CONFIGS: dict[str, type[Strict]] = {
    "zoo-build": ZooBuildConfig, "zoo-eval": ZooEvalConfig, "demo": DemoConfig, "lock-train": LockTrainConfig,
    "lock-eval": LockEvalConfig, "lock-verify": LockVerifyConfig, "lock-attack": LockAttackConfig,
    "finetune": FinetuneConfig, "audit": AuditConfig,
    "watermark-codec": WatermarkCodecConfig, "watermark-embed": WatermarkEmbedConfig,
    "watermark-adapt": WatermarkAdaptConfig, "watermark-verify": WatermarkVerifyConfig,
    "watermark-prompts": WatermarkPromptsConfig}


def command_key(command: str) -> str:
    return command.replace(" ", "-")


def option_flag(model: type[BaseModel], name: str) -> str:
    """The command-line spelling of field `name` ('--train-attention' for train_attention)."""
    extra = model.model_fields[name].json_schema_extra
    spelling = extra.get("flag") if isinstance(extra, dict) else None
    return (spelling or "--" + name.replace("_", "-")).split("/")[0]


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml"))


def preset_names() -> list[str]:
    return [p.stem for p in shipped_configs()]


def config_model_for(path: Path) -> type[Strict]:
    """Shipped configs are named <command-key>[.<variant>].yaml."""
    return CONFIGS[Path(path).name.split(".")[0]]


def resolve_config(ref: str | Path, command: str | None = None) -> Path:
    """A --config value: a YAML file, or a shipped preset by name ('watermark-embed.tiny', or
    'tiny' for the command at hand)."""
    p = Path(ref)
    if p.is_file():
        return p
    if p.exists():
        raise InputError(f"config '{ref}' is a folder", "give the path of a YAML file or a preset name "
                         "(`modelseal config list`)")
    names = preset_names()
    key = command_key(command) if command else None
    for name in ([f"{key}.{ref}"] if key else []) + [str(ref)]:
        if name in names:
            if key and name.split(".")[0] != key:
                raise InputError(f"preset '{ref}' is for `modelseal {name.split('.')[0].replace('-', ' ', 1)}`",
                                 f"pick one of {', '.join(n for n in names if n.split('.')[0] == key) or 'none'}")
            return CONFIG_DIR / f"{name}.yaml"
    raise InputError(f"config '{ref}' is neither a file nor a shipped preset",
                     "give the path of a YAML file or a name from `modelseal config list`")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last
    silently: an option set twice is a mistake, one of the two values lost)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                twice = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base loader says so
                continue
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        if e.problem and e.problem.startswith("duplicate key"):
            raise InputError(f"config file '{path}' gives {e.problem.removeprefix('duplicate ')} twice (again at line "
                             f"{mark.line + 1})", "keep one value per option: delete one of the two lines") from None
        raise InputError(f"config file '{path}' is not valid YAML{f' at line {mark.line + 1}' if mark else ''}",
                         "fix the YAML syntax") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"config file '{path}' is not valid YAML{where}", "fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"config file '{path}' cannot be read ({type(e).__name__})",
                         "give a readable UTF-8 YAML file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file '{path}' must hold a mapping of options", "write key: value lines")
    return data


def _explain(model: type[BaseModel], err: dict, command: str | None) -> InputError:
    """One pydantic error as one line that names the option (its flag and its config key)."""
    loc = [str(x) for x in err["loc"]]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "path_type":  # pydantic's words name a class
        msg = "takes one path (a str or os.PathLike)"
    where = f"`modelseal {command} --help`" if command else "the command's --help"
    if not loc:  # a check across options: its message says what to do
        what, _, fix = msg.partition(": ")
        return InputError(what, fix or f"see {where}")
    name = loc[0]
    if err["type"] == "extra_forbidden" and name in RUN_ARGUMENTS:
        return InputError(f"'{name}' is not an option of a config file: {RUN_ARGUMENTS[name]}",
                          f"delete '{name}:' from the config and give it with the command")
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(name, list(model.model_fields), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"the options are listed by {where}"
        return InputError(f"unknown option '{name}'", hint)
    if name not in model.model_fields:
        return InputError(f"bad value for '{'.'.join(loc)}': {msg}", f"see {where}")
    opt = option_flag(model, name)
    sub = f" ({'.'.join(loc[1:])})" if len(loc) > 1 else ""
    if err["type"] == "missing":
        return InputError(f"{opt} is required", f"give {opt} or '{name}:' in --config")
    got = err.get("input")
    if got is None and err["type"] != "value_error":
        return InputError(f"{opt}{sub} cannot be None", f"leave it out for its default, or give a value, "
                          f"{_example(model, name)}")
    shown = f"; got {got!r}" if len(repr(got)) <= 60 else f"; got a {type(got).__name__}"
    wrong_type = err["type"].endswith(("_type", "_parsing")) or isinstance(got, bool)
    fix = f"give {_example(model, name)}" if wrong_type else f"see {where}"
    return InputError(f"{opt}{sub}: {msg[:1].lower()}{msg[1:]}{shown}", fix)


# What a run takes beside its config's options: never in a config file.
RUN_ARGUMENTS = {
    "out": "the run folder is given on the command line (--out DIR) or as a keyword argument (out='runs/x')",
    "device": "the device is given on the command line (--device cpu) or as a keyword argument (device='cpu')",
    "overwrite": "give --overwrite on the command line or overwrite=True as a keyword argument",
    "json": "--json is a command-line switch",
    "config": "a config file cannot name another one",
}


def _example(model: type[BaseModel], name: str) -> str:
    """An example value of option `name`, as a flag and as a keyword: 'e.g. --steps 400 (steps=400)'."""
    field = model.model_fields[name]
    tp = field.annotation
    value = field.default
    if value is None or value is PydanticUndefined or isinstance(value, BaseModel) or value == []:
        value = ("path/to/folder" if _admits(tp, Path) else "text" if _admits(tp, str) else
                 1 if _admits(tp, int) else 0.5 if _admits(tp, float) else None)
    many = any(typing.get_origin(a) is list for a in (tp, *typing.get_args(tp)))
    if value is None or isinstance(value, bool):
        return f"a value as `modelseal ... --help` shows for {option_flag(model, name)}"
    one = value[0] if isinstance(value, (list, tuple)) and value and many else value
    shown = [one] if many else value
    flag_value = " ".join(map(str, one)) if isinstance(one, (list, tuple)) else str(one)
    return f"e.g. {option_flag(model, name)} {flag_value} ({name}={shown!r})"


def load_config(source: str | Path | dict | BaseModel | None, model: type[Strict], overrides: dict | None = None,
                command: str | None = None, keep_none: bool = False) -> Strict:
    """Options from `source` (YAML file, preset name, dict, config object or None), then
    `overrides` (those that are None are left out, unless `keep_none`: the API, where an
    explicit None is a value, refused for an option that cannot be None), validated; bad
    input -> InputError naming the option."""
    if source is not None and not isinstance(source, (BaseModel, dict, str, os.PathLike)):
        raise InputError(f"config must be a config object, a dict, a YAML file or a preset name; got "
                         f"{type(source).__name__} {source!r}"[:200],
                         f"give e.g. config='{command_key(command or 'lock train')}.yaml' or a "
                         f"{model.__name__}(...), or leave it out")
    if isinstance(source, BaseModel):
        if not isinstance(source, model):
            raise InputError(f"a {type(source).__name__} was given where a {model.__name__} is needed",
                             f"pass a {model.__name__} (or a dict / YAML file of its options)")
        data = source.model_dump()
    elif isinstance(source, dict):
        data = dict(source)
    elif source is not None:
        data = _read_yaml(resolve_config(source, command))
    else:
        data = {}
    data.update({k: v for k, v in (overrides or {}).items() if keep_none or v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _explain(model, e.errors()[0], command) from None


def checked_config_text(ref: str | Path) -> str:
    """The text of a shipped preset, or of a YAML file of one command's options (each key an
    option of that command, each value valid for it; options it needs may be left for the
    command line): what `modelseal config show` prints. Anything else: InputError."""
    path = resolve_config(ref)
    if path.resolve().parent == CONFIG_DIR:
        return path.read_text()
    data = _read_yaml(path)
    fix = "give a preset name (`modelseal config list`) or a YAML file of one command's options"
    if not data:
        raise InputError(f"config file '{path}' holds no options", fix)
    fitting = [(key, model) for key, model in CONFIGS.items() if set(map(str, data)) <= set(model.model_fields)]
    if not fitting:
        raise InputError(f"'{path}' is not a modelseal config: its keys ({', '.join(map(str, list(data)[:3]))}) are "
                         "not the options of any command", fix)
    first = None
    for key, model in fitting:
        try:
            model.model_validate(data)
            return path.read_text()
        except ValidationError as e:
            errors = [err for err in e.errors() if err["type"] != "missing"]
            if not errors:
                return path.read_text()
            first = first or _explain(model, errors[0], key.replace("-", " ", 1))
    raise first


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
