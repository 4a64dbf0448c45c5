"""lib.ui.charts: class names are plain text in Plotly (which renders <a href>, <span style>, <b> and
fills in %{...}), and two classes never share a label."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from lib.ui import charts

EVIL = ['<a href="http://evil">x</a>', '<span style="color:red">y</span>', "%{customdata[0]}_z"]


def _manifest(classes: list[str]) -> pd.DataFrame:
    rows = [
        {"class": c, "split": split, "usable": True, "width": 64, "height": 64}
        for c in classes
        for split in ("train", "validation", "test")
    ]
    return pd.DataFrame(rows)


def _user_strings(fig) -> list[str]:
    """Every label, tick text and hover text of the figure's traces and axes."""
    data = json.loads(fig.to_json())
    found = []
    for trace in data["data"]:
        for key in ("x", "y", "text", "hovertext"):
            value = trace.get(key)
            if isinstance(value, list):
                found += [v for v in value if isinstance(v, str)]
    for axis in ("xaxis", "yaxis"):
        found += [v for v in data["layout"].get(axis, {}).get("categoryarray", []) if isinstance(v, str)]
    return found


def test_class_names_reach_plotly_escaped():
    figures = [
        charts.class_balance(_manifest(EVIL), EVIL),
        charts.confusion_matrix(np.array([[2, 1, 0], [0, 3, 0], [1, 0, 2]]), EVIL),
        charts.probability_bars(dict(zip(EVIL, (0.5, 0.3, 0.2), strict=True))),
    ]
    for fig in figures:
        labels = _user_strings(fig)
        assert labels
        for label in labels:
            assert "<" not in label and ">" not in label and "%{" not in label, label
        text = fig.to_json()
        assert "<a href" not in text and "<span" not in text
        assert '&lt;a href="http://evil"&gt;x&lt;/a&gt;' in labels  # shown as text, entities decoded
    # The templates' own placeholders still work.
    matrix = figures[1].data[0]
    assert "%{customdata[0]} images" in matrix.hovertemplate and "%{y}" in matrix.hovertemplate
    assert "&#37;&#123;customdata[0]&#125; z" in matrix.x  # no placeholder from a class name


def test_colliding_labels_stay_apart_in_charts():
    classes = ["bean_rust", "bean-rust", "cats", "Cats"]
    fig = charts.class_balance(_manifest(classes), classes)
    assert list(fig.data[0].x) == [
        "Bean rust (bean_rust)",
        "Bean rust (bean-rust)",
        "Cats (cats)",
        "Cats (Cats)",
    ]
    matrix = charts.confusion_matrix(np.eye(4, dtype=int), classes)
    assert len(set(matrix.layout.xaxis.categoryarray)) == 4
    bars = charts.probability_bars({"cats": 0.6, "Cats": 0.4})
    assert sorted(bars.data[0].y) == ["Cats (Cats)", "Cats (cats)"]


def test_reliability_diagram_draws_before_and_after_or_only_before():
    rows = [
        {"confidence": 0.55, "accuracy": 0.5, "count": 4},
        {"confidence": 0.95, "accuracy": 0.8, "count": 9},
    ]
    both = charts.reliability_diagram(rows, rows)
    assert [t.name for t in both.data] == ["honest", "the model's own", "calibrated"]
    assert list(both.data[1].x) == [0.55, 0.95] and list(both.data[1].y) == [0.5, 0.8]
    assert [t.name for t in charts.reliability_diagram(rows, None).data] == ["honest", "the model's own"]
