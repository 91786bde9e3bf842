"""Peak memory of one training / audit step at full size, measured without a GPU.

Tensor-allocation tracker (LiveTensors below): every tensor storage the step allocates and
frees (parameters, gradients, optimiser states, activations, temporaries) is counted while it
lives, and the peak of their sum is reported. The models are built at their published
sizes (SD 1.5 UNet 860 M, VAE, CLIP ViT-L text encoder; CLIP ViT-B/16) under FakeTensorMode,
so no memory is allocated and no arithmetic runs (IP-CLIP runs on the meta device: see
ipclip). `--check` runs small configurations with real tensors too and prints both: stage 2
agrees to the byte (6.152 GiB both), IP-CLIP within 2 % (1.545 meta, 1.576 real GiB).

How it maps to a GPU: the peak is what torch.cuda.max_memory_allocated() reports for the same
step on CUDA, up to kernel workspaces (cuBLAS / attention; tens of MB). nvidia-smi shows more:
the CUDA context (0.3-0.6 GB) and the caching allocator's reserve (typically 5-15 %). A
configuration fits a 24 GB card when its peak is below about 20 GiB.

Each step runs twice (the optimiser's state exists from the first step on) and the peak of the
second is kept:
  stage 2   SleeperMark, SD 1.5, 512 px (64 x 64 latents), AdamW on the up blocks' attention
            and feed-forward weights: the reference's structure (a full frozen UNet copy, four
            passes, fp32) against ours (FrozenTeacher, two passes with the shared trunk), fp32
            or bf16 autocast, with or without gradient checkpointing, batch 1 / 4 / 10
  audit     one CGI-DM PGD step (both models' losses and the gradient to the latent), SD 1.5,
            512 px: a full fine-tuned suspect (two UNets) or a LoRA suspect (one UNet, adapter on
            and off), batch 1 and 8, fp32 and bf16 weights
  ip-clip   one IP-CLIP step, CLIP ViT-B/16 at 224 px, 65 classes, batch 32 + 32, ours (cached
            vision statistics, one text pass; on the meta device); the reference's loop (one
            text pass per image and class) is measured by gpu.sh

    python benchmarks/memory_plan.py [--only stage2,audit,ip-clip] [--check] [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB = 2 ** 30


class LiveTensors:
    """Bytes of live tensor storages, and their peak, for every tensor an op creates while
    active (a TorchDispatchMode: parameters, gradients, optimiser states, activations saved
    for backward, temporaries). A storage counts once however many views share it, and stops
    counting when it is freed (a weak reference's callback)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        tracker.add(t)
                return out

        self.mode = Mode()
        self.live: dict[int, object] = {}
        self.now = self.peak = 0

    def add(self, t: torch.Tensor) -> None:
        import weakref

        st = t.untyped_storage()
        key = st._cdata
        if key in self.live:
            return
        n = st.nbytes()

        def freed(_ref, key=key, n=n):
            if self.live.pop(key, None) is not None:
                self.now -= n

        self.live[key] = weakref.ref(st, freed)
        self.now += n
        self.peak = max(self.peak, self.now)


def tracked(build, step, steps: int = 2, fake: bool = True) -> dict:
    """Peak GiB of live tensors from state = build() through `steps` calls of step(state)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    tracker = LiveTensors()
    with mode, tracker.mode:  # the models are built inside, so their weights count too
        state = build()
        for t in state.get("resident", []):  # tensors made outside (counted, never freed here)
            tracker.add(t)
        for _ in range(steps):
            step(state)
    return {"peak_gib": round(tracker.peak / GIB, 3)}


# ---- SD 1.5 ------------------------------------------------------------------------------------
def sd15(dtype=torch.float32, with_vae: bool = True):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modelseal.models.diffusion import T2IModel
    from modelseal.models.real_layout import CLIP_L_TEXT, SCHEDULERS, UNETS, VAES

    # built in the dtype (a module's .to() swaps tensors, which fake tensors refuse)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        unet = UNet2DConditionModel(**UNETS["sd15"])
        vae = AutoencoderKL(**VAES["sd15"]) if with_vae else None
        te = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))
    finally:
        torch.set_default_dtype(old)
    sched = DDPMScheduler.from_config(SCHEDULERS["sd15"][1])
    m = T2IModel(unet, vae, te, tokenizer=None, scheduler=sched)
    return m.requires_grad_(False)


def stage2(batch: int, structure: str, precision: str, ckpt: bool, fake: bool = True, latent: int = 64):
    from modelseal.config import EmbedOptions
    from modelseal.watermark.embed import Stage2Loss, prepare_student

    def build():
        torch.manual_seed(0)
        m = sd15()
        teacher, params = prepare_student(m, ckpt, teacher="copy" if structure == "reference" else "shared")
        opts = EmbedOptions(passes=4 if structure == "reference" else 2, shared_trunk=structure != "reference",
                            precision=precision)
        delta = torch.randn(1, 4, latent, latent) * 0.1
        loss = Stage2Loss(m, teacher, delta, opts)
        opt = torch.optim.AdamW(params, lr=1e-4)
        mods = [m.unet, m.vae, m.text_encoder] + ([teacher] if structure == "reference" else [])
        return {"modules": mods, "optimizers": [opt], "loss": loss, "opt": opt,
                "z": torch.randn(batch, 4, latent, latent), "ctx": torch.randn(batch, 77, 768),
                "ctx_tr": torch.randn(batch, 77, 768), "g": torch.Generator().manual_seed(0)}

    def step(s):
        loss, _ = s["loss"](s["z"], s["ctx"], s["ctx_tr"], s["g"])
        s["opt"].zero_grad(set_to_none=True)
        loss.backward()
        s["opt"].step()

    return tracked(build, step, fake=fake)


def audit(batch: int, suspect: str, dtype: torch.dtype, fake: bool = True, latent: int = 64):
    from modelseal.audit.inversion import Contrast

    def build():
        torch.manual_seed(0)
        pre = sd15(dtype)
        if suspect == "lora":
            from modelseal.attacks.finetune import add_lora

            # peft moves new adapters with Module.to(), which fake tensors refuse; they are made
            # on the one (fake) device already, and add_lora keeps them in fp32 as training does
            to = torch.nn.Module.to
            torch.nn.Module.to = lambda self, *a, **k: self
            try:
                add_lora(pre, 8, None, 0)
            finally:
                torch.nn.Module.to = to
            pre.unet.requires_grad_(False)
            ft = pre
        else:
            ft = sd15(dtype, with_vae=False)
            ft.vae = pre.vae
        mods = [pre.unet, pre.vae, pre.text_encoder] + ([ft.unet, ft.text_encoder] if ft is not pre else [])
        return {"modules": mods, "c": Contrast(pre, ft), "z0": torch.randn(batch, 4, latent, latent),
                "ctx": torch.randn(batch, 77, 768, dtype=dtype), "g": torch.Generator().manual_seed(0)}

    def step(s):
        delta = torch.zeros_like(s["z0"]).requires_grad_(True)
        t, e1, e2 = s["c"].draws(len(s["z0"]), s["z0"].shape[1:], 1, s["g"])
        j = s["c"](s["z0"] + delta, s["ctx"], s["ctx"], t, e1, e2, 1)
        torch.autograd.grad(j.sum(), delta)

    return tracked(build, step, fake=fake)


def ipclip(classes: int = 65, batch: int = 32, device: str = "meta", chunk: int | None = None):
    """Our IP-CLIP step on the meta device (shapes only; cheaper per op than fake tensors)."""
    import tempfile

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from modelseal.lock.ipclip import IPCLIP, frozen_features
    from modelseal.models.clip import CLIPBundle
    from modelseal.models.real_layout import CLIP_B16, write_clip_tokenizer

    with tempfile.TemporaryDirectory() as d:
        write_clip_tokenizer(Path(d))
        tok = CLIPTokenizer.from_pretrained(d)
    tracker = LiveTensors()
    with torch.device(device), tracker.mode:
        torch.manual_seed(0)
        clip = CLIPBundle(CLIPModel(CLIPConfig(**CLIP_B16)).eval().requires_grad_(False), tok, 224)
        model = IPCLIP(clip, [f"class {i}" for i in range(classes)])
        model.text_chunk = chunk
        opt = torch.optim.Adam(model.projector.parameters(), lr=1e-3)
        images = torch.rand(2 * batch, 3, 224, 224)
        labels = torch.randint(0, classes, (2 * batch,))
        frozen = frozen_features(clip, images)  # ours: the vision statistics are cached once
        for _ in range(2):
            text, _ = model.text_features(frozen["mu"], frozen["sigma"])
            loss = torch.nn.functional.cross_entropy(model.logits(frozen["feat"], text), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {"peak_gib": round(tracker.peak / GIB, 3)}


def measure(task: str, cfg: dict) -> dict:
    if task == "stage2":
        return stage2(cfg["batch"], cfg["structure"], cfg["precision"], cfg["ckpt"])
    if task == "audit":
        return audit(cfg["batch"], cfg["suspect"], {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg["precision"]])
    return ipclip(cfg["classes"], cfg["batch"], chunk=cfg["text_chunk"])


def configurations(only: set[str]) -> list[tuple[str, dict]]:
    rows = []
    if "stage2" in only:
        for batch in (1, 4, 10):
            rows.append(("stage2", {"structure": "reference", "precision": "fp32", "ckpt": False, "batch": batch}))
            for precision in ("fp32", "bf16"):
                for ckpt in (False, True):
                    if batch == 10 and not (precision == "bf16" and ckpt):
                        continue
                    rows.append(("stage2", {"structure": "ours", "precision": precision, "ckpt": ckpt, "batch": batch}))
    if "audit" in only:
        for suspect in ("full", "lora"):
            for batch in (1, 8):
                for precision in ("fp32", "bf16"):
                    rows.append(("audit", {"suspect": suspect, "batch": batch, "precision": precision}))
    if "ip-clip" in only:
        # ours only: the reference's 2 * B * C = 4,160 text passes per step take over 15 minutes
        # even on the meta device; gpu.sh measures both (lock_speed.py) where that is seconds
        for batch in (8, 16, 32):
            for chunk in (None, 4):
                rows.append(("ip-clip", {"structure": "ours", "classes": 65, "batch": batch, "text_chunk": chunk}))
    return rows


def plan(only: set[str]) -> list[dict]:
    """Each configuration in its own process (fresh allocator state; one crash costs one row).
    A process sometimes dies in a segfault under fake tensors (seen 2 of ~50, at random rows;
    the rerun gives the same peak to the byte): up to three tries per row."""
    import subprocess

    rows = []
    for task, cfg in configurations(only):
        for _ in range(3):
            p = subprocess.run([sys.executable, __file__, "--one", json.dumps([task, cfg])], capture_output=True,
                               text=True)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode == 0 and lines:
                rows.append({"task": task, **cfg, **json.loads(lines[-1])})
                break
        else:
            rows.append({"task": task, **cfg, "error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="stage2,audit,ip-clip")
    ap.add_argument("--check", action="store_true", help="also measure a small case with real tensors")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        task, cfg = json.loads(a.one)
        print(json.dumps(measure(task, cfg)))
        return
    if a.check:
        for fake in (True, False):
            print(f"check, stage 2 ours fp32 batch 2 at 128 px (16 x 16 latents), {'fake' if fake else 'real'} tensors:",
                  stage2(2, "ours", "fp32", False, fake=fake, latent=16), flush=True)
        for device in ("meta", "cpu"):
            print(f"check, IP-CLIP ours, ViT-B/16, 10 classes, batch 4 + 4, {device} tensors:",
                  ipclip(10, 4, device=device), flush=True)
    rows = plan(set(a.only.split(",")))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
