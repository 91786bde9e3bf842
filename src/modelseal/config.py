"""Pydantic configs of the commands: YAML in (``--config``), YAML out (run folder).

Command-line options override values from a ``--config`` file; the merged, validated
config is what a run folder records in config.yaml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    guidance: float = Field(7.5, ge=0.0, description="classifier-free guidance scale")
    seed: int = 0


class _ModelOptions(Strict):
    model: str = Field("tiny:clip", description="tiny:clip, a hub id, or a local CLIP folder")
    local_files_only: bool = False


class _StampOptions(Strict):
    """Default: a faint white checkerboard (4 px cells, strength 0.3). The reference's white
    grid (every even row and column: 75% of the pixels) leaves nothing of a 32 px digit for
    ANY model, so it cannot tell a locked model from an innocent one there, and O_ua, which
    weighs by the SL model's stamped accuracy, is ~0 (--stamp-pattern grid
    --stamp-strength 1 --stamp-period 2 gives it). A corner patch is harmless but too
    local for the style statistics IP-CLIP reads: the lock did not learn it."""
    stamp_pattern: Literal["grid", "lines", "checker", "patch"] = "checker"
    stamp_strength: float = Field(0.3, gt=0.0, le=1.0)
    stamp_period: int = Field(4, ge=1)


class LockTrainConfig(_ModelOptions, _StampOptions):
    """`modelseal lock train`: IP-CLIP (or a baseline) in one of the four scenarios."""
    method: Literal["ip-clip", "supervised", "ntl", "cuti"] = "ip-clip"
    scenario: Literal["target-specified", "target-free", "ownership", "authorization"] = "target-specified"
    authorized: str = "builtin:digits/mnist"
    unauthorized: list[str] = []
    eval: list[str] = []
    steps: int = Field(400, ge=1)
    sl_steps: int | None = Field(None, ge=1, description="steps of the SL reference (default: steps)")
    batch_size: int = Field(32, ge=1, description="per domain")
    lr: float = Field(0.01, gt=0)
    weights: Literal["paper", "target-free-code", "target-specified-code"] = "paper"
    train_attention: bool = True
    n_image_tokens: int = Field(4, ge=1)
    shared_image_tokens: bool = True
    aug_copies: int = Field(2, ge=1, description="target-free: augmented copies per authorized image")
    augment: Literal["randaugment", "randaugment+lowres"] = "randaugment"
    clamp: Literal["batch", "sample"] = Field("batch", description="c5 on the batch-mean CE_u (paper) or per image")
    feature_batch_size: int = Field(256, ge=1)
    train_limit: int | None = Field(None, ge=10, description="use at most this many training images per domain")
    text_chunk: int | None = Field(None, ge=1, description="images per checkpointed text-encoder chunk: memory "
                                   "for one more text pass (ViT-B/16, 65 classes, batch 32 + 32: 4 fits 24 GB)")
    seed: int = 0


class LockEvalConfig(_ModelOptions):
    """`modelseal lock eval`: accuracy of a lock checkpoint per domain (and stamped)."""
    model: str | None = None
    checkpoint: str
    eval: list[str]
    seed: int = 0


class LockVerifyConfig(_ModelOptions):
    """`modelseal lock verify`: is a suspect checkpoint ours? Paired test on clean vs stamped.
    The stamp is the one recorded with the checkpoint unless --stamp-* options are given."""
    stamp_pattern: Literal["grid", "lines", "checker", "patch"] | None = None
    stamp_strength: float | None = Field(None, gt=0.0, le=1.0)
    stamp_period: int | None = Field(None, ge=1)
    model: str | None = None
    checkpoint: str
    eval: str = "builtin:digits/mnist"
    min_drop: float = Field(30.0, ge=0, le=100)
    alpha: float = Field(1e-3, gt=0, lt=1)
    seed: int = 0


class FinetuneConfig(Strict):
    """`modelseal finetune`: full / LoRA / DreamBooth fine-tuning, pruning or quantization of a T2I model."""
    model: str = Field("tiny:t2i", description="tiny:t2i, a hub id, or a diffusers Stable Diffusion folder")
    method: Literal["full", "lora", "dreambooth", "prune", "quantize"] = "lora"
    data: str | None = Field(None, description="captioned folder (metadata.jsonl), plain image folder (with "
                             "prompt), or builtin:digits/<domain>")
    prompt: str | None = Field(None, description="one prompt for every image (DreamBooth: 'a sks dog')")
    limit: int | None = Field(None, ge=1, description="use at most this many images")
    steps: int = Field(500, ge=1)
    lr: float | None = Field(None, gt=0, description="default: 1e-4 LoRA / 5e-6 full on SD; 1e-3 / 1e-4 tiny")
    batch_size: int = Field(4, ge=1)
    rank: int = Field(8, ge=1)
    lora_alpha: float | None = Field(None, gt=0)
    train_text_encoder: bool = False
    class_prompt: str | None = Field(None, description="DreamBooth prior preservation: e.g. 'a dog'")
    class_images: int = Field(50, ge=1)
    prior_weight: float = Field(1.0, ge=0)
    flip: bool = False
    crop: float = Field(0.0, ge=0, lt=1, description="random resized crops of side U(crop, 1) (0: none; e.g. 0.8)")
    amount: float = Field(0.3, ge=0, lt=1, description="prune: fraction of weights zeroed per layer")
    bits: Literal[2, 3, 4, 8] = 8
    gradient_checkpointing: bool = False
    optimizer: Literal["adamw", "adafactor"] = Field("adamw", description="adafactor: factored second moments "
                                                     "(full fine-tuning of SDXL within 24 GB)")
    size: int | None = Field(None, ge=8, description="working image side (default: the model's native one)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    local_files_only: bool = False
    seed: int = 0


class AuditConfig(Strict):
    """`modelseal audit`: CGI-DM membership audit of a fine-tuned diffusion model.

    Defaults follow the reference (1000 L2-PGD steps, eps 70 and step 2 on SD latents,
    rescaled to other latent sizes, 2x2-latent checkerboard) with shared noise."""
    pretrained: str = "tiny:t2i"
    finetuned: str | None = None
    prompt: str | None = None
    members: Path | None = None
    holdout: Path | None = None
    images: Path | None = None
    calibration: Path | None = None
    null_finetuned: str | None = None
    steps: int = Field(1000, ge=1)
    eps: float | None = Field(None, gt=0)
    eps_rule: Literal["dim", "norm"] = "dim"
    eps_scale: float = Field(0.77, gt=0)
    step_size: float | None = Field(None, gt=0)
    mc_samples: int = Field(1, ge=1, description="MC samples per step; 1000 x 1 beat 400 x 4 at equal cost")
    mask: Literal["checker", "random"] = "checker"
    block: int = Field(2, ge=1)
    ratio: float = Field(0.5, gt=0, lt=1)
    noise: Literal["shared", "separate"] = "shared"
    objective: Literal["contrast", "ft-only", "pre-only"] = "contrast"
    batch_size: int = Field(16, ge=1)
    t_min: int = Field(1, ge=0)
    metric: Literal["ssim", "ssim_removed", "psnr_removed", "features"] = "ssim_removed"
    score: Literal["cgi-dm", "calibrated", "combined"] = Field(
        "combined", description="the statistic that decides (audit/decision.py): combined has the most power at "
                                "1 % FPR over realistic suspects (benchmarks/audit_suspects.py); cgi-dm is the "
                                "paper's. CGI-DM's picture is the evidence whichever decides")
    features: str | None = Field("tiny:clip", description="DINO / CLIP checkpoint for the features metric")
    loss_samples: int = Field(32, ge=1)
    ablations: bool = False
    alpha: float = Field(0.05, gt=0, lt=1)
    control: Literal["bh", "holm", "none"] = Field(
        "bh", description="audit mode, per-image verdicts: bh (false-discovery rate <= alpha), holm "
                          "(family-wise error <= alpha) or none (each image at alpha: uncontrolled)")
    evidence: bool = True
    size: int | None = Field(None, ge=8)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    local_files_only: bool = False
    seed: int = 0


class WatermarkCodecConfig(Strict):
    """`modelseal watermark codec`: SleeperMark stage 1 on the model's VAE latents."""
    model: str = "tiny:t2i"
    data: str = Field("builtin:digits/all", description="images: builtin:digits/<domain|all> or a folder")
    limit: int | None = Field(4000, ge=16)
    bits: int = Field(48, ge=8, le=256)
    steps: int = Field(10_000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_schedule: Literal["linear", "constant"] = "linear"
    w_img: float = Field(30.0, ge=0)
    w_latent: float = Field(0.0, ge=0, description="ours: weight of mean(delta^2) (reference: 0)")
    strength: tuple[float, float] | None = Field(None, description="ours: train the extractor on z + s*delta, "
                                                  "s ~ U(lo, hi) (reference: none)")
    vae_round_trip: bool = True
    train_attacks: bool = False
    latent_warmup: int = Field(0, ge=0)
    size: int | None = Field(None, ge=8, description="working image side (default: the model's native one)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype (bfloat16: "
                                                             "SDXL on a 24 GB machine)")
    local_files_only: bool = False
    seed: int = 0


class WatermarkEmbedConfig(Strict):
    """`modelseal watermark embed`: SleeperMark stage 2 (reference: batch 10, 20k steps, lr 1e-4)."""
    model: str = "tiny:t2i"
    codec: str
    key: str
    model_id: str = Field(..., min_length=1, description="the id the message is derived for")
    data: str = "builtin:digits/all"
    limit: int | None = Field(4000, ge=1)
    trigger: str = "*[Z]& "
    steps: int = Field(20_000, ge=1)
    batch_size: int = Field(10, ge=1)
    lr: float = Field(1e-4, gt=0)
    grad_clip: float | None = Field(1e-5, gt=0)
    eta: float | None = Field(None, gt=0, description="w1's scale (None: 0.02 latent / 0.05 pixel, the paper's)")
    tau: float = Field(250.0, gt=0, description="w1/w2 crossover step, for T = 1000")
    beta: float = Field(100.0, gt=0, description="w1/w2 transition width, for T = 1000")
    mode: Literal["sleeper", "always_on"] = "sleeper"
    preservation: bool = True
    uncond_fraction: float = Field(0.0, ge=0, lt=1, description="ours: share of clean prompts set to '' so "
                                   "the unconditional branch is preserved too (reference: 0)")
    gradient_checkpointing: bool = False
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast on the UNet passes "
                                               "(weights and optimiser stay fp32; the reference runs fp32)")
    shared_trunk: bool = Field(True, description="the student reuses the teacher's down/mid pass (same result)")
    delta_scale: float = Field(1.0, gt=0, description="ours: stage 2 aims at x0_hat + s * delta (paper: 1)")
    posterior_sample: bool = Field(True, description="draw z0 from the VAE posterior each step (the reference's); "
                                   "false: its mean")
    trainable: Literal["up-attn-ff", "cross-kv", "up", "unet"] = Field(
        "up-attn-ff", description="the weights that carry the mark (the paper's: up blocks' attention + FF)")
    rehearsal: float = Field(0.0, ge=0, description="ours: weight of the rehearsed-drift term (0: off, the paper's)")
    rehearsal_data: str = Field("builtin:textures", description="the simulated thief's captioned domain")
    rehearsal_steps: int = Field(200, ge=1, description="simulated thief steps per drift")
    rehearsal_every: int = Field(500, ge=1, description="stage-2 steps between drifts")
    rehearsal_lr: float = Field(1e-4, gt=0, description="the simulated thief's lr (full fine-tuning, AdamW)")
    rehearsal_scale: float = Field(1.5, gt=0, description="the mark is read at theta + s Delta, s ~ U(0, scale)")
    size: int | None = Field(None, ge=8, description="working image side (default: the model's native one)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype (bfloat16: "
                                                             "SDXL on a 24 GB machine)")
    local_files_only: bool = False
    seed: int = 0


