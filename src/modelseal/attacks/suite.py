"""Image attacks by spec ('jpeg', 'crop:keep=0.5', 'purify:strength=0.3'): the distortions of
attacks.image and the regenerations of attacks.regenerate behind one call, each a function
(images, generator) -> images. Regenerations need their model: `vae` for regen_vae, `model`
(a T2IModel) for purify."""
from __future__ import annotations

from typing import Callable

import torch

from .image import ATTACKS, apply_attack, check_params, parse_spec
from .regenerate import REGENERATION, purify, vae_regenerate

ImageAttack = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]
KNOWN = ("none", *ATTACKS, *REGENERATION)


def image_attack(spec: str, vae=None, model=None) -> ImageAttack:
    """The attack `spec` names, its parameters checked; ValueError says what is wrong."""
    name, params = parse_spec(spec)
    if name in ("none", *ATTACKS):
        if name in ATTACKS:
            check_params(spec, ATTACKS[name], params)
        return lambda x, g=None: apply_attack(name, x, generator=g, **params)
    if name == "regen_vae":
        if vae is None:
            raise ValueError(f"attack {spec!r} needs an autoencoder to regenerate through")
        check_params(spec, vae_regenerate, params, ("images", "vae", "generator"))
        return lambda x, g=None: vae_regenerate(x, vae, generator=g, **params)
    if name == "purify":
        if model is None:
            raise ValueError(f"attack {spec!r} needs a diffusion model to purify through")
        check_params(spec, purify, params, ("images", "model", "generator"))
        if not 0 < float(params.get("strength", 0.2)) <= 1:
            raise ValueError(f"attack {spec!r}: strength must be in (0, 1]")
        return lambda x, g=None: purify(x, model, generator=g, **params)
    raise ValueError(f"unknown image attack {name!r}; known: {', '.join(KNOWN)}")


def needs_model(spec: str) -> str | None:
    """'vae' or 't2i' when the attack regenerates through a model, else None."""
    name = parse_spec(spec)[0]
    return {"regen_vae": "vae", "purify": "t2i"}.get(name)
