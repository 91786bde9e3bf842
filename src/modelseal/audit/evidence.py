"""Visual evidence of an audit: per image original | partial | recovered, the ROC curve, and
a self-contained report.html with each strip beside its score."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..runs import atomic_path, atomic_write_text


DECIDES = {
    "combined": "The number that decides is the combined score: CGI-DM's similarity plus the calibrated loss "
                "L_pre - L_ft, each robust-scaled over the images scored together.",
    "cgi-dm": "The number that decides is CGI-DM's similarity of the recovery to the original (the paper's score).",
    "calibrated": "The number that decides is the calibrated loss L_pre - L_ft; the pictures are CGI-DM's.",
    "pia": "The number that decides is PIA on the suspect alone; the pictures are CGI-DM's.",
    "pia-calibrated": "The number that decides is PIA of the suspect minus PIA of the pretrained model; the "
                      "pictures are CGI-DM's.",
    "near": "The number that decides is the audited image's similarity to its nearest generated image.",
    "near-calibrated": "The number that decides is the audited image's similarity to its nearest generated image "
                       "minus that to its nearest neutral-prompt image.",
}


def baseline_rows(res: dict) -> list[dict]:
    """The baselines' AUROCs for a report table, less those already shown as decision statistics;
    the null suspect is scored by the statistic that decides."""
    return [{"method": f"null suspect ({res['score']})" if k == "null_suspect" else k, "AUROC": v}
            for k, v in res["baselines"].items() if k not in res.get("decision_scores", {})]


def _upscale(x: torch.Tensor, min_side: int = 128) -> torch.Tensor:
    side = x.shape[-1]
    if side >= min_side:
        return x
    f = -(-min_side // side)
    return x.repeat_interleave(f, -2).repeat_interleave(f, -1)


def evidence_strip(*images: torch.Tensor) -> np.ndarray:
    """Images (3, H, W) side by side, e.g. original | partial | recovered (uint8 H x nW x 3),
    small images upscaled."""
    big = [_upscale(x) for x in images]
    pad = torch.ones(3, big[0].shape[-2], 4)
    row = torch.cat([t for x in big for t in (x, pad)][:-1], dim=-1)
    return (row.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def write_strips(folder: Path, names: list[str], strips: list[list[torch.Tensor]]) -> list[str]:
    """One PNG strip per image, named after it; the paths relative to folder's parent."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, row in zip(names, strips):
        stem = name.replace("/", "__").rsplit(".", 1)[0]
        p = folder / f"{stem}.png"
        with atomic_path(p) as tmp:
            Image.fromarray(evidence_strip(*row)).save(tmp, "PNG")
        paths.append(str(p.relative_to(folder.parent)))
    return paths


def write_evidence(folder: Path, names: list[str], images: torch.Tensor, scored: dict) -> list[str]:
    """CGI-DM's strips: original | partial | recovered."""
    return write_strips(folder, names, [[images[i], scored["partial"][i], scored["recovered"][i]]
                                        for i in range(len(names))])


def roc_figure_file(out: Path, curves: dict, labels) -> None:
    """roc.png: one ROC curve per named score (higher = member)."""
    from ..report.figures import roc_figure

    png = roc_figure({name: stats.roc_curve(np.asarray(v), labels)[:2] for name, v in curves.items()})
    with atomic_path(out / "roc.png") as tmp:
        tmp.write_bytes(png)


def _tpr(res: dict, fpr: str):
    """A TPR for a table: 'n/a' where the hold-out images are too few to show that FPR."""
    v = res["tpr_at_fpr"][fpr]
    return "n/a" if v is None else v


