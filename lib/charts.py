"""Plotly figures for the pages (no Streamlit here: pages draw what these return)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from lib.text import readable_label

SPLIT_ORDER = ["train", "validation", "test"]
SPLIT_COLOURS = {"train": "#2e7d32", "validation": "#1565c0", "test": "#ef6c00"}


def class_balance(manifest: pd.DataFrame, classes: list[str]) -> go.Figure:
    """Grouped bars: usable images per class, one bar per split."""
    usable = manifest[manifest["usable"]]
    fig = go.Figure()
    labels = [readable_label(c) for c in classes]
    for split in SPLIT_ORDER:
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
