"""lib.evaluate.compare: runs side by side and the images whose verdicts differ."""

from __future__ import annotations

import pandas as pd
import pytest

from lib.evaluate.compare import compare_runs


def test_compare_runs_lists_images_whose_verdict_differs():
    base = {"path": ["p1", "p2", "p3"], "actual": ["a", "a", "b"]}
    r1 = pd.DataFrame({**base, "predicted": ["a", "b", "b"], "confidence": [0.9, 0.6, 0.8]})
    r2 = pd.DataFrame({**base, "predicted": ["a", "a", "a"], "confidence": [0.9, 0.7, 0.5]})
    for df in (r1, r2):
        df["correct"] = df["actual"] == df["predicted"]
    table, diff = compare_runs({"run1": r1, "run2": r2})
    assert table.set_index("run")["accuracy"].to_dict() == pytest.approx({"run1": 2 / 3, "run2": 2 / 3})
    assert diff["path"].tolist() == ["p2", "p3"]
    assert diff["predicted_run1"].tolist() == ["b", "b"] and diff["correct_run2"].tolist() == [True, False]