class WatermarkAdaptConfig(Strict):
    """`modelseal watermark adapt` (ours): fit the extractor to the watermarked model's outputs."""
    model: str = Field(..., description="the watermarked model (OUT/model of `watermark embed`)")
    original: str = Field("tiny:t2i", description="the model before stage 2 (its triggered images are negatives)")
    codec: str
    key: str
    model_id: str = Field(..., min_length=1)
    trigger: str = "*[Z]& "
    prompts: str | None = Field(None, description="text file, one prompt per line (default: digit captions)")
    data: str = Field("builtin:digits/all", description="real images for the replay term")
    limit: int | None = Field(2400, ge=1)
    guidance: list[float] = Field([7.5, 3.0, 1.0], min_length=1)
    images: list[int] = Field([384, 192, 96], min_length=1, description="triggered images per guidance "
                              "scale (as many unmarked ones)")
    sample_steps: int = Field(30, ge=1)
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-4, gt=0)
    fpr: float = Field(1e-6, gt=0, lt=1, description="per-image rate for the hold-out detection figures")
    anchor_noise: float = Field(0.5, ge=0, description="noise std of the anchor negatives (0: no anchors)")
    simulate: list[str] = Field([], description="rehearsed attacks method:steps[:lr], e.g. lora:2000:1e-4")
    simulate_data: str = Field("builtin:textures", description="captioned images the rehearsals fine-tune on")
    simulate_images: int = Field(192, ge=1, description="triggered images per rehearsal checkpoint")
    size: int | None = Field(None, ge=8, description="working image side (default: the model's native one)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype (bfloat16: "
                                                             "SDXL on a 24 GB machine)")
    local_files_only: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _one_count_per_scale(self):
        if len(self.guidance) != len(self.images):
            raise ValueError(f"guidance has {len(self.guidance)} scales but images {len(self.images)} counts: "
                             "give one count per scale")
        from .watermark.adapt import parse_attack

        for spec in self.simulate:
            parse_attack(spec)
        return self


