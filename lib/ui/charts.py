"""Plotly figures for the pages (no Streamlit here: pages draw what these return).

Plotly renders a subset of HTML in labels, ticks and hover text (<a href>, <span style>, <b>, <br>),
so every class name goes through text.plot_escape, and class sets through text.readable_labels so
two classes never share a label.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from lib.text import plot_escape, readable_labels
from lib.vocab import SPLITS

SPLIT_COLOURS = {"train": "#2e7d32", "validation": "#1565c0", "test": "#ef6c00"}


def _labels(classes: list[str]) -> list[str]:
    """Distinct readable labels of the classes, made safe for Plotly's HTML-like text."""
    names = readable_labels(classes)
    return [plot_escape(names[str(c)]) for c in classes]


def class_balance(manifest: pd.DataFrame, classes: list[str]) -> go.Figure:
    """Grouped bars: usable images per class, one bar per split."""
    usable = manifest[manifest["usable"]]
    fig = go.Figure()
    labels = _labels(classes)
    for split in SPLITS:
        part = usable[usable["split"] == split]
        if part.empty:
            continue
        counts = part["class"].value_counts().reindex(classes, fill_value=0)
        fig.add_bar(
            name=split.capitalize(),
            x=labels,
            y=counts.to_numpy(),
            marker_color=SPLIT_COLOURS[split],
            text=counts.to_numpy(),
            textposition="auto",
            hovertemplate="%{x}<br>%{y} images<extra>" + split + "</extra>",
        )
    fig.update_layout(
        barmode="group",
        height=360,
        margin=dict(l=10, r=10, t=30, b=10),
        yaxis_title="images",
        legend=dict(orientation="h", y=1.1),
    )
    return fig


def sizes_vary(usable: pd.DataFrame) -> bool:
    """Whether the images come in more than one size (else the size charts would say nothing)."""
    return usable.groupby(["width", "height"]).ngroups > 1


def sizes_sentence(usable: pd.DataFrame) -> str:
    """The image sizes in one sentence (Markdown)."""
    sizes = usable.groupby(["width", "height"]).size()
    if len(sizes) == 0:
        return "There are no usable images."
    if len(sizes) == 1:
        w, h = sizes.index[0]
        return f"All images are **{w} x {h}** pixels; training resizes them."
    return (
        f"{len(sizes):,} different sizes; from {usable['width'].min()} to {usable['width'].max()} px wide "
        f"and {usable['height'].min()} to {usable['height'].max()} px high. Training resizes them all."
    )


def image_sizes(manifest: pd.DataFrame) -> go.Figure:
    """Width vs height of every usable image (size of the marker = how many share that size)."""
    usable = manifest[manifest["usable"]]
    grouped = usable.groupby(["width", "height"]).size().reset_index(name="n")
    fig = go.Figure(
        go.Scatter(
            x=grouped["width"],
            y=grouped["height"],
            mode="markers",
            marker=dict(
                size=(grouped["n"] / max(1, grouped["n"].max()) * 30 + 6).to_numpy(),
                color="#2e7d32",
                opacity=0.6,
            ),
            customdata=grouped["n"],
            hovertemplate="%{x} x %{y} px<br>%{customdata} images<extra></extra>",
        )
    )
    fig.update_layout(
        height=320, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="width (px)", yaxis_title="height (px)"
    )
    return fig


def aspect_ratios(manifest: pd.DataFrame) -> go.Figure:
    usable = manifest[manifest["usable"]]
    ratio = (usable["width"] / usable["height"].clip(lower=1)).round(2)
    fig = go.Figure(go.Histogram(x=ratio, nbinsx=30, marker_color="#1565c0"))
    fig.update_layout(
        height=320, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="width / height", yaxis_title="images"
    )
    return fig


