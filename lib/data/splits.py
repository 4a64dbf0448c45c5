"""Splits: train, validation and test assigned from each file's content hash.

Each file's split depends on its own bytes only, so adding or removing a file never moves another
one and identical files always share a split (see assign_splits).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

CARVE_TEST_FROM_VALIDATION = 0.2  # the classic recipe: one fifth of validation becomes test


def _unit(sha1: str) -> float:
    """A file's position in [0, 1), from its content hash: the same bytes always get the same number."""
    return int(sha1[:15], 16) / 16**15


def _natural_split(u: float, val_fraction: float, test_fraction: float) -> str:
    if u < val_fraction:
        return "validation"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def assign_splits(df: pd.DataFrame, layout: str, val_fraction: float, test_fraction: float) -> pd.Series:
    """The split of every row with a class: kept from the folders, or carved from content hashes.

    Why thresholds on a hash, not ranks or quantiles: each file's split depends on its own bytes
    only, so adding or removing a file never moves another one, and identical files always share a
    split. Ranks would be exactly proportional but shift a boundary file on every addition.
    Thresholds alone can leave a small class without a validation image, so one minimal correction
    is applied per class (over its usable, distinct images): if none falls in validation, the one
    with the lowest hash goes there; if none is left for training, the one with the highest hash
    stays in train. Adding a file can then move at most that one file, and only in classes too small
    to have a validation image by chance (a 20-image class needs it ~4% of the time at 15%).
    """
    split = df["source_split"].copy()
    u = df["sha1"].map(lambda s: _unit(s) if s else np.nan)
    has_class = (df["class"] != "") & df["sha1"].ne("")

    def carve(mask: pd.Series, fn) -> None:
        for i in df.index[mask]:
            split.at[i] = fn(u.at[i])

    if layout in ("class_folders", "train_only"):
        source = "" if layout == "class_folders" else "train"
        pool = has_class & (df["source_split"] == source)
        carve(pool, lambda x: _natural_split(x, val_fraction, test_fraction))
        _guarantee(df, split, u, pool, val_fraction > 0)
    elif layout == "train_test":
        pool = has_class & (df["source_split"] == "train")
        carve(pool, lambda x: "validation" if x < val_fraction else "train")
        _guarantee(df, split, u, pool, val_fraction > 0)
    elif layout == "train_validation":
        pool = has_class & (df["source_split"] == "validation")
        carve(pool, lambda x: "test" if x < CARVE_TEST_FROM_VALIDATION else "validation")
        # Never carve a class's last validation image into test: keep the highest hash.
        for _, rows in df[pool & df["usable"]].groupby("class"):
            if len(rows) and not (split[rows.index] == "validation").any():
                keep = u[rows.index].idxmax()
                _move_same_content(df, split, pool, keep, "validation")
    return split


def _move_same_content(df: pd.DataFrame, split: pd.Series, pool: pd.Series, row: Any, to: str) -> None:
    """Move a row and its identical copies in the same class and pool, so copies never split apart."""
    same = pool & (df["sha1"] == df.at[row, "sha1"]) & (df["class"] == df.at[row, "class"])
    split[same] = to


def _guarantee(df: pd.DataFrame, split: pd.Series, u: pd.Series, pool: pd.Series, want_val: bool) -> None:
    """Per class: >= 1 validation image when it has >= 2 usable ones, and >= 1 training image."""
    for _, rows in df[pool & df["usable"]].groupby("class"):
        idx = rows.index
        if want_val and len(idx) >= 2 and not (split[idx] == "validation").any():
            _move_same_content(df, split, pool, u[idx].idxmin(), "validation")
        if not (split[idx] == "train").any():
            # The highest hash that isn't the class's only validation image goes to train.
            for i in u[idx].sort_values(ascending=False).index:
                if len(idx) == 1 or split[i] != "validation" or (split[idx] == "validation").sum() > 1:
                    _move_same_content(df, split, pool, i, "train")
                    break
