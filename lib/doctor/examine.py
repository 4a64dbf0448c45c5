"""examine(): the data doctor's findings for a dataset folder, as plain records (JSON-able), with
the paths as the scan reports them (relative to the dataset root) and each finding's decision.

The findings are about the folder as it is on disk (the raw scan), so a relabelled image still
shows what it was given and what was decided; the curated dataset is what training uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lib import settings
from lib.data import curation
from lib.data.scan import Scan, load_scan
from lib.doctor import features, findings
from lib.errors import UserError
from lib.text import readable_labels

Progress = Callable[[int, int], None]


@dataclass
class Report:
    """What the doctor found (see to_json for the fields)."""

    root: Path
    classes: list[str]
    images: int
    label_issues: list[dict[str, Any]]
    near_duplicates: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    skipped_classes: list[str] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # how the features were made (for the map)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "classes": list(self.classes),
            "images": self.images,
            "label_issues": self.label_issues,
            "near_duplicates": self.near_duplicates,
            "outliers": self.outliers,
            "skipped_classes": self.skipped_classes,
            "notes": self.notes,
            "features": self.features,
            "seconds": round(self.seconds, 2),
        }


def pair_kind(label_a: int, label_b: int, split_a: str, split_b: str) -> str:
    """conflicting-labels (two classes), across-splits (a leak between splits) or same-class."""
    if label_a != label_b:
        return "conflicting-labels"
    if split_a != split_b:
        return "across-splits"
    return "same-class"


def examine(
    data_dir: str | Path,
    *,
    base: str = "MobileNetV2",
    weights: str = "auto",
    image_size: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    scan: Scan | None = None,
) -> Report:
    """Scan (cached), features (cached), then suspect labels, near-duplicates and outliers."""
    start = time.perf_counter()
    scan = scan or load_scan(data_dir, curated=False)
    if len(scan.usable) > settings.max_train_images():
        raise UserError(
            f"This dataset has {len(scan.usable):,} images; the Data doctor here looks at most "
            f"{settings.max_train_images():,} (as many as a training run may use)."
        )
    feats = features.compute(
        scan, base=base, weights=weights, image_size=image_size, progress=progress, should_stop=should_stop
    )
    decided = curation.decisions(scan.root)

    def decision(path: str) -> dict[str, str]:
        d = decided.get(path)
        if d is None:
            return {}
        return {"decision": d.action, **({"decided_label": d.label} if d.action == "relabel" else {})}

    notes: list[str] = []
    label_rows, skipped = _suspect_labels(feats, decision, notes)
    near = findings.neighbours(
        findings.similarity_space(feats.array),
        pairs_in=findings.normed(feats.array, center=True),
        layouts=findings.layout(feats.thumbs),
    )
    return Report(
        root=Path(scan.root),
        classes=list(feats.data.classes),
        images=len(feats.data.relpaths),
        label_issues=label_rows,
        near_duplicates=_near_duplicates(feats, near, decision, notes),
        outliers=_outliers(feats, near, decision),
        notes=notes,
        skipped_classes=skipped,
        features={
            "base": feats.base,
            "weights": feats.weights if not Path(feats.weights).is_absolute() else "file",
            "image_size": feats.image_size,
            "cache": "hit" if feats.hit else "computed",
            "seconds": round(feats.seconds, 2),
            "note": feats.note,
        },
        seconds=time.perf_counter() - start,
        options={"base": base, "weights": weights, "image_size": image_size},
    )


Decision = Callable[[str], dict[str, str]]


def _suspect_labels(
    feats: features.DoctorFeatures, decision: Decision, notes: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Ranked suspect labels (most suspect first) and the classes too small to cross-validate;
    what could not be checked is added to `notes`."""
    data = feats.data
    classes, labels, rel = data.classes, data.labels, data.relpaths
    issues = findings.label_issues(feats.array, labels, len(classes))
    skipped = [classes[c] for c in issues.skipped]
    shown = readable_labels(classes)
    if len(classes) < 2:
        notes.append("Suspect labels need at least two classes: only duplicates and outliers are checked.")
    elif skipped:
        counts = np.bincount(labels, minlength=len(classes))
        notes.append(
            "Too few images to check labels by "
            f"{findings.FOLDS}-fold cross-validation (at least {findings.FOLDS} needed), so these "
            "classes get no suspect labels (duplicates and outliers are still checked): "
            + ", ".join(f"{shown[c]} ({counts[classes.index(c)]})" for c in skipped)
            + "."
        )
        if len(classes) - len(skipped) < 2:
            notes.append("Fewer than two classes are big enough: no suspect labels.")
    rows = [
        {
            "path": rel[i],
            "given": classes[labels[i]],
            "suggested": classes[s],
            "score": round(float(score), 4),
            "split": str(data.splits[i]),
            **decision(rel[i]),
        }
        for i, s, score in zip(issues.ranked, issues.suggested, issues.scores, strict=True)
    ]
    return rows, skipped


