"""Metrics from arrays: confusion matrix, per-class precision/recall/F1, averages, top-k, the
majority-class baseline and the most-missed pairs.

Pure numpy/pandas on class-name arrays, so the Dataset page, the Evaluate page, the CLI and the
report compute every number the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lib.models import unknown


def confusion_matrix(actual: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Counts with rows = actual class, columns = predicted class, both in `classes` order."""
    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    cm = np.zeros((n, n), dtype=np.int64)
    a = np.asarray(actual, dtype=object)
    p = np.asarray(predicted, dtype=object)
    if a.shape != p.shape:
        raise ValueError("actual and predicted must have the same length")
    unknown = {str(x) for x in set(a.tolist()) | set(p.tolist()) if x not in index}
    if unknown:
        raise ValueError(f"labels not in classes: {sorted(unknown)}")
    ai = np.fromiter((index[x] for x in a), dtype=np.int64, count=len(a))
    pi = np.fromiter((index[x] for x in p), dtype=np.int64, count=len(p))
    np.add.at(cm, (ai, pi), 1)
    return cm


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the share of each actual class); empty rows stay 0."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def accuracy(actual: Sequence[str], predicted: Sequence[str]) -> float:
    a = np.asarray(actual, dtype=object)
    p = np.asarray(predicted, dtype=object)
    return float((a == p).mean()) if len(a) else 0.0


