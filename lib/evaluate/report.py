"""The evaluation report as one self-contained HTML file (inline CSS, embedded thumbnails) and Markdown.

Every piece of user text (class names, file names, paths, notes) is escaped: a class called
`<b>x</b>` or a file called `![x](http://e/x.png)` shows as text, never as markup or a remote image.
On a hosted demo the report names the dataset by its folder's name only (no server paths).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from lib import files, settings
from lib.data.images import thumbnail
from lib.errors import UserError
from lib.evaluate.predictions import EvaluationResult, confident_mistakes
from lib.text import md_escape
from lib.vocab import EVAL_SPLITS

MAX_MISTAKES = 12
THUMB_SIDE = 96
TOP_PROBS = 3


def h(text: object) -> str:
    return html.escape(str(text), quote=True)


def _pct(x: float) -> str:
    return f"{100.0 * float(x):.1f}%"


def _split_label(result: EvaluationResult) -> str:
    if result.split == "all":
        return "all splits"
    return f"{result.split} split" if result.split in EVAL_SPLITS else f"folder {result.split}"


def _thumbnail_data_uri(path: str) -> str | None:
    """A small JPEG of the image as a data: URI (None when the file can no longer be read)."""
    try:
        rgb = thumbnail(path, side=THUMB_SIDE)
    except (UserError, OSError):
        return None
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _top_probs(row: pd.Series, classes: Sequence[str], k: int = TOP_PROBS) -> list[tuple[str, float]]:
    probs = [(c, float(row.get(f"prob_{c}", 0.0))) for c in classes]
    probs.sort(key=lambda t: -t[1])
    return probs[:k]


def _shown_folder(folder: Path | None) -> str:
    """The dataset folder as the report shows it: its name only on a hosted demo."""
    if not folder:
        return ""
    return Path(folder).name if settings.hosted() else str(folder)


def _header_facts(result: EvaluationResult) -> list[tuple[str, str]]:
    cfg = result.config or {}
    facts = [
        ("Run", result.run_dir.name if result.run_dir else ""),
        ("Base model", str(cfg.get("base", ""))),
        ("Image size", str(cfg.get("image_size", ""))),
        ("Evaluated on", _split_label(result)),
        ("Data folder", _shown_folder(result.data_dir)),
        ("Generated", _dt.datetime.now().strftime("%Y-%m-%d %H:%M")),
    ]
    return [(k, v) for k, v in facts if v]


def _summary_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    base = m["majority_baseline"]
    rows = [
        ("Images", str(m["n_images"])),
        ("Correct", str(m["correct"])),
        ("Incorrect", str(m["incorrect"])),
        ("Accuracy", _pct(m["accuracy"])),
        (
            "Majority-class baseline",
            f"{_pct(base['accuracy'])} (always guessing {base['class']})"
            if base["class"] is not None
            else "-",
        ),
    ]
    for k, v in (m.get("top_k_accuracy") or {}).items():
        rows.append((f"Top-{k} accuracy", _pct(v)))
    rows.append(("Macro F1", f"{m['macro_avg']['f1']:.3f}"))
    rows.append(("Weighted F1", f"{m['weighted_avg']['f1']:.3f}"))
    return rows


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
 color:#1f2328;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de;
 padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}
.facts td{border:none;padding:.1rem .8rem .1rem 0;text-align:left}.facts td:first-child{color:#59636e}
.cm td{min-width:3rem;text-align:center}.cm td.diag{font-weight:600}
.cm .corner{background:#fff;border:none;font-size:.8rem;color:#59636e;text-align:left}
.good{color:#1a7f37}.bad{color:#cf222e}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.5rem;width:240px;font-size:.85rem}
.card img{display:block;max-width:96px;max-height:96px;margin-bottom:.3rem}
.card .name{font-weight:600;word-break:break-all}
.noimg{width:96px;height:64px;background:#eee;color:#888;display:flex;align-items:center;justify-content:center}
.bar{display:flex;align-items:center;gap:.4rem;margin:.15rem 0}
.bar .lbl{width:80px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar .track{flex:1;background:#eaeef2;height:.7rem;border-radius:3px;overflow:hidden}
.bar .fill{height:100%;background:#8c959f}.bar .fill.pred{background:#cf222e}.bar .fill.act{background:#1a7f37}
.bar .val{width:3.2rem;text-align:right}
"""