def write_report(out: Path, res: dict) -> None:
    """report.html: the summary, the ROC curve and, per image, the evidence strip beside its score."""
    import base64
    import html

    from ..report.html import Section, render

    if res.get("access") == "black-box":
        text = (f"Black-box audit: {res['n_generated']} images the suspect's service returned ({res['generated']})"
                + (f", {res['n_neutral']} for a neutral prompt ({res['neutral']})" if res.get("neutral") else "")
                + ". Each strip: the audited image | the nearest generated image"
                + (" | the nearest neutral-prompt image" if res.get("neutral") else "")
                + f" ({res['similarity']}). {DECIDES[res['score']]}")
        strip_head = "image | nearest generated" + (" | nearest neutral" if res.get("neutral") else "")
    else:
        text = (f"Suspect {res['finetuned']} ({res['suspect_kind']}) against {res['pretrained']}, prompt "
                f"'{res['prompt']}'. Each strip: original | partial (half of the latent removed) | recovered by "
                f"contrasting gradient inversion. A recovery close to the original is evidence that the suspect "
                f"model was fine-tuned on the image. {DECIDES[res['score']]}")
        strip_head = "original | partial | recovered"
    tables = []
    figures = []
    if res["mode"] == "evaluation":
        name = f"CGI-DM ({res['metric']})" if res["score"] == "cgi-dm" else res["score"]
        tables.append(("detection", [{"method": f"{name} (decides)", "AUROC": res["auroc"],
                                      "95% CI": f"{res['auroc_ci'][0]:.3f}-{res['auroc_ci'][1]:.3f}",
                                      "TPR@1%": _tpr(res, "0.01"), "TPR@5%": _tpr(res, "0.05")}]
                       + [{"method": k, "AUROC": v["auroc"], "TPR@1%": _tpr(v, "0.01"),
                           "TPR@5%": _tpr(v, "0.05")} for k, v in res["decision_scores"].items()
                          if k != res["score"]]
                       + (baseline_rows(res) if "baselines" in res else [])))
        if res.get("notes"):
            text += " Note: " + "; ".join(res["notes"]) + "."
        if (out / "roc.png").is_file():
            figures.append(("ROC curves", (out / "roc.png").read_bytes()))
    else:
        text = (f"Was this collection used? {res['set_verdict']} (set p-value {stats.format_p(res['set_p_value'])}, alpha "
                f"{res['alpha']}). " + text)
        tables.append(("the collection: one-sided rank-sum test, image scores above calibration scores",
                       [{"verdict": res["set_verdict"], "set p-value": stats.format_p(res["set_p_value"]), "test": res["set_test"],
                         "images": res["n_images"], "calibration": res["n_calibration"]}]))
        tables.append(("each image: conformal p-value against the calibration images",
                       [{"members found": f"{res['members_found']} of {res['n_images']}",
                         "control": res["control_note"], "alpha": str(res["alpha"]),
                         "at p <= alpha without control": res["members_uncontrolled"]}]))
    summary = Section("audit", text, tables, figures)
    rows = []
    for r in res["scores"]:
        img = ""
        if r.get("evidence"):
            b64 = base64.b64encode((out / r["evidence"]).read_bytes()).decode("ascii")
            img = f"<img src='data:image/png;base64,{b64}' style='height:96px'>"
        label = "member" if r.get("member") else ("holdout" if "member" in r else r.get("verdict") or r.get("role"))
        p = stats.format_p(r.get("p_value"))
        rows.append(f"<tr><td>{html.escape(r['image'])}</td><td>{html.escape(str(label))}</td>"
                    f"<td>{r['score']:.4f}</td><td>{p}</td><td>{img}</td></tr>")
    title = "modelseal audit (black-box)" if res.get("access") == "black-box" else "modelseal audit (CGI-DM)"
    page = render(title, [summary], meta={"mode": res["mode"], "images": len(res["scores"])})
    table = ("<h2>evidence per image</h2><table><tr><th>image</th><th>set / verdict</th><th>score</th>"
             f"<th>p-value</th><th>{strip_head}</th></tr>" + "".join(rows) + "</table>")
    atomic_write_text(out / "report.html", page.replace("</body></html>", table + "</body></html>"))