def per_class_metrics(cm: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (0 instead of NaN when undefined, like sklearn)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return pd.DataFrame(
        {
            "class": list(classes),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support.astype(np.int64),
            "predicted": predicted.astype(np.int64),
        }
    )


def average_metrics(per_class: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Macro and support-weighted averages of precision/recall/F1.

    Like sklearn's default labels, the macro average covers classes that occur in the split or in
    the predictions: a class absent from both (a folder holding a subset of classes) is skipped.
    """
    seen = per_class[(per_class["support"] > 0) | (per_class["predicted"] > 0)]
    total = float(per_class["support"].sum())
    out: dict[str, dict[str, float]] = {"macro": {}, "weighted": {}}
    for col in ("precision", "recall", "f1"):
        out["macro"][col] = float(seen[col].mean()) if len(seen) else 0.0
        out["weighted"][col] = (
            float((per_class[col] * per_class["support"]).sum() / total) if total > 0 else 0.0
        )
    return out


def top_k_accuracy(probs: np.ndarray, actual_index: Sequence[int], k: int) -> float:
    """Share of images whose actual class is among the k most probable."""
    probs = np.asarray(probs, dtype=np.float64)
    actual_index = np.asarray(actual_index, dtype=np.int64)
    if len(actual_index) == 0:
        return 0.0
    k = max(1, min(k, probs.shape[1]))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == actual_index[:, None]).any(axis=1).mean())


def majority_baseline(
    actual: Sequence[str], classes: Sequence[str] | None = None, *, reference: Sequence[str] | None = None
) -> dict[str, Any]:
    """What always answering one class would score on `actual`: the most common class of
    `reference` (e.g. the training labels) when given, else of `actual` itself; ties go to the
    first in class order."""
    pool = list(actual if reference is None else reference)
    counts = pd.Series(pool, dtype=object).value_counts()
    if counts.empty or len(actual) == 0:
        return {"class": None if counts.empty else str(counts.index[0]), "accuracy": 0.0}
    best = int(counts.max())
    tied = [c for c in counts.index if counts[c] == best]
    if classes is not None:
        order = {c: i for i, c in enumerate(classes)}
        tied.sort(key=lambda c: order.get(c, len(order)))
    guess = str(tied[0])
    hits = sum(1 for a in actual if a == guess)
    return {"class": guess, "accuracy": hits / float(len(actual))}


def most_missed(cm: np.ndarray, classes: Sequence[str], limit: int | None = 10) -> list[dict[str, Any]]:
    """Off-diagonal cells, most frequent first: [{"actual", "predicted", "count", "text"}]."""
    cm = np.asarray(cm)
    pairs = [
        (int(cm[i, j]), i, j)
        for i in range(cm.shape[0])
        for j in range(cm.shape[1])
        if i != j and cm[i, j] > 0
    ]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    if limit is not None:
        pairs = pairs[:limit]
    return [
        {
            "actual": classes[i],
            "predicted": classes[j],
            "count": count,
            "text": f"{classes[i]} predicted as {classes[j]}: {count}",
        }
        for count, i, j in pairs
    ]


def top_k_values(n_classes: int) -> list[int]:
    """Which top-k accuracies are worth showing: only beyond 3 classes (top-3, and top-5 beyond 5)."""
    if n_classes <= 3:
        return []
    return [k for k in (3, 5) if k < n_classes]


def compute_metrics(
    actual: Sequence[str],
    predicted: Sequence[str],
    classes: Sequence[str],
    probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every number of the classic report, as a JSON-ready dict (page, CLI and report share it)."""
    classes = [str(c) for c in classes]
    cm = confusion_matrix(actual, predicted, classes)
    table = per_class_metrics(cm, classes)
    n = int(cm.sum())
    correct = int(np.trace(cm))
    metrics: dict[str, Any] = {
        "classes": classes,
        "n_images": n,
        "correct": correct,
        "incorrect": n - correct,
        "accuracy": correct / n if n else 0.0,
        "majority_baseline": majority_baseline(actual, classes),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": normalize_rows(cm).round(6).tolist(),
        "per_class": {
            row["class"]: {
                "precision": float(row["precision"]),
                "recall": float(row["recall"]),
                "f1": float(row["f1"]),
                "support": int(row["support"]),
            }
            for row in table.to_dict("records")
        },
        "most_missed": most_missed(cm, classes),
        "top_k_accuracy": {},
    }
    averages = average_metrics(table)
    metrics["macro_avg"] = averages["macro"]
    metrics["weighted_avg"] = averages["weighted"]
    if probs is not None and n:
        index = {c: i for i, c in enumerate(classes)}
        actual_index = [index[a] for a in actual]
        metrics["top_k_accuracy"] = {
            str(k): top_k_accuracy(probs, actual_index, k) for k in top_k_values(len(classes))
        }
    return metrics


def metrics_from_predictions(df: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """compute_metrics on a predictions DataFrame (as returned by predict_split, or a filtered part)."""
    prob_cols = [prob_column(c) for c in classes]
    probs = df[prob_cols].to_numpy(dtype=np.float64) if all(c in df for c in prob_cols) else None
    return compute_metrics(df["actual"].tolist(), df["predicted"].tolist(), classes, probs)


def prob_column(class_name: str) -> str:
    return f"prob_{class_name}"


def per_class_table(metrics: dict[str, Any], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """compute_metrics' per-class numbers as a table (class, label, precision, recall, f1, support)."""
    classes = metrics["classes"]
    rows = [{"class": c, **metrics["per_class"][c]} for c in classes]
    table = pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])
    table.insert(1, "label", list(labels) if labels is not None else classes)
    return table


def calibration(df: pd.DataFrame, classes: Sequence[str], temperature: float) -> dict[str, Any] | None:
    """Expected calibration error and reliability bins of stored predictions before and after the
    run's temperature (None without predictions)."""
    if df.empty:
        return None
    probs = df[[prob_column(c) for c in classes]].to_numpy(dtype=np.float64)
    index = {str(c): i for i, c in enumerate(classes)}
    labels = np.asarray([index.get(str(a), -1) for a in df["actual"]])
    keep = labels >= 0
    probs, labels = probs[keep], labels[keep]
    if len(labels) == 0:
        return None
    after = unknown.calibrate(probs, temperature)
    before_r, after_r = unknown.reliability(probs, labels), unknown.reliability(after, labels)
    return {
        "temperature": round(float(temperature), 4),
        "images": int(len(labels)),
        "ece_before": round(before_r["ece"], 4),
        "ece_after": round(after_r["ece"], 4),
        "nll_before": round(unknown.nll(probs, labels), 4),
        "nll_after": round(unknown.nll(after, labels), 4),
        "bins_before": before_r["bins"],
        "bins_after": after_r["bins"],
    }


def calibration_note(cal: dict[str, Any], detector_info: dict[str, Any] | None = None) -> str:
    """What the calibration numbers mean, in words (with the noise of a small split)."""
    n = int(cal["images"])
    text = (
        "Calibration error: the average gap between how sure the model says it is and how often it is "
        f"right, over these {n:,} images (0% is perfectly honest)."
    )
    if n < 500:
        # ECE of a perfectly calibrated model on n images is not 0: about sqrt(2 / (pi * n)) * 0.5.
        floor = 0.4 / np.sqrt(n)
        text += f" With {n:,} images, about {floor:.0%} of it is chance."
    note = (detector_info or {}).get("temperature_note")
    if note:
        text += f" The temperature was kept at 1: {note.split(':')[0]}."
    return text


def temperature_help(detector_info: dict[str, Any] | None) -> str:
    """Where the run's temperature came from, in words."""
    info = detector_info or {}
    source, n = info.get("temperature_source", ""), info.get("temperature_images")
    if source.startswith("out-of-fold"):
        return (
            f"Fitted on {n:,} held-out predictions: five copies of the classifier, each trained without "
            "one fifth of the training and validation images and judging that fifth, plus the "
            "validation images. 1 = unchanged."
        )
    if source == "validation":
        return f"Fitted on the {n:,} validation images. 1 = unchanged."
    return "Fitted on the validation images; 1 = unchanged"