def render_html(result: EvaluationResult) -> str:
    """The whole report as one HTML document (no external resources)."""
    title = f"Evaluation of {result.run_dir.name if result.run_dir else 'a run'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{h(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{h(title)}</h1>",
        *_html_facts(result),
        *_html_summary(result.metrics),
        *_html_matrix(result.metrics, result.classes),
        *_html_per_class(result.metrics, result.classes),
        *_html_missed(result.metrics),
        *_html_mistakes(result),
        *_html_notes(result),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _html_facts(result: EvaluationResult) -> list[str]:
    rows = [f'<tr><td>{h(k)}</td><td class="l">{h(v)}</td></tr>' for k, v in _header_facts(result)]
    return ['<table class="facts">', *rows, "</table>"]


def _html_summary(m: dict[str, Any]) -> list[str]:
    out = ["<h2>Summary</h2><table>"]
    acc_cls = "good" if m["accuracy"] > m["majority_baseline"]["accuracy"] else "bad"
    for k, v in _summary_rows(m):
        cls = f' class="l {acc_cls}"' if k == "Accuracy" else ' class="l"'
        out.append(f'<tr><th class="l">{h(k)}</th><td{cls}>{h(v)}</td></tr>')
    return [*out, "</table>"]


def _html_matrix(m: dict[str, Any], classes: Sequence[str]) -> list[str]:
    cm = np.asarray(m["confusion_matrix"])
    norm = np.asarray(m["confusion_matrix_normalized"])
    out = [
        "<h2>Confusion matrix</h2>",
        "<p>Rows are the actual classes, columns the predicted ones; shading is the share of the row.</p>",
        '<table class="cm"><tr><th class="corner">actual \\ predicted</th>',
        *(f"<th>{h(c)}</th>" for c in classes),
        "<th>total</th></tr>",
    ]
    for i, actual in enumerate(classes):
        out.append(f'<tr><th class="l">{h(actual)}</th>')
        for j in range(len(classes)):
            share = float(norm[i, j]) if norm.size else 0.0
            colour = "26,127,55" if i == j else "207,34,46"
            alpha = 0.08 + 0.72 * share if cm[i, j] else 0.0
            diag = ' class="diag"' if i == j else ""
            tip = f"{actual} predicted as {classes[j]}: {int(cm[i, j])} ({_pct(share)} of {actual})"
            out.append(
                f'<td{diag} style="background:rgba({colour},{alpha:.2f})" title="{h(tip)}">{int(cm[i, j])}</td>'
            )
        out.append(f"<td>{int(cm[i].sum())}</td></tr>")
    return [*out, "</table>"]


def _html_per_class(m: dict[str, Any], classes: Sequence[str]) -> list[str]:
    out = [
        "<h2>Per class</h2><table>",
        '<tr><th class="l">class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>',
    ]
    for c in classes:
        pc = m["per_class"][c]
        out.append(
            f'<tr><td class="l">{h(c)}</td><td>{pc["precision"]:.3f}</td><td>{pc["recall"]:.3f}</td>'
            f"<td>{pc['f1']:.3f}</td><td>{pc['support']}</td></tr>"
        )
    for name, key in (("macro average", "macro_avg"), ("weighted average", "weighted_avg")):
        avg = m[key]
        out.append(
            f'<tr><th class="l">{name}</th><td>{avg["precision"]:.3f}</td><td>{avg["recall"]:.3f}</td>'
            f"<td>{avg['f1']:.3f}</td><td>{m['n_images']}</td></tr>"
        )
    return [*out, "</table>"]


def _html_missed(m: dict[str, Any]) -> list[str]:
    if not m["most_missed"]:
        return ["<h2>Most-missed pairs</h2>", "<p>No mistakes.</p>"]
    return [
        "<h2>Most-missed pairs</h2>",
        "<ol>",
        *(f"<li>{h(p['text'])}</li>" for p in m["most_missed"]),
        "</ol>",
    ]


