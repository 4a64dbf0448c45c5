"""The images a training run uses: a scan's usable files in a fixed order, with class ids and splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib import settings
from lib.data.scan import Scan
from lib.errors import UserError
from lib.vocab import SPLITS


@dataclass
class TrainingData:
    """The usable images of a scan in a fixed order, with class ids and split indices."""

    root: Path
    classes: list[str]
    paths: list[str]
    relpaths: list[str]
    sha1: list[str]
    labels: np.ndarray
    splits: np.ndarray  # "train" / "validation" / "test" per item
    scan_key: str = ""

    def index(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for rel, sha, split, label in zip(self.relpaths, self.sha1, self.splits, self.labels, strict=True):
            h.update(f"{rel}\0{sha}\0{split}\0{self.classes[label]}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:24]

    def counts(self) -> dict[str, int]:
        return {s: int((self.splits == s).sum()) for s in SPLITS}


def all_items(scan: Scan) -> TrainingData:
    """Every usable image of a scan in the training order, without training's checks (the Data
    doctor looks at datasets training would refuse, a single class say)."""
    usable = scan.usable.sort_values("relpath", kind="stable")
    classes = list(scan.classes)
    index = {c: i for i, c in enumerate(classes)}
    return TrainingData(
        root=Path(scan.root),
        classes=classes,
        paths=[str(p) for p in usable["path"]],
        relpaths=[str(p) for p in usable["relpath"]],
        sha1=[str(s) for s in usable["sha1"]],
        labels=np.asarray([index[c] for c in usable["class"]], dtype=np.int32),
        splits=np.asarray(usable["split"], dtype=object).astype(str),
    )


def training_data(scan: Scan) -> TrainingData:
    classes = list(scan.classes)
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise UserError(f"Training needs at least 2 classes with usable images; this dataset has {found}.")
    data = all_items(scan)
    train_classes = set(data.labels[data.index("train")].tolist())
    if len(train_classes) < 2:
        raise UserError("Training needs training images of at least 2 classes.")
    if len(data.index("validation")) == 0:
        raise UserError("The dataset has no validation images: add more images per class (at least 2 each).")
    return data


def check_trainable(scan: Scan) -> None:
    """UserError, in plain words, when a dataset can't be trained on here: fewer than two classes,
    or more images than this server allows."""
    if len(scan.classes) < 2:
        raise UserError(
            "Training needs at least two classes (two sub-folders with images). Add another class on the Dataset page."
        )
    n = len(scan.usable)
    if n > settings.max_train_images():
        raise UserError(
            f"This dataset has {n:,} images; training here is limited to {settings.max_train_images():,}. "
            "Use a smaller dataset (or run the app on your own computer)."
        )
