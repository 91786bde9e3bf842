"""Divergence: a training loop stops at its first non-finite loss or weight, so that no NaN
model is ever saved, measured or reported. One refusal for every trainer: exit 2 and one
line naming the step and the option to lower, with an example value.

    guard = Divergence("lock training (ip-clip)", "--lr", cfg.lr, default=0.01)
    for step in ...:
        loss = ...
        loss.backward()
        guard.step(opt, step + 1)               # opt.step(), an overflowing update refused
        guard.check(step + 1, loss, params)     # a non-finite loss or weight refused
"""
from __future__ import annotations

import math
from typing import Callable

from ..errors import InputError


class Diverged(InputError):
    """A training diverged (a non-finite loss or weight): bad input (an option too large),
    told apart so a command can drop all the resume state trained with it."""


class Divergence:
    """The refusal of one training loop: `what` names the loop in the message, `option` the
    option to lower (its value `value`; `default`, the option's default, is the example when
    it is lower, else a tenth of `value`). `lower=False`: the option is to be raised.
    `on_diverge`: called before the refusal is raised (to drop the loop's resume state);
    `fix`, when set, replaces the message's "lower OPTION, e.g. ..." (a loop whose rate is
    no option of the command that runs it)."""

    def __init__(self, what: str, option: str, value: float, default: float | None = None, lower: bool = True,
                 on_diverge: Callable[[], None] | None = None, fix: str | None = None):
        self.what, self.option, self.value, self.default, self.lower = what, option, float(value), default, lower
        self.on_diverge, self.fix = on_diverge, fix

    def example(self) -> float:
        if self.lower:
            return self.default if self.default is not None and self.default < self.value else self.value / 10
        return self.default if self.default is not None and self.default > self.value else max(self.value * 10, 1e-3)

    def error(self, step: int, why: str) -> Diverged:
        if self.on_diverge is not None:
            self.on_diverge()
        verb = "lower" if self.lower else "raise"
        return Diverged(f"{self.what} diverged at step {step} ({why})",
                          self.fix or f"{verb} {self.option}, e.g. {self.option} {self.example():g}")

    def step(self, opt, step: int) -> None:
        """opt.step(); a learning rate so large that the update itself overflows is refused."""
        try:
            opt.step()
        except RuntimeError as e:
            if "overflow" not in str(e):
                raise
            raise self.error(step, "the optimiser's update overflows") from None

    def check(self, step: int, loss=None, params=()) -> None:
        """Refuse a non-finite loss (a tensor or a number) or trained weight, after the step
        (one device sync for all of them)."""
        ok = None
        for p in params:
            fin = p.detach().isfinite().all()
            ok = fin if ok is None else ok & fin.to(ok.device)
        if loss is not None and hasattr(loss, "detach"):
            fin = loss.detach().isfinite().all()
            ok = fin if ok is None else fin & ok.to(fin.device)
        elif loss is not None and not math.isfinite(float(loss)):
            raise self.error(step, f"loss {float(loss)}")
        if ok is None or bool(ok):
            return
        value = float(loss.detach()) if loss is not None else 0.0
        raise self.error(step, f"loss {value}" if not math.isfinite(value) else "weights not finite")