def _near_duplicates(
    feats: features.DoctorFeatures, near: findings.Neighbours, decision: Decision, notes: list[str]
) -> list[dict[str, Any]]:
    """Candidate pairs whose thumbnails match, best match first, with their kind."""
    data = feats.data
    classes, labels, rel = data.classes, data.labels, data.relpaths
    matched = findings.match(feats.thumbs, near.a, near.b)
    keep = matched >= findings.MATCH
    order = np.argsort(-matched[keep], kind="stable")
    pair_a, pair_b = near.a[keep][order], near.b[keep][order]
    pair_s, pair_m = near.similarity[keep][order], matched[keep][order]
    if near.capped:
        notes.append(
            f"Some images look like more than {findings.MAX_PAIRS_PER_IMAGE} others: only the "
            f"{findings.MAX_PAIRS_PER_IMAGE} most similar were checked for copies."
        )
    return [
        {
            "a": rel[a],
            "b": rel[b],
            "similarity": round(float(s), 4),
            "match": round(float(m), 4),
            "kind": pair_kind(int(labels[a]), int(labels[b]), str(data.splits[a]), str(data.splits[b])),
            "class_a": classes[labels[a]],
            "class_b": classes[labels[b]],
            "split_a": str(data.splits[a]),
            "split_b": str(data.splits[b]),
            **{f"{k}_a": v for k, v in decision(rel[a]).items()},
            **{f"{k}_b": v for k, v in decision(rel[b]).items()},
        }
        for a, b, s, m in zip(pair_a, pair_b, pair_s, pair_m, strict=True)
    ]


def _outliers(
    feats: features.DoctorFeatures, near: findings.Neighbours, decision: Decision
) -> list[dict[str, Any]]:
    """Images far from every class (robust z-score of a local outlier factor), most unusual first."""
    data = feats.data
    score, zscore = findings.outlier_scores(near.knn, near.nearest)
    flagged = np.flatnonzero(zscore > findings.OUTLIER_Z)
    flagged = flagged[np.argsort(-zscore[flagged], kind="stable")]
    return [
        {
            "path": data.relpaths[i],
            "score": round(float(score[i]), 4),
            "z": round(float(zscore[i]), 2),
            "class": data.classes[data.labels[i]],
            "split": str(data.splits[i]),
            **decision(data.relpaths[i]),
        }
        for i in flagged
    ]


def embedding_map(
    report: Report, *, limit: int = findings.MAP_POINTS, scan: Scan | None = None
) -> list[dict[str, Any]]:
    """Points of the 2-D map: path, class, split, x, y and what was found about it ("suspect",
    "duplicate", "outlier" or ""). All images up to `limit`, else every flagged one and a sample."""
    scan = scan or load_scan(report.root, curated=False)
    feats = features.compute(scan, **report.options)
    data = feats.data
    index = {p: i for i, p in enumerate(data.relpaths)}
    flags: dict[int, str] = {}
    for row in report.outliers:
        flags[index[row["path"]]] = "outlier"
    for row in report.near_duplicates:
        flags.setdefault(index[row["a"]], "duplicate")
        flags.setdefault(index[row["b"]], "duplicate")
    for row in report.label_issues:
        flags[index[row["path"]]] = "suspect"
    picked = findings.map_sample(len(data.relpaths), np.asarray(sorted(flags), dtype=np.int64), limit)
    xy = findings.embed_2d(findings.normed(feats.array[picked], center=True))
    return [
        {
            "path": data.relpaths[i],
            "file": data.paths[i],
            "class": data.classes[data.labels[i]],
            "split": str(data.splits[i]),
            "x": float(x),
            "y": float(y),
            "flag": flags.get(int(i), ""),
        }
        for i, (x, y) in zip(picked, xy, strict=True)
    ]
