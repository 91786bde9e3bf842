"""Figures as PNG bytes (matplotlib, Agg backend): sample grids, bar charts, ROC and line charts."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def sample_grid(images: torch.Tensor, row_labels: list[str] | None = None, ncols: int = 10,
                title: str | None = None, cell: float = 0.7) -> bytes:
    """Images in [0, 1] (N, 3, H, W) laid out row by row; one label per row."""
    imgs = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    n = len(imgs)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell + (1.6 if row_labels else 0), nrows * cell),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]); ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if i < n:
            ax.imshow(imgs[i], interpolation="nearest")
    if row_labels:
        for r, lab in enumerate(row_labels[:nrows]):
            axes[r, 0].set_ylabel(lab, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def bar_chart(groups: dict[str, dict[str, float]], ylabel: str, title: str | None = None,
              hline: float | None = None, hline_label: str | None = None) -> bytes:
    """Grouped bars: groups[series][category] -> value."""
    series = list(groups)
    cats = list(dict.fromkeys(c for s in series for c in groups[s]))
    x = np.arange(len(cats))
    w = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(cats) + 1), 3))
    for i, s in enumerate(series):
        vals = [groups[s].get(c, np.nan) for c in cats]
        ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, label=s)
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=1, label=hline_label)
    ax.set_xticks(x, cats)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def roc_figure(curves: dict[str, tuple], title: str | None = None) -> bytes:
    """ROC curves: curves[name] = (fpr, tpr); the chance diagonal for reference."""
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    for name, (f, t) in curves.items():
        ax.plot(f, t, lw=1.6, label=name, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="chance")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_xlim(0, 1); ax.set_ylim(0, 1.01)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def line_chart(curves: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str,
               title: str | None = None, hlines: dict[str, float] | None = None, logx: bool = False) -> bytes:
    """Curves with markers: curves[name] = (x, y); hlines[label] = y as dashed references."""
    fig, ax = plt.subplots(figsize=(4.4, 3.2))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", lw=1.6, label=name)
    for i, (label, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, color=f"C{len(curves) + i}", ls="--", lw=1, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)
