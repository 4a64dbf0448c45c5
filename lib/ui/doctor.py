"""The Data doctor page's pieces: the cached findings, review galleries with one-click decisions
(relabel as …, exclude, keep), duplicate pairs side by side, the outliers, the embedding map whose
click or lasso selection shows those images, and the decisions bar (undo, CSV, retrain)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lib import runs
from lib.data import curation
from lib.data.layouts import scan_key
from lib.doctor.examine import Report, embedding_map, examine
from lib.errors import UserError
from lib.text import md_escape, plural, readable_labels
from lib.train import jobs
from lib.ui import cached, state, widgets

PER_PAGE = 12
MAP_KEY = "doctor_map"
FLAG_STYLE = {  # flag -> (legend name, marker symbol, size)
    "": ("", "circle", 7),
    "suspect": ("suspect label", "x", 12),
    "duplicate": ("near-duplicate", "diamond", 11),
    "outlier": ("outlier", "star", 14),
}


@st.cache_data(show_spinner=False, max_entries=4)
def _report(root: str, fingerprint: str) -> Report:
    return examine(root)


def report(root: Path) -> Report:
    """The findings for a folder, computed once per content (decisions don't change them)."""
    return _report(str(root), scan_key(root))


@st.cache_data(show_spinner=False, max_entries=4)
def _points(root: str, fingerprint: str, _found: Report) -> pd.DataFrame:
    return pd.DataFrame(embedding_map(_found))


def map_points(root: Path, found: Report) -> pd.DataFrame:
    return _points(str(root), scan_key(root), found)


def _key(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _decide(root: Path, path: str, action: str, label: str = "") -> None:
    try:
        curation.decide(root, [(path, action, label)])
    except UserError as exc:
        st.session_state["doctor_error"] = str(exc)


def _undo(root: Path) -> None:
    curation.undo(root)


def decision_text(d: curation.Decision | None, labels: dict[str, str]) -> str:
    if d is None:
        return ""
    if d.action == "relabel":
        return f"relabelled as {labels.get(d.label, d.label)}"
    return {"exclude": "excluded", "keep": "kept as it is"}[d.action]


def actions(root: Path, path: str, classes: list[str], given: str, suggested: str, where: str) -> None:
    """The one-click decisions for one image: relabel as the suggestion (or another class),
    exclude, keep."""
    labels = readable_labels(classes)
    key = _key(where, path)
    if suggested and suggested != given:
        st.button(
            f"Relabel as {labels[suggested]}",
            key=f"rl_{key}",
            on_click=_decide,
            args=(root, path, "relabel", suggested),
            width="stretch",
        )
    mid, right = st.columns(2)
    mid.button("Exclude", key=f"ex_{key}", on_click=_decide, args=(root, path, "exclude"), width="stretch")
    right.button("Keep", key=f"kp_{key}", on_click=_decide, args=(root, path, "keep"), width="stretch")
    others = [c for c in classes if c not in (given, suggested)]
    if others:
        with st.popover("Another class …" if suggested else "Relabel as …", width="stretch"):
            for c in others:
                st.button(
                    labels[c], key=f"rlo_{key}_{_key(c)}", on_click=_decide, args=(root, path, "relabel", c)
                )


def _page_of(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    pages = max(1, -(-len(rows) // PER_PAGE))
    if pages == 1:
        return rows
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page")
    return rows[(page - 1) * PER_PAGE : page * PER_PAGE]


def _undecided(
    rows: list[dict[str, Any]], decided: dict[str, curation.Decision], fields: tuple[str, ...], key: str
):
    hide = st.toggle("Hide the ones already decided", value=True, key=f"{key}_hide")
    if not hide:
        return rows
    return [r for r in rows if not all(r[f] in decided for f in fields)]


def suspects(root: Path, found: Report, decided: dict[str, curation.Decision]) -> None:
    labels = readable_labels(found.classes)
    rows = _undecided(found.label_issues, decided, ("path",), "sus")
    if not found.label_issues:
        st.success("No suspect labels: every image looks like its class to a model that never saw it.")
        return
    st.caption(
        "Ranked most suspect first: a model trained without each image thinks it belongs to another "
        "class (cleanlab's confident learning). Score 1 = surely mislabelled."
    )
    cols = st.columns(3)
    for i, row in enumerate(_page_of(rows, "sus")):
        with cols[i % 3].container(border=True):
            st.image(cached.thumbnail(row["file"]), width="stretch")
            st.markdown(
                f"**{md_escape(labels[row['given']])}** → looks like **{md_escape(labels[row['suggested']])}** "
                f"· score {row['score']:.2f}"
            )
            st.caption(md_escape(row["path"]) + _status(decided.get(row["path"]), labels))
            actions(root, row["path"], found.classes, row["given"], row["suggested"], "sus")


def _status(d: curation.Decision | None, labels: dict[str, str]) -> str:
    text = decision_text(d, labels)
    return f" · ✔ {text}" if text else ""


def duplicates(root: Path, found: Report, decided: dict[str, curation.Decision]) -> None:
    labels = readable_labels(found.classes)
    if not found.near_duplicates:
        st.success("No near-duplicates: no two images are resized or re-encoded copies of each other.")
        return
    kinds = pd.Series([r["kind"] for r in found.near_duplicates]).value_counts().to_dict()
    st.caption(
        "Pairs of images that look like copies (resized, re-compressed or slightly cropped): "
        + ", ".join(f"{n} {k}" for k, n in kinds.items())
        + ". Across splits, a copy lets the test score look better than it is; with two labels, "
        "one of them is wrong."
    )
    rows = _undecided(found.near_duplicates, decided, ("a", "b"), "dup")
    for row in _page_of(rows, "dup"):
        with st.container(border=True):
            st.markdown(f"**{row['kind']}** · similarity {row['similarity']:.2f}")
            for side, col in zip(("a", "b"), st.columns(2), strict=True):
                with col:
                    cls = row[f"class_{side}"]
                    st.image(cached.thumbnail(row[f"file_{side}"]), width=220)
                    st.caption(
                        f"{md_escape(row[side])} · {md_escape(labels[cls])} · {row[f'split_{side}']}"
                        + _status(decided.get(row[side]), labels)
                    )
                    other = row["class_b" if side == "a" else "class_a"]
                    actions(root, row[side], found.classes, cls, other, f"dup{side}")


def outliers(root: Path, found: Report, decided: dict[str, curation.Decision]) -> None:
    labels = readable_labels(found.classes)
    if not found.outliers:
        st.success("No outliers: every image sits among others of its kind.")
        return
    st.caption("Images far from every class (a screenshot in a folder of leaves, say): most unusual first.")
    rows = _undecided(found.outliers, decided, ("path",), "out")
    cols = st.columns(3)
    for i, row in enumerate(_page_of(rows, "out")):
        with cols[i % 3].container(border=True):
            st.image(cached.thumbnail(row["file"]), width="stretch")
            st.markdown(f"**{md_escape(labels[row['class']])}** · score {row['score']:.2f}")
            st.caption(md_escape(row["path"]) + _status(decided.get(row["path"]), labels))
            actions(root, row["path"], found.classes, row["class"], "", "out")


def map_figure(points: pd.DataFrame, classes: list[str]) -> go.Figure:
    """The 2-D map: one trace per class, suspects/duplicates/outliers drawn bigger with their own
    symbol and a dark outline; customdata holds each point's path (for the selection)."""
    labels = readable_labels(classes)
    fig = go.Figure()
    palette = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for i, cls in enumerate(classes):
        part = points[points["class"] == cls]
        if part.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=part["x"],
                y=part["y"],
                mode="markers",
                name=labels[cls],
                customdata=part["path"],
                text=[
                    f"{p}<br>{FLAG_STYLE[f][0]}" if f else p
                    for p, f in zip(part["path"], part["flag"], strict=True)
                ],
                hovertemplate="%{text}<extra>" + labels[cls].replace("<", "&lt;") + "</extra>",
                marker={
                    "color": palette[i % len(palette)],
                    "symbol": [FLAG_STYLE[f][1] for f in part["flag"]],
                    "size": [FLAG_STYLE[f][2] for f in part["flag"]],
                    "line": {"width": [1.5 if f else 0 for f in part["flag"]], "color": "#111"},
                    "opacity": 0.85,
                },
            )
        )
    fig.update_layout(
        height=560,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        dragmode="zoom",
        clickmode="event+select",
        legend={"orientation": "h", "y": 1.06},
        xaxis={"visible": False},
        yaxis={"visible": False},
    )
    return fig


def selected_paths(event: Any) -> list[str]:
    """Paths of the points a click, box or lasso selected (from the chart's selection event)."""
    try:
        chosen = event.selection.points
    except AttributeError:
        chosen = (event or {}).get("selection", {}).get("points", [])
    return [str(p["customdata"]) for p in chosen if p.get("customdata") is not None]


def embedding(root: Path, found: Report, decided: dict[str, curation.Decision]) -> None:
    labels = readable_labels(found.classes)
    with st.spinner("Drawing the map (t-SNE)…"):
        points = map_points(root, found)
    sampled = len(points) < found.images
    st.caption(
        "Each dot is an image, placed near images the network sees as similar (t-SNE), coloured by its "
        "class. ✕ suspect label, ◆ near-duplicate, ★ outlier. Click a dot, or pick the lasso in the chart's toolbar and "
        "draw around some, to see them below."
        + (
            f" Showing {len(points):,} of {found.images:,} images: every flagged one and a sample."
            if sampled
            else ""
        )
    )
    event = st.plotly_chart(
        map_figure(points, found.classes),
        key=MAP_KEY,
        on_select="rerun",
        selection_mode=("points", "box", "lasso"),
    )
    chosen = selected_paths(event)
    if not chosen:
        return
    rows = points.set_index("path").loc[[p for p in dict.fromkeys(chosen) if p in set(points["path"])]]
    st.markdown(f"**{plural(len(rows), 'image')} selected on the map**")
    cols = st.columns(6)
    for i, (path, row) in enumerate(rows.head(60).iterrows()):
        with cols[i % 6]:
            st.image(cached.thumbnail(row["file"]), width="stretch")
            flag = FLAG_STYLE[row["flag"]][0]
            st.caption(
                f"{md_escape(str(path))} · {md_escape(labels[row['class']])}"
                + (f" · {flag}" if flag else "")
                + _status(decided.get(str(path)), labels)
            )
    if len(rows) > 60:
        st.caption(f"… and {len(rows) - 60:,} more: select fewer to see them all.")


def decisions_bar(root: Path, found: Report, decided: dict[str, curation.Decision]) -> None:
    """How many decisions, undo, the CSV of decisions and "Retrain with these fixes"."""
    counts = pd.Series([d.action for d in decided.values()]).value_counts().to_dict()
    words = ", ".join(
        f"{counts[a]} {w}"
        for a, w in (("relabel", "relabelled"), ("exclude", "excluded"), ("keep", "kept"))
        if a in counts
    )
    st.markdown(
        f"**{plural(len(decided), 'decision')}**" + (f" ({words})" if words else "")
        + ". They are saved in the app's own store for this dataset; your files are never moved, renamed or deleted."
    )  # fmt: skip
    a, b, c = st.columns(3)
    a.button(
        "↶ Undo the last decision",
        on_click=_undo,
        args=(root,),
        disabled=not curation.can_undo(root),
        width="stretch",
    )
    b.download_button(
        "Download the decisions (CSV)",
        data=curation.to_csv(decided),
        file_name=f"{root.name}-decisions.csv",
        mime="text/csv",
        disabled=not decided,
        width="stretch",
    )
    if c.button("Retrain with these fixes", type="primary", disabled=not decided, width="stretch"):
        retrain(root, decided)


def retrain(root: Path, decided: dict[str, curation.Decision]) -> None:
    """Start a run with the visitor's training settings on the curated dataset, then go to Train."""
    try:
        state.check_room()
        config = state.settings_config(data_dir=str(root))
        run_dir = jobs.start(config, state.runs_dir())
    except UserError as exc:
        widgets.error(exc)
        return
    runs.set_note(
        run_dir,
        f"Retrained with {plural(len(decided), 'Data doctor decision')} ({curation.fingerprint(root)}).",
    )
    state.set_active_run(run_dir)
    st.switch_page("pages/2_Train.py")


def show_error_once() -> None:
    if message := st.session_state.pop("doctor_error", None):
        widgets.error(message)


def with_files(found: Report) -> Report:
    """The findings with each path's file on disk (the galleries need it), added once."""
    if found.label_issues and "file" in found.label_issues[0]:
        return found
    base = Path(found.root)
    for row in found.label_issues + found.outliers:
        row["file"] = str(base / row["path"])
    for row in found.near_duplicates:
        row["file_a"], row["file_b"] = str(base / row["a"]), str(base / row["b"])
    return found


Tab = Callable[[Path, Report, dict[str, curation.Decision]], None]