def _html_mistakes(result: EvaluationResult) -> list[str]:
    mistakes = confident_mistakes(result.predictions, limit=MAX_MISTAKES)
    if mistakes.empty:
        return ["<h2>Most confident mistakes</h2>", "<p>No mistakes.</p>"]
    out = ["<h2>Most confident mistakes</h2>", '<div class="cards">']
    for _, row in mistakes.iterrows():
        uri = _thumbnail_data_uri(str(row["path"]))
        name = os.path.basename(str(row["path"]))
        img = f'<img src="{uri}" alt="{h(name)}">' if uri else '<div class="noimg">unreadable</div>'
        out.append(f'<div class="card" title="{h(name)}">{img}')
        out.append(f'<div class="name">{h(name)}</div>')
        out.append(
            f"<div>actual <b>{h(row['actual'])}</b>, predicted <b>{h(row['predicted'])}</b> "
            f"({_pct(row['confidence'])})</div>"
        )
        for c, p in _top_probs(row, result.classes):
            kind = " pred" if c == row["predicted"] else (" act" if c == row["actual"] else "")
            out.append(
                f'<div class="bar"><span class="lbl" title="{h(c)}">{h(c)}</span>'
                f'<span class="track"><span class="fill{kind}" style="display:block;width:{100 * p:.1f}%">'
                f'</span></span><span class="val">{_pct(p)}</span></div>'
            )
        out.append("</div>")
    return [*out, "</div>"]


def _html_notes(result: EvaluationResult) -> list[str]:
    notes = _run_notes(result)
    if not notes:
        return []
    return ["<h2>Run notes</h2>", f'<pre style="white-space:pre-wrap">{h(notes)}</pre>']


def _run_notes(result: EvaluationResult) -> str:
    return result.run.note.strip() if result.run is not None else ""


def render_markdown(result: EvaluationResult) -> str:
    """The same report in Markdown (no images; probabilities as text)."""
    m = result.metrics
    classes = result.classes
    cm = m["confusion_matrix"]
    title = f"Evaluation of {result.run_dir.name if result.run_dir else 'a run'}"
    out: list[str] = [f"# {md_escape(title)}", ""]
    for k, v in _header_facts(result):
        out.append(f"- **{k}**: {md_escape(v)}")
    out += ["", "## Summary", "", "| | |", "|---|---|"]
    for k, v in _summary_rows(m):
        out.append(f"| {md_escape(k)} | {md_escape(v)} |")

    out += ["", "## Confusion matrix", "", "Rows are the actual classes, columns the predicted ones.", ""]
    out.append("| actual \\\\ predicted | " + " | ".join(md_escape(c) for c in classes) + " | total |")
    out.append("|---|" + "---:|" * (len(classes) + 1))
    for i, c in enumerate(classes):
        out.append(f"| **{md_escape(c)}** | " + " | ".join(str(v) for v in cm[i]) + f" | {sum(cm[i])} |")

    out += [
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in classes:
        pc = m["per_class"][c]
        out.append(
            f"| {md_escape(c)} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |"
        )
    for name, key in (("macro average", "macro_avg"), ("weighted average", "weighted_avg")):
        avg = m[key]
        out.append(
            f"| *{name}* | {avg['precision']:.3f} | {avg['recall']:.3f} | {avg['f1']:.3f} | {m['n_images']} |"
        )

    out += ["", "## Most-missed pairs", ""]
    if m["most_missed"]:
        out.extend(f"{n}. {md_escape(p['text'])}" for n, p in enumerate(m["most_missed"], 1))
    else:
        out.append("No mistakes.")

    out += ["", "## Most confident mistakes", ""]
    mistakes = confident_mistakes(result.predictions)
    if mistakes.empty:
        out.append("No mistakes.")
    else:
        out += ["| file | actual | predicted | confidence | top probabilities |", "|---|---|---|---:|---|"]
        for _, row in mistakes.iterrows():
            tops = ", ".join(f"{md_escape(c)} {md_escape(_pct(p))}" for c, p in _top_probs(row, classes))
            out.append(
                f"| {md_escape(os.path.basename(str(row['path'])))} | {md_escape(row['actual'])} | "
                f"{md_escape(row['predicted'])} | {md_escape(_pct(row['confidence']))} | {tops} |"
            )
    notes = _run_notes(result)
    if notes:
        out += ["", "## Run notes", ""]
        out.append("  \n".join(md_escape(line) for line in notes.splitlines()))
    return "\n".join(out) + "\n"


def write_report(result: EvaluationResult, directory: str | Path | None = None) -> dict[str, Path]:
    """Save report.html and report.md next to the run (its cache folder if read-only); return both paths."""
    if directory is not None:
        folder = Path(directory)
    elif result.run is not None:
        folder = result.run.output_dir("reports")
    else:
        raise UserError("There is no run to save the report next to: give a folder.")
    paths = {"html": folder / "report.html", "markdown": folder / "report.md"}
    try:
        files.write_atomic(paths["html"], render_html(result))
        files.write_atomic(paths["markdown"], render_markdown(result))
    except OSError as exc:
        raise UserError(f"The report could not be saved ({exc.strerror or exc}).") from exc
    return paths