def training_curves(history: pd.DataFrame) -> go.Figure:
    """Accuracy and loss per epoch, train and validation, from a run's history.csv."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Accuracy", "Loss"))
    x = list(range(1, len(history) + 1))
    for col, metric in ((1, "accuracy"), (2, "loss")):
        for key, name, colour in ((metric, "train", "#2e7d32"), ("val_" + metric, "validation", "#1565c0")):
            if key in history:
                fig.add_scatter(
                    x=x, y=history[key], name=name, line=dict(color=colour),
                    showlegend=(col == 1), row=1, col=col, mode="lines+markers",
                )  # fmt: skip
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="epoch")
    return fig


def confusion_matrix(cm, classes: list[str], *, normalized: bool = False, selected=None) -> go.Figure:
    """The confusion matrix as clickable square markers (Streamlit reports no clicks on go.Heatmap).

    Point number i * n + j is the cell (actual i, predicted j); `cell_of_point` maps it back.
    """
    import numpy as np

    cm = np.asarray(cm)
    n = len(classes)
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, np.maximum(totals, 1))
    values = share if normalized else cm
    labels = _labels(classes)
    xs, ys, text, colour, custom, ink = [], [], [], [], [], []
    for i in range(n):
        for j in range(n):
            xs.append(labels[j])
            ys.append(labels[i])
            text.append(f"{share[i, j]:.0%}" if normalized else f"{int(cm[i, j])}")
            colour.append(float(share[i, j]))
            custom.append([int(cm[i, j]), f"{share[i, j]:.0%}"])
            ink.append(text_colour(float(share[i, j])))
    side = max(28, min(110, int(520 / max(n, 1))))
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers+text",
            text=text,
            textfont=dict(size=max(9, min(16, side // 4)), color=ink),
            marker=dict(
                symbol="square",
                size=side,
                color=colour,
                colorscale=CELL_SCALE,
                cmin=0,
                cmax=1,
                line=dict(width=1, color="white"),
                showscale=False,
            ),
            customdata=custom,
            hovertemplate="Actual %{y}, predicted %{x}<br>%{customdata[0]} images (%{customdata[1]} of the row)"
            "<br>Click to see them<extra></extra>",
            selectedpoints=[selected] if selected is not None else None,
            selected=dict(marker=dict(opacity=1.0)),
            unselected=dict(marker=dict(opacity=0.35), textfont=dict(color="#333333")),  # legible when dimmed
        )
    )
    size = side * n + 160
    fig.update_layout(
        height=size,
        width=size + 60,
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(
            title="predicted", categoryorder="array", categoryarray=labels, side="top", showgrid=False
        ),
        yaxis=dict(
            title="actual", categoryorder="array", categoryarray=labels[::-1], showgrid=False, zeroline=False
        ),
        plot_bgcolor="white",
        dragmode=False,
        clickmode="event+select",
    )
    # values kept for tests and hover consistency
    fig.layout.meta = {"values": values.tolist()}
    return fig


CELL_SCALE = [[0, "#f1f8e9"], [0.5, "#7cb342"], [1, "#1b5e20"]]


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    return tuple(int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _luminance(rgb: tuple[float, float, float]) -> float:
    """WCAG relative luminance of an sRGB colour."""
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def cell_colour(value: float) -> tuple[float, float, float]:
    """The fill of a cell with this share, interpolated on CELL_SCALE like Plotly does."""
    value = min(max(value, 0.0), 1.0)
    for (a, ca), (b, cb) in zip(CELL_SCALE, CELL_SCALE[1:], strict=False):
        if value <= b:
            t = (value - a) / (b - a)
            x, y = _rgb(ca), _rgb(cb)
            return tuple(x[k] + (y[k] - x[k]) * t for k in range(3))  # type: ignore[return-value]
    return _rgb(CELL_SCALE[-1][1])


def text_colour(value: float) -> str:
    """Black or white, whichever contrasts more with the cell's fill (WCAG contrast ratio)."""
    lum = _luminance(cell_colour(value))
    return "#111111" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#ffffff"


def cell_of_point(point_number: int, n_classes: int) -> tuple[int, int]:
    """(actual index, predicted index) of a clicked confusion-matrix marker."""
    return divmod(int(point_number), n_classes)


def probability_bars(probs: dict[str, float], top: int = 5) -> go.Figure:
    """Horizontal bars of the top class probabilities (largest on top)."""
    names = dict(zip(probs, _labels(list(probs)), strict=True))
    items = sorted(probs.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    fig = go.Figure(
        go.Bar(
            x=[p for _, p in items],
            y=[names[c] for c, _ in items],
            orientation="h",
            marker_color=["#2e7d32" if i == len(items) - 1 else "#90a4ae" for i in range(len(items))],
            text=[f"{p:.0%}" for _, p in items],
            textposition="auto",
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        height=40 + 26 * len(items),
        margin=dict(l=0, r=0, t=0, b=0),
        xaxis=dict(range=[0, 1], visible=False),
        yaxis=dict(automargin=True),
        showlegend=False,
    )
    return fig


def reliability_diagram(before: list[dict], after: list[dict] | None) -> go.Figure:
    """Accuracy against confidence per bin, before and (unless None: no temperature) after the
    temperature; the diagonal is honest."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line=dict(color="#9e9e9e", dash="dot"),
            name="honest",
            hoverinfo="skip",
        )
    )
    lines = [(before, "the model's own", "#ef6c00")] + (
        [(after, "calibrated", "#1565c0")] if after is not None else []
    )
    for rows, name, colour in lines:
        fig.add_trace(
            go.Scatter(
                x=[r["confidence"] for r in rows],
                y=[r["accuracy"] for r in rows],
                mode="lines+markers",
                name=name,
                line=dict(color=colour),
                marker=dict(size=[6 + min(14, r["count"] ** 0.5 * 2) for r in rows]),
                customdata=[r["count"] for r in rows],
                hovertemplate="said %{x:.0%} sure, right %{y:.0%} of the time (%{customdata} images)<extra></extra>",
            )
        )
    fig.update_layout(
        height=340,
        margin=dict(l=0, r=0, t=10, b=0),
        xaxis=dict(title="how sure it said it was", range=[0, 1], tickformat=".0%"),
        yaxis=dict(title="how often it was right", range=[0, 1.02], tickformat=".0%"),
        legend=dict(orientation="h", y=-0.25),
    )
    return fig