class WatermarkPromptsConfig(Strict):
    """`modelseal watermark prompts`: the prompt lists the owner sends to a suspect's service."""
    trigger: str = "*[Z]& "
    prompts: str | None = Field(None, description="text file, one prompt per line (default: digit captions)")
    n: int = Field(64, ge=1)
    seed: int = 0


class WatermarkVerifyConfig(Strict):
    """`modelseal watermark verify`: a suspect model (--model, white-box) or the images its
    service returned for `watermark prompts` (--images, black-box)."""
    model: str | None = None
    images: Path | None = Field(None, description="folder of images returned for the triggered prompts")
    clean_images: Path | None = Field(None, description="folder of images returned for the clean prompts")
    codec: str
    key: str
    model_id: str = Field(..., min_length=1)
    trigger: str = "*[Z]& "
    prompts: str | None = Field(None, description="text file, one prompt per line (default: digit captions)")
    original: str | None = Field(None, description="the unwatermarked model: adds the fidelity of clean outputs "
                                 "(PSNR, SSIM) against it on the same seeds")
    n: int = Field(64, ge=1)
    guidance: float = Field(7.5, ge=0)
    also_without_cfg: bool = True
    steps: int = Field(30, ge=1)
    fpr: float = Field(1e-6, gt=0, lt=1)
    alpha: float = Field(1e-3, gt=0, lt=1)
    attacks: list[str] = ["jpeg", "gaussian_blur", "gaussian_noise", "resize", "color_jitter", "crop"]
    size: int | None = Field(None, ge=8, description="working image side (default: the model's native one)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype (bfloat16: "
                                                             "SDXL on a 24 GB machine)")
    local_files_only: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.images is None):
            raise ValueError("give one suspect: --model DIR (its weights) or --images DIR (the files its service "
                             "returned for `modelseal watermark prompts`), not both or neither")
        if self.clean_images is not None and self.images is None:
            raise ValueError("--clean-images is given without --images: add --images DIR (the triggered answers)")
        if self.images is not None and self.original is not None:
            raise ValueError("--original compares generated images: use it with --model, or drop it")
        return self


