"""Griffe extension for the API reference: Sphinx roles in docstrings (:class:`~a.b.C`,
:func:`f`) become Markdown, a link where the target is a documented config class, code
otherwise. Static: it reads docstrings, it imports nothing of modelseal."""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|obj|data|exc):`(~?)([\w.]+)`")
LINKED = re.compile(r"modelseal\.config\.\w+$")


def _markdown(match: re.Match) -> str:
    short, target = match.group(1), match.group(2)
    shown = target.rsplit(".", 1)[-1] if short else target
    return f"[`{shown}`][{target}]" if LINKED.match(target) else f"`{shown}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = ROLE.sub(_markdown, obj.docstring.value)
