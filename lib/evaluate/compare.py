"""Comparing runs: their metrics side by side and the images whose verdicts differ."""

from __future__ import annotations

import pandas as pd

from lib.evaluate.metrics import compute_metrics


def compare_runs(dfs: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics side by side (one row per run) and the images (common to all runs) whose verdict differs.

    The second frame has path, actual, then predicted_<run>, confidence_<run>, correct_<run> per run.
    """
    rows = []
    for run_id, df in dfs.items():
        classes = sorted(set(df["actual"]) | set(df["predicted"]))
        prob_classes = [c[len("prob_") :] for c in df.columns if c.startswith("prob_")]
        if set(classes) <= set(prob_classes):
            classes = prob_classes
        m = compute_metrics(df["actual"].tolist(), df["predicted"].tolist(), classes)
        rows.append(
            {
                "run": run_id,
                "n_images": m["n_images"],
                "accuracy": m["accuracy"],
                "macro_precision": m["macro_avg"]["precision"],
                "macro_recall": m["macro_avg"]["recall"],
                "macro_f1": m["macro_avg"]["f1"],
                "weighted_f1": m["weighted_avg"]["f1"],
                "incorrect": m["incorrect"],
            }
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "run",
            "n_images",
            "accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "weighted_f1",
            "incorrect",
        ],
    )

    merged: pd.DataFrame | None = None
    for run_id, df in dfs.items():
        part = df[["path", "actual", "predicted", "confidence", "correct"]].drop_duplicates("path")
        part = part.rename(
            columns={
                "predicted": f"predicted_{run_id}",
                "confidence": f"confidence_{run_id}",
                "correct": f"correct_{run_id}",
            }
        )
        if merged is None:
            merged = part
        else:
            merged = merged.merge(part.drop(columns=["actual"]), on="path", how="inner")
    if merged is None or len(dfs) < 2:
        return table, pd.DataFrame(columns=["path", "actual"])
    pred_cols = [f"predicted_{r}" for r in dfs]
    differs = merged[pred_cols].astype(str).nunique(axis=1) > 1
    diff = merged[differs].reset_index(drop=True)
    order = ["path", "actual"]
    for r in dfs:
        order += [f"predicted_{r}", f"confidence_{r}", f"correct_{r}"]
    return table, diff[order]