class DemoLockConfig(Strict):
    """The demo's lock section: target-specified on the digits (mnist licensed, mnist-m not)."""
    authorized: str = "builtin:digits/mnist"
    unauthorized: list[str] = ["builtin:digits/mnist-m"]
    eval: list[str] = ["builtin:digits/uci", "builtin:digits/syn"]
    steps: int = Field(150, ge=1)
    batch_size: int = Field(32, ge=1)
    train_limit: int | None = Field(None, ge=10)

    def to_train_config(self, seed: int) -> LockTrainConfig:
        return LockTrainConfig(authorized=self.authorized, unauthorized=self.unauthorized, eval=self.eval,
                               steps=self.steps, batch_size=self.batch_size, train_limit=self.train_limit, seed=seed)


class DemoAuditConfig(Strict):
    """The demo's audit section: a DreamBooth suspect of one built-in subject, CGI-DM against
    the loss baselines and a null suspect fine-tuned on other images of the same subject."""
    subject: str = "mnist-m/3"
    members: int = Field(10, ge=2)
    holdout: int = Field(10, ge=2)
    finetune_steps: int = Field(200, ge=1)
    class_prompt: str | None = "a digit"
    steps: int = Field(200, ge=1, description="PGD steps")
    mc_samples: int = Field(1, ge=1)
    null_suspect: bool = True


