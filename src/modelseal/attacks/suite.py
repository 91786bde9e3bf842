"""Image attacks by spec ('jpeg', 'crop:keep=0.5', 'purify:strength=0.3'): the distortions of
attacks.image and the regenerations of attacks.regenerate behind one call, each a function
(images, generator) -> images. Regenerations need their model: `vae` for regen_vae, `model`
(a T2IModel) for purify."""
from __future__ import annotations

from typing import Callable

import torch

from .image import ATTACKS, apply_attack, check_params, parse_spec
from .regenerate import REGENERATION, check_strength

ImageAttack = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]
KNOWN = ("none", *ATTACKS, *REGENERATION)
_WHAT = {"vae": "an autoencoder to regenerate through", "t2i": "a diffusion model to purify through"}


def image_attack(spec: str, vae=None, model=None) -> ImageAttack:
    """The attack `spec` names, its parameters checked; ValueError says what is wrong."""
    name, params = parse_spec(spec)
    if name in ("none", *ATTACKS):
        if name in ATTACKS:
            check_params(spec, ATTACKS[name], params)
        return lambda x, g=None: apply_attack(name, x, generator=g, **params)
    if name not in REGENERATION:
        raise ValueError(f"unknown image attack {name!r}; known: {', '.join(KNOWN)}")
    fn, kind = REGENERATION[name]
    through = {"vae": vae, "t2i": model}[kind]
    if through is None:
        raise ValueError(f"attack {spec!r} needs {_WHAT[kind]}")
    check_params(spec, fn, params, positional=2)
    if "strength" in params:
        try:
            check_strength(params["strength"])
        except ValueError as e:
            raise ValueError(f"attack {spec!r}: {e}") from None
    return lambda x, g=None: fn(x, through, generator=g, **params)


def needs_model(spec: str) -> str | None:
    """'vae' or 't2i' when the attack regenerates through a model, else None."""
    entry = REGENERATION.get(parse_spec(spec)[0])
    return entry[1] if entry else None
