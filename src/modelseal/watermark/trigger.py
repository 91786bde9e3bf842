"""Where the trigger goes in a prompt.

A trigger is a prefix of the prompt (the paper's "*[Z]& "), or a template in which
config.TRIGGER_SLOT ("{}") stands for the prompt: "{} sks" appends " sks". The place
matters to a CLIP text encoder, whose attention is causal: a suffix leaves the prompt's own
token embeddings as they were and changes only the tokens after it, so the unmarked model's
triggered image stays closer to its clean one (docs/benchmarks/watermark.md measures both).
"""
from __future__ import annotations

from ..config import TRIGGER_SLOT
from ..errors import InputError


def add_trigger(trigger: str | None, prompt: str) -> str:
    """The triggered prompt: `prompt` with `trigger` in place (no trigger: the prompt itself)."""
    if not trigger:
        return prompt
    if TRIGGER_SLOT in trigger:
        return trigger.replace(TRIGGER_SLOT, prompt, 1)
    return trigger + prompt


def add_triggers(trigger: str | None, prompts: list[str], tokenizer=None) -> list[str]:
    """The triggered prompts. With the model's `tokenizer`, a trigger with words after the
    prompt is checked to fit: the text encoder cuts a prompt at its token limit, and a cut
    trigger would leave the prompt clean (what comes before the prompt is never cut)."""
    out = [add_trigger(trigger, p) for p in prompts]
    after = trigger.split(TRIGGER_SLOT, 1)[1] if trigger and TRIGGER_SLOT in trigger else ""
    if tokenizer is not None and after.strip():
        limit = tokenizer.model_max_length
        for p, q in zip(prompts, out):
            if len(tokenizer(q).input_ids) > limit:
                raise InputError(f"the prompt {p!r} with the trigger {trigger!r} is longer than the text encoder's "
                                 f"{limit} tokens, which would cut the trigger off",
                                 "shorten the prompt, or put the trigger before it: a prefix is never cut")
    return out


def trigger_words(trigger: str | None) -> str:
    """The trigger's own text, without the prompt's slot or the spaces around it."""
    return (trigger or "").replace(TRIGGER_SLOT, " ").strip()