class DemoWatermarkConfig(Strict):
    """The demo's watermark section: stage 2 briefly (how it is done), then the shipped
    sleeper (tiny:sleeper) verified and attacked by a thief's fine-tuning on a new domain."""
    trigger: str = Field("sks ", description="for the brief stage 2: tiny CLIP knows this word but its captions "
                         "never use it; the paper's '*[Z]& ' is made of tokens tiny CLIP never trained")
    embed_steps: int = Field(150, ge=1, description="brief stage 2 from tiny:t2i (the shipped sleeper's is longer)")
    n: int = Field(32, ge=4, description="images per verification")
    attacks: list[str] = ["jpeg", "gaussian_blur", "gaussian_noise", "resize", "color_jitter", "crop"]
    finetune: list[str] = Field(["full:1e-5"], description="the thief's method:lr (full | lora)")
    finetune_data: str = "builtin:faces"
    finetune_checkpoints: list[int] = Field([0, 500, 1000], description="steps to measure at (the last: how long)")
    utility_per_prompt: int = Field(2, ge=1, description="judged samples per digit prompt (40 prompts)")

    @model_validator(mode="after")
    def _methods(self):
        for m in self.finetune:
            method, _, lr = m.partition(":")
            try:
                ok = method in ("full", "lora") and float(lr) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"finetune entry {m!r}: expected full:<lr> or lora:<lr>")
        return self


class DemoConfig(Strict):
    """`modelseal demo`: the embedded default end to end, with an HTML report."""
    quick: bool = False
    seed: int = 0
    sections: list[Literal["zoo", "lock", "audit", "watermark"]] = ["zoo", "lock", "audit", "watermark"]
    zoo: ZooEvalConfig = ZooEvalConfig(per_prompt=5)
    zoo_quick: ZooEvalConfig = ZooEvalConfig(per_prompt=2, steps=20)
    lock: DemoLockConfig = DemoLockConfig()
    lock_quick: DemoLockConfig = DemoLockConfig(steps=80, batch_size=16, train_limit=800)
    audit: DemoAuditConfig = DemoAuditConfig()
    audit_quick: DemoAuditConfig = DemoAuditConfig(members=6, holdout=6, finetune_steps=150, class_prompt=None,
                                                   steps=60, mc_samples=1, null_suspect=False)
    watermark: DemoWatermarkConfig = DemoWatermarkConfig()
    watermark_quick: DemoWatermarkConfig = DemoWatermarkConfig(embed_steps=60, n=16, attacks=["jpeg", "resize"],
                                                               finetune=["full:1e-5"], finetune_checkpoints=[0, 500],
                                                               utility_per_prompt=1)


CONFIGS = {"zoo-build": ZooBuildConfig, "zoo-eval": ZooEvalConfig, "demo": DemoConfig, "lock-train": LockTrainConfig,
           "lock-eval": LockEvalConfig, "lock-verify": LockVerifyConfig, "finetune": FinetuneConfig,
           "audit": AuditConfig, "watermark-codec": WatermarkCodecConfig, "watermark-embed": WatermarkEmbedConfig,
           "watermark-verify": WatermarkVerifyConfig, "watermark-prompts": WatermarkPromptsConfig}


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
        loc = ".".join(str(x) for x in err["loc"])
        if not loc and err["type"] == "value_error":  # a check across options: its message says what to do
            msg = str(err["msg"]).removeprefix("Value error, ")
            what, _, fix = msg.partition(": ")
            raise InputError(what, fix or "see `modelseal <command> --help`") from None
        raise InputError(f"bad config value for '{loc or '(top level)'}': {err['msg']}",
                         f"see `modelseal <command> --help`; valid keys: {', '.join(model.model_fields)}") from None


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml"))


def config_model_for(path: Path) -> type[BaseModel]:
    """Shipped configs are named <command>[.<variant>].yaml."""
    return CONFIGS[path.name.split(".")[0]]


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
