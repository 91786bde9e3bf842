"""A self-contained HTML report: tables and PNG figures embedded as base64."""
from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass, field


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}figure{margin:1em 0}
figcaption{font-size:.85em;color:#555}img{max-width:100%}.meta{color:#666;font-size:.85em}
"""


def _cell(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        # small figures (p-values, rates) keep their magnitude instead of printing 0.00
        return f"{v:.1e}" if v != 0 and abs(v) < 0.01 else f"{v:.2f}"
    return html.escape(str(v))


def _table(caption: str, rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def render(title: str, sections: list[Section], meta: dict | None = None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    meta = dict(meta or {})
    meta.setdefault("generated", time.strftime("%Y-%m-%d %H:%M:%S"))
    parts.append("<p class='meta'>" + " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}"
                                                   for k, v in meta.items()) + "</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        for cap, rows in s.tables:
            parts.append(_table(cap, rows))
        for cap, png in s.figures:
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
