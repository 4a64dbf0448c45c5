"""Image datasets: find the layout of a folder, check every file, split it, and feed it to training.

A scan reads every file once (in a thread pool: Pillow releases the GIL while decoding) and returns
a manifest with one row per file, bad ones included, so the UI can show exactly what was left out
and why. Nothing here deletes or changes user files. TensorFlow is imported only by make_dataset
and download_cats_vs_dogs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from lib import images, settings
from lib.errors import ImageError, UserError
from lib.text import readable_label

__all__ = [
    "CATS_DOGS_URL",
    "SPLITS",
    "Baseline",
    "Problem",
    "Scan",
    "check_folder",
    "class_counts",
    "download_cats_vs_dogs",
    "extract_zip",
    "files_and_labels",
    "health_report",
    "image_error_from",
    "majority_baseline",
    "make_dataset",
    "problems_table",
    "readable_label",
    "sample_dataset_dir",
    "scan",
    "scan_command",
    "scan_key",
]

SPLITS = ("train", "validation", "test")
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}
CARVE_TEST_FROM_VALIDATION = 0.2  # the classic recipe: one fifth of validation becomes test
CATS_DOGS_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
CATS_DOGS_FNAME = "cats_and_dogs_filtered.zip"

HIDDEN_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "__macosx", "icon\r", "@eadir"}
ARCHIVE_EXTENSIONS = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".tbz2", ".txz")

LAYOUTS = {
    "class_folders": "one folder per class; train, validation and test made by the app",
    "splits": "train, validation and test folders kept as given",
    "train_test": "train and test folders kept; validation carved from train",
    "train_validation": "train and validation folders kept; test carved from validation (one fifth)",
    "train_only": "a train folder only; validation and test carved from it",
}

# Problem kinds, in the order the report lists them, with what a file of that kind means.
PROBLEM_KINDS = (
    "single_class",
    "empty_class",
    "missing_split",
    "empty_file",
    "unreadable",
    "truncated",
    "too_small",
    "conflicting_labels",
    "leakage",
    "duplicate",
    "hidden",
    "outside_class",
    "ignored_folder",
)

MANIFEST_COLUMNS = [
    "path",
    "relpath",
    "split",
    "class",
    "width",
    "height",
    "format",
    "mode",
    "bytes",
    "sha1",
    "problems",
    "detail",
    "usable",
]


@dataclass(frozen=True)
class Problem:
    """One kind of problem found by a scan. `files` are paths relative to the scan root.

    For duplicate kinds, `groups` lists each set of identical files; the first of a group is the
    copy that is kept (except for conflicting labels, where none is).
    """

    kind: str
    message: str
    files: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()


@dataclass
class Scan:
    """The result of scanning a dataset folder (picklable, so Streamlit can cache it)."""

    root: Path
    layout: str
    classes: list[str]
    manifest: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    @property
    def layout_text(self) -> str:
        """The layout in plain words, with the fractions actually used."""
        vf, tf_ = self.val_fraction, self.test_fraction
        if self.layout == "class_folders" or self.layout == "train_only":
            where = "one folder per class" if self.layout == "class_folders" else "a train folder only"
            return f"{where}; split by the app {1 - vf - tf_:.0%} train, {vf:.0%} validation, {tf_:.0%} test"
        if self.layout == "train_test":
            return f"train and test folders kept; {vf:.0%} of train carved out for validation"
        return LAYOUTS.get(self.layout, self.layout)

    @property
    def usable(self) -> pd.DataFrame:
        return self.manifest[self.manifest["usable"]]


@dataclass(frozen=True)
class Baseline:
    """What always answering the most common training class would score."""

    label: str
    accuracy: float
    split: str


# ----------------------------------------------------------------------------------------------
# Folder checks and the cache key
# ----------------------------------------------------------------------------------------------


def check_folder(folder: str | Path) -> Path:
    """A readable folder as an absolute Path, or a UserError saying what is wrong with it."""
    text = str(folder).strip()
    if not text:
        raise UserError("No folder given: type the path of a folder of images.")
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"Folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"Not a folder: {path} (give the folder that holds the class folders).")
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as exc:
        raise UserError(f"The folder {path} cannot be read ({exc.strerror or exc}).") from exc
    return path.resolve()


def scan_key(root: str | Path) -> str:
    """A cheap fingerprint of everything under root: each path, size and mtime (stat only, no reads).

    A folder's own mtime doesn't change when something deeper changes, hence the full walk.
    """
    root = Path(root)
    h = hashlib.sha1()
    try:
        top = root.stat()
    except OSError:
        return f"{root}|missing"
    h.update(f"{top.st_mtime_ns}\n".encode())
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        h.update(f"D{rel}\n".encode("utf-8", "surrogateescape"))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
                sig = f"{st.st_size}\0{st.st_mtime_ns}"
            except OSError:
                sig = "?"
            h.update(f"F{rel}/{name}\0{sig}\n".encode("utf-8", "surrogateescape"))
            count += 1
    return f"{root.resolve()}|{count}|{h.hexdigest()}"


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in HIDDEN_NAMES


def _looks_like_image(name: str) -> bool:
    return Path(name).suffix.lower() in images.IMAGE_EXTENSIONS


@dataclass
class _Entry:
    path: Path
    relpath: str
    source_split: str  # the split folder it came from ("" for class_folders layouts)
    cls: str
    pre: str = ""  # a problem known before reading: hidden / outside_class


@dataclass
class _Walk:
    entries: list[_Entry] = field(default_factory=list)
    hidden_dirs: list[str] = field(default_factory=list)
    ignored_dirs: list[str] = field(default_factory=list)
    class_dirs: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # cls -> relpaths
    unreadable_dirs: list[str] = field(default_factory=list)


def _listdir(path: Path) -> tuple[list[str], list[str]]:
    """(sub-folders, files) sorted by name; symlinked folders count as folders."""
    dirs, files = [], []
    with os.scandir(path) as it:
        for entry in it:
            try:
                (dirs if entry.is_dir() else files).append(entry.name)
            except OSError:
                files.append(entry.name)
    return sorted(dirs), sorted(files)


def dataset_root(path: Path) -> Path:
    """Step into a lone wrapper folder (a zip's or download's top folder) to reach the dataset.

    Descend while the folder has exactly one visible sub-folder, no images of its own, and that
    sub-folder itself holds folders but no images (so a single class folder is never entered).
    """
    for _ in range(5):
        try:
            dirs, files = _listdir(path)
        except OSError:
            return path
        dirs = [d for d in dirs if not _is_hidden(d)]
        if len(dirs) != 1 or any(_looks_like_image(f) for f in files if not _is_hidden(f)):
            return path
        child = path / dirs[0]
        try:
            cdirs, cfiles = _listdir(child)
        except OSError:
            return path
        if not [d for d in cdirs if not _is_hidden(d)] or any(
            _looks_like_image(f) for f in cfiles if not _is_hidden(f)
        ):
            return path
        if dirs[0].lower() in SPLIT_FOLDERS:
            return path
        path = child
    return path


def _walk_class(walk: _Walk, root: Path, class_dir: Path, split: str, cls: str) -> None:
    rel_dir = class_dir.relative_to(root).as_posix()
    walk.class_dirs[cls].append(rel_dir)

    def onerror(exc: OSError) -> None:
        walk.unreadable_dirs.append(os.path.relpath(exc.filename or str(class_dir), root))

    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=onerror):
        for d in sorted(dirnames):
            if _is_hidden(d):
                walk.hidden_dirs.append(Path(os.path.relpath(os.path.join(dirpath, d), root)).as_posix())
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            walk.entries.append(_Entry(full, rel, split, cls, "hidden" if _is_hidden(name) else ""))


def _walk_level(walk: _Walk, root: Path, folder: Path, split: str) -> list[str]:
    """Files and hidden things directly in a non-class level (root or a split folder); returns sub-folders."""
    dirs, files = _listdir(folder)
    for name in files:
        full = folder / name
        rel = full.relative_to(root).as_posix()
        if _is_hidden(name):
            walk.entries.append(_Entry(full, rel, split, "", "hidden"))
        elif _looks_like_image(name):
            walk.entries.append(_Entry(full, rel, split, "", "outside_class"))
        # Other files next to the class folders (README, LICENSE, labels.csv) are documentation.
    visible = []
    for d in dirs:
        if _is_hidden(d):
            walk.hidden_dirs.append((folder / d).relative_to(root).as_posix())
        else:
            visible.append(d)
    return visible


def _walk(root: Path) -> tuple[str, _Walk]:
    walk = _Walk()
    top_dirs = _walk_level(walk, root, root, "")
    split_dirs: dict[str, list[str]] = defaultdict(list)
    for d in top_dirs:
        if d.lower() in SPLIT_FOLDERS:
            split_dirs[SPLIT_FOLDERS[d.lower()]].append(d)
    if not split_dirs:
        for d in top_dirs:
            _walk_class(walk, root, root / d, "", d)
        return "class_folders", walk
    if "train" not in split_dirs:
        found = ", ".join(sorted(d for names in split_dirs.values() for d in names))
        raise UserError(
            f"The folder {root} has {found} but no train folder: add train/<class>/ folders, "
            "or put one folder per class directly in it."
        )
    for d in top_dirs:
        if d.lower() not in SPLIT_FOLDERS:
            walk.ignored_dirs.append(d)
    for split in SPLITS:
        for d in split_dirs.get(split, []):
            for cls in _walk_level(walk, root, root / d, split):
                _walk_class(walk, root, root / d / cls, split, cls)
    present = set(split_dirs)
    if present == set(SPLITS):
        layout = "splits"
    elif present == {"train", "test"}:
        layout = "train_test"
    elif present == {"train", "validation"}:
        layout = "train_validation"
    else:
        layout = "train_only"
    return layout, walk


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def _unit(sha1: str) -> float:
    """A file's position in [0, 1), from its content hash: the same bytes always get the same number."""
    return int(sha1[:15], 16) / 16**15


def _natural_split(u: float, val_fraction: float, test_fraction: float) -> str:
    if u < val_fraction:
        return "validation"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def _assign_splits(df: pd.DataFrame, layout: str, val_fraction: float, test_fraction: float) -> pd.Series:
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


# ----------------------------------------------------------------------------------------------
# The scan
# ----------------------------------------------------------------------------------------------


def _read(entry: _Entry, max_pixels: int) -> dict[str, Any]:
    """Everything a manifest row needs from one file; never raises."""
    row: dict[str, Any] = {
        "path": str(entry.path.absolute()),
        "relpath": entry.relpath,
        "source_split": entry.source_split,
        "class": entry.cls,
        "width": 0,
        "height": 0,
        "format": "",
        "mode": "",
        "bytes": 0,
        "sha1": "",
        "kinds": [entry.pre] if entry.pre else [],
        "detail": "",
    }
    try:
        row["bytes"] = entry.path.stat().st_size
    except OSError as exc:
        row["kinds"].append("unreadable")
        row["detail"] = f"The file cannot be read ({exc.strerror or exc})."
        return row
    if entry.pre == "hidden":
        row["detail"] = "Hidden or system file."
        return row
    if row["bytes"] == 0:
        row["kinds"].append("empty_file")
        row["detail"] = "The file is empty (0 bytes)."
        row["sha1"] = hashlib.sha1(b"").hexdigest()
        return row
    try:
        with open(entry.path, "rb") as f:
            row["sha1"] = hashlib.file_digest(f, "sha1").hexdigest()
    except OSError as exc:
        row["kinds"].append("unreadable")
        row["detail"] = f"The file cannot be read ({exc.strerror or exc})."
        return row
    try:
        info = images.inspect(entry.path, max_pixels=max_pixels)
    except ImageError as exc:
        message = str(exc)
        row["kinds"].append("truncated" if "corrupt or truncated" in message else "unreadable")
        row["detail"] = message
        return row
    except Exception as exc:  # a decoder bug must not stop the scan of the other files
        row["kinds"].append("unreadable")
        row["detail"] = f"The file cannot be read ({type(exc).__name__}: {exc})."
        return row
    row.update(width=info.width, height=info.height, format=info.format, mode=info.mode)
    if min(info.width, info.height) < images.MIN_SIDE:
        row["kinds"].append("too_small")
        row["detail"] = f"{info.width}x{info.height} pixels: smaller than {images.MIN_SIDE} pixels on a side."
    return row


def _mark_duplicates(df: pd.DataFrame) -> dict[str, list[tuple[str, ...]]]:
    """Flag identical images; returns the groups per kind (kept copy first where one is kept).

    Same bytes in two classes: the label is ambiguous, so every copy is left out. In two split
    folders (leakage): the copy in the earliest split (train, validation, test) is kept. In one
    class and split: the shortest path ("x.jpg" over "x copy.jpg" or "x (1).jpg"), then alphabetical.
    """
    groups: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    candidates = df[(df["class"] != "") & df["kinds"].map(len).eq(0)]
    candidates = candidates[candidates["sha1"].duplicated(keep=False)]
    order = {"": 0, "train": 0, "validation": 1, "test": 2}
    for _, rows in candidates.groupby("sha1", sort=True):
        if len(rows) < 2:
            continue
        rows = rows.assign(_o=rows["source_split"].map(order), _n=rows["relpath"].str.len())
        rows = rows.sort_values(["_o", "_n", "relpath"])
        files = tuple(rows["relpath"])
        if rows["class"].nunique() > 1:
            kind, excluded = "conflicting_labels", rows.index
        elif rows["source_split"].nunique() > 1:
            kind, excluded = "leakage", rows.index[1:]
        else:
            kind, excluded = "duplicate", rows.index[1:]
        groups[kind].append(files)
        for i in excluded:
            df.at[i, "kinds"] = [*df.at[i, "kinds"], kind]
    return groups


def _n(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def _file_problem(kind: str, files: list[str]) -> Problem:
    n = len(files)
    messages = {
        "empty_file": f"{_n(n, 'file is', 'files are')} empty (0 bytes) and left out.",
        "unreadable": (
            f"{_n(n, 'file is', 'files are')} not a readable image (or not JPEG, PNG, BMP, GIF or WebP) "
            "and left out."
        ),
        "truncated": f"{_n(n, 'image is', 'images are')} corrupt or cut short and left out.",
        "too_small": (
            f"{_n(n, 'image is', 'images are')} smaller than {images.MIN_SIDE} pixels on a side, "
            "too small to train on, and left out."
        ),
        "hidden": f"{_n(n, 'hidden or system file was', 'hidden or system files were')} skipped "
        "(.DS_Store, __MACOSX, Thumbs.db, names starting with a dot).",
        "outside_class": (
            f"{_n(n, 'image is', 'images are')} not inside a class folder, so "
            f"{'its' if n == 1 else 'their'} class is unknown; left out."
        ),
    }
    return Problem(kind, messages[kind], tuple(files))


def _duplicate_problem(kind: str, groups: list[tuple[str, ...]]) -> Problem:
    n = len(groups)
    files = tuple(f for g in groups for f in g)
    if kind == "conflicting_labels":
        message = (
            f"{_n(n, 'image appears', 'images appear')} in more than one class with identical content: "
            "the label is ambiguous, so every copy is left out."
        )
    elif kind == "leakage":
        message = (
            f"{_n(n, 'image appears', 'images appear')} in more than one split (for example in both "
            "train and test), which makes scores look better than they are: only the copy in the "
            "earliest split (train, then validation, then test) is used."
        )
    else:
        message = (
            f"{_n(n, 'image has', 'images have')} exact copies in the same class: "
            "only the first copy is used."
        )
    return Problem(kind, message, files, tuple(groups))


def scan(
    root: str | Path,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> Scan:
    """Find the layout, read and check every file, flag problems, and assign splits.

    Raises UserError when the folder is missing or unreadable or has no usable image in a class folder.
    """
    start = time.perf_counter()
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            "The validation and test fractions must each be between 0 and 1 and leave some images for training."
        )
    root = dataset_root(check_folder(root))
    try:
        layout, walk = _walk(root)
    except OSError as exc:
        raise UserError(f"The folder {root} cannot be read ({exc.strerror or exc}).") from exc

    workers = workers or min(8, 2 * (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(lambda e: _read(e, max_pixels), walk.entries))
    df = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS[:-3], "kinds", "detail", "source_split"])
    if df.empty:
        df = pd.DataFrame(columns=[*MANIFEST_COLUMNS[:-3], "kinds", "detail", "source_split"])

    dup_groups = _mark_duplicates(df)
    df["usable"] = df["kinds"].map(len).eq(0) & (df["class"] != "")
    df["split"] = _assign_splits(df, layout, val_fraction, test_fraction) if len(df) else ""
    df["problems"] = df["kinds"].map("; ".join)
    usable = df[df["usable"]]
    classes = sorted(set(usable["class"]))

    problems: list[Problem] = []
    all_classes = sorted(walk.class_dirs)
    if not classes:
        checked = int((df["class"] != "").sum())
        if checked:
            kinds = sorted({k for ks in df["kinds"] for k in ks})
            raise UserError(
                f"No usable images in {root}: all {_n(checked, 'file', 'files')} in its class folders "
                f"have problems ({', '.join(kinds)})."
            )
        raise UserError(
            f"No images found in {root}: put them in one folder per class (e.g. {root.name}/cats/*.jpg)."
        )
    if len(classes) == 1:
        problems.append(
            Problem(
                "single_class",
                f"Only one class ({classes[0]}) was found: a classifier needs at least two class folders.",
                tuple(walk.class_dirs[classes[0]]),
            )
        )
    empty = [c for c in all_classes if c not in classes]
    if empty:
        problems.append(
            Problem(
                "empty_class",
                f"{_n(len(empty), 'class folder has', 'class folders have')} no usable images and "
                f"{'is' if len(empty) == 1 else 'are'} left out: {', '.join(empty)}.",
                tuple(d for c in empty for d in walk.class_dirs[c]),
            )
        )
    expected = list(SPLITS)
    if layout in ("class_folders", "train_only"):  # a zero fraction asks for no such split
        expected = [s for s in SPLITS if {"validation": val_fraction, "test": test_fraction}.get(s, 1) > 0]
    missing = [
        f"{c} ({s})"
        for c in classes
        for s in expected
        if not ((usable["class"] == c) & (usable["split"] == s)).any()
    ]
    if missing:
        problems.append(
            Problem(
                "missing_split",
                f"No images in some splits: {', '.join(missing)}. Scores for "
                f"{'this class' if len({m.split(' (')[0] for m in missing}) == 1 else 'these classes'} "
                "will be missing or unreliable: add images.",
                tuple(
                    d
                    for c in classes
                    if any(m.startswith(f"{c} (") for m in missing)
                    for d in walk.class_dirs[c]
                ),
            )
        )
    for kind in ("empty_file", "unreadable", "truncated", "too_small"):
        files = [r for r, ks in zip(df["relpath"], df["kinds"], strict=True) if kind in ks]
        if kind == "unreadable":
            files += [f"{d}/" for d in walk.unreadable_dirs]
        if files:
            problems.append(_file_problem(kind, files))
    for kind in ("conflicting_labels", "leakage", "duplicate"):
        if dup_groups.get(kind):
            problems.append(_duplicate_problem(kind, dup_groups[kind]))
    hidden = [r for r, ks in zip(df["relpath"], df["kinds"], strict=True) if "hidden" in ks]
    hidden += [f"{d}/" for d in walk.hidden_dirs]
    if hidden:
        problems.append(_file_problem("hidden", sorted(hidden)))
    outside = [r for r, ks in zip(df["relpath"], df["kinds"], strict=True) if "outside_class" in ks]
    if outside:
        problems.append(_file_problem("outside_class", outside))
    if walk.ignored_dirs:
        problems.append(
            Problem(
                "ignored_folder",
                f"{_n(len(walk.ignored_dirs), 'folder is', 'folders are')} not train, validation or test "
                f"and {'was' if len(walk.ignored_dirs) == 1 else 'were'} ignored: "
                f"{', '.join(walk.ignored_dirs)}.",
                tuple(f"{d}/" for d in walk.ignored_dirs),
            )
        )
    problems.sort(key=lambda p: PROBLEM_KINDS.index(p.kind))

    manifest = df[MANIFEST_COLUMNS].reset_index(drop=True)
    manifest = manifest.astype(
        {"width": "int64", "height": "int64", "bytes": "int64", "usable": "bool"}, copy=False
    )
    return Scan(
        root=root,
        layout=layout,
        classes=classes,
        manifest=manifest,
        problems=problems,
        seconds=time.perf_counter() - start,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )


# ----------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------


def class_counts(scan: Scan) -> pd.DataFrame:
    """Usable images per class (rows, in class-id order) and split (columns), with totals."""
    usable = scan.usable
    table = pd.crosstab(usable["class"], usable["split"]) if len(usable) else pd.DataFrame()
    table = table.reindex(index=scan.classes, columns=list(SPLITS), fill_value=0).fillna(0).astype("int64")
    table["total"] = table.sum(axis=1)
    table.index.name = "class"
    table.columns.name = None
    return table


def majority_baseline(scan: Scan) -> Baseline | None:
    """Accuracy of always answering the most common training class, on validation (else on all)."""
    usable = scan.usable
    if usable.empty:
        return None
    train = usable[usable["split"] == "train"]
    counts = (train if len(train) else usable)["class"].value_counts()
    # Ties break by class id order, so the answer is stable.
    top = max(counts.index, key=lambda c: (counts[c], -scan.classes.index(c)))
    evaluated = usable[usable["split"] == "validation"]
    split = "validation"
    if evaluated.empty:
        evaluated, split = usable, "all"
    return Baseline(label=str(top), accuracy=float((evaluated["class"] == top).mean()), split=split)


def files_and_labels(scan: Scan, split: str | None) -> tuple[list[str], np.ndarray]:
    """Absolute paths and int32 class ids of a split's usable images (all splits when split is None)."""
    rows = scan.usable if split is None else scan.usable[scan.usable["split"] == split]
    index = {c: i for i, c in enumerate(scan.classes)}
    return list(rows["path"]), np.asarray([index[c] for c in rows["class"]], dtype=np.int32)


def problems_table(scan: Scan) -> pd.DataFrame:
    """One row per problem kind: what it is, how many files, which ones (for a table in the UI)."""
    rows = [
        {
            "problem": p.kind.replace("_", " "),
            "files": len(p.files),
            "what it means": p.message,
            "which": ", ".join(" = ".join(g) for g in p.groups) if p.groups else ", ".join(p.files),
        }
        for p in scan.problems
    ]
    return pd.DataFrame(rows, columns=["problem", "files", "what it means", "which"])


def health_report(scan: Scan) -> dict[str, Any]:
    """Everything the health report shows, as plain JSON-able values."""
    counts = class_counts(scan)
    baseline = majority_baseline(scan)
    manifest = scan.manifest
    return {
        "root": str(scan.root),
        "layout": scan.layout,
        "layout_text": scan.layout_text,
        "classes": list(scan.classes),
        "labels": [readable_label(c) for c in scan.classes],
        "files": len(manifest),
        "usable": int(manifest["usable"].sum()),
        "counts": {
            split: {c: int(counts.at[c, split]) for c in scan.classes} for split in [*SPLITS, "total"]
        },
        "totals": {split: int(counts[split].sum()) for split in [*SPLITS, "total"]},
        "baseline": None
        if baseline is None
        else {"class": baseline.label, "accuracy": round(baseline.accuracy, 4), "split": baseline.split},
        "problems": [
            {
                "kind": p.kind,
                "message": p.message,
                "count": len(p.groups) if p.groups else len(p.files),
                "files": list(p.files),
                **({"groups": [list(g) for g in p.groups]} if p.groups else {}),
            }
            for p in scan.problems
        ],
        "seconds": round(scan.seconds, 3),
    }


def _format_report(report: dict[str, Any], max_files: int = 20) -> str:
    lines = [
        f"Dataset: {report['root']}",
        f"Layout: {report['layout_text']}",
        f"{report['usable']:,} usable images of {report['files']:,} files, "
        f"{len(report['classes'])} classes, scanned in {report['seconds']:.1f} s",
        "",
    ]
    cols = [*SPLITS, "total"]
    width = max([len("class"), *(len(c) for c in report["classes"])])
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{c:>10}" for c in cols))
    for cls in report["classes"]:
        lines.append(f"{cls:<{width}}  " + "  ".join(f"{report['counts'][c][cls]:>10,}" for c in cols))
    lines.append(f"{'all':<{width}}  " + "  ".join(f"{report['totals'][c]:>10,}" for c in cols))
    if report["baseline"]:
        b = report["baseline"]
        lines.append(
            f"\nMajority-class baseline: always answering '{b['class']}' scores {b['accuracy']:.1%} "
            f"on {b['split']}."
        )
    if not report["problems"]:
        lines.append("\nNo problems found.")
    for p in report["problems"]:
        lines.append(f"\nProblem [{p['kind']}]: {p['message']}")
        items = [" = ".join(g) for g in p["groups"]] if "groups" in p else p["files"]
        for item in items[:max_files]:
            lines.append(f"  {item}")
        if len(items) > max_files:
            lines.append(f"  ... and {len(items) - max_files:,} more (use --json to list all)")
    return "\n".join(lines)


def _fraction(value: float | None) -> float:
    return 0.15 if value is None else float(value)


def scan_command(args: Any) -> int:
    """`python -m lib scan DIR [--json]`: print the health report; exit 0 even when problems are found.

    The last stdout line is JSON (the whole report with --json, a short summary otherwise).
    """
    result = scan(
        args.data,
        val_fraction=_fraction(getattr(args, "val_fraction", None)),
        test_fraction=_fraction(getattr(args, "test_fraction", None)),
        max_pixels=settings.max_pixels(),
    )
    report = health_report(result)
    if getattr(args, "json", False):
        print(json.dumps(report))
        return 0
    print(_format_report(report))
    summary = {
        "root": report["root"],
        "usable": report["usable"],
        "files": report["files"],
        "classes": report["classes"],
        "totals": report["totals"],
        "problems": {p["kind"]: p["count"] for p in report["problems"]},
    }
    print(json.dumps(summary))
    return 0


# ----------------------------------------------------------------------------------------------
# Sources: the sample, zip uploads, the cats-vs-dogs download
# ----------------------------------------------------------------------------------------------


def sample_dataset_dir() -> Path:
    """The bundled sample (a downsized copy of the bean-leaf dataset, MIT licensed)."""
    return settings.sample_dir()


def _zip_member_name(info: zipfile.ZipInfo) -> str | None:
    """The member's safe relative name, None for entries to skip, or UserError for unsafe ones."""
    name = info.filename.replace("\\", "/")
    if "\x00" in name:
        raise UserError("The zip has a file name with a NUL character: it is not safe to unpack.")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UserError(f"The zip has an absolute path ({info.filename}): it is not safe to unpack.")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise UserError(
            f"The zip has a path that leaves its folder ({info.filename}): it is not safe to unpack."
        )
    if not parts or parts[0] == "__MACOSX":
        return None
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UserError(f"The zip contains a symbolic link ({info.filename}), which is not allowed.")
    if info.flag_bits & 0x1:
        raise UserError(
            f"The zip is password-protected ({info.filename}): zip the images without a password."
        )
    if not info.is_dir() and parts[-1].lower().endswith(ARCHIVE_EXTENSIONS):
        raise UserError(
            f"The zip contains another archive ({info.filename}): unpack it and zip the images directly."
        )
    return "/".join(parts)


def extract_zip(
    data: bytes | str | Path | BinaryIO,
    dest_dir: str | Path,
    *,
    max_files: int = 100_000,
    max_bytes: int = 5 * 1024**3,
) -> Path:
    """Safely unpack an uploaded zip into dest_dir and return the dataset root inside it.

    Rejects paths leaving the folder, absolute paths, symlinks, nested archives, encryption and
    more than max_files files or max_bytes unpacked bytes (counted while writing, so a lying header
    cannot bomb the disk). Skips __MACOSX. Unpacks into a temporary sibling folder renamed into
    place at the end, so an existing dest_dir is a complete earlier extraction and is reused.
    """
    dest_dir = Path(dest_dir)
    if dest_dir.is_dir() and any(dest_dir.iterdir()):
        return dataset_root(dest_dir)
    source: Any = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError("This is not a zip file (or it is damaged): upload a .zip of image folders.") from exc
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.partial-", dir=dest_dir.parent))
    try:
        with archive:
            members = [(info, _zip_member_name(info)) for info in archive.infolist()]
            members = [(i, n) for i, n in members if n is not None]
            files = [(i, n) for i, n in members if not i.is_dir()]
            if not files:
                raise UserError("The zip is empty: it should hold one folder of images per class.")
            if len(files) > max_files:
                raise UserError(f"The zip holds {len(files):,} files; the limit is {max_files:,}.")
            declared = sum(i.file_size for i, _ in files)
            if declared > max_bytes:
                raise UserError(
                    f"The zip unpacks to {declared / 1e6:,.0f} MB; the limit is {max_bytes / 1e6:,.0f} MB."
                )
            base = tmp.resolve()
            written = 0
            for info, name in members:
                target = (tmp / name).resolve()
                if base != target and base not in target.parents:
                    raise UserError(f"The zip has a path that leaves its folder ({info.filename}).")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UserError(f"The zip unpacks to more than {max_bytes / 1e6:,.0f} MB.")
                        out.write(chunk)
        try:
            if dest_dir.is_dir():
                dest_dir.rmdir()  # empty (checked above): os.replace needs the name free
            os.replace(tmp, dest_dir)
        except OSError:
            if not (dest_dir.is_dir() and any(dest_dir.iterdir())):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another session unpacked the same upload first
    except UserError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"The zip could not be unpacked ({exc}).") from exc
    return dataset_root(dest_dir)


def _find_train_validation(folder: Path) -> Path | None:
    """The folder (folder itself or up to two levels down) holding train/ and validation/."""
    candidates = [folder, *sorted(p for p in folder.glob("*") if p.is_dir())]
    candidates += sorted(p for p in folder.glob("*/*") if p.is_dir())
    for c in candidates:
        if (c / "train").is_dir() and (c / "validation").is_dir():
            return c
    return None


def download_cats_vs_dogs(cache_dir: str | Path, origin: str = CATS_DOGS_URL) -> Path:
    """Download (once) and unpack the classic cats-vs-dogs dataset; returns the folder with train/ and validation/.

    keras.utils.get_file with extract=True (Keras 3) saves the zip as <cache_dir>/datasets/<fname>
    and unpacks it into <cache_dir>/datasets/cats_and_dogs_filtered_extracted/, re-extracting on
    every call, so an existing extraction is looked for first.
    """
    cache_dir = Path(cache_dir).expanduser().absolute()
    datasets_dir = cache_dir / "datasets"
    extracted = datasets_dir / (CATS_DOGS_FNAME.split(".", 1)[0] + "_extracted")
    if extracted.is_dir() and (found := _find_train_validation(extracted)):
        return found
    try:
        datasets_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot write the download folder {datasets_dir} ({exc.strerror or exc}).") from exc
    import keras

    try:
        result = keras.utils.get_file(
            fname=CATS_DOGS_FNAME,
            origin=origin,
            extract=True,
            cache_dir=str(cache_dir),
            cache_subdir="datasets",
        )
    except Exception as exc:  # urllib errors arrive wrapped in a bare Exception by Keras
        raise UserError(
            f"Could not download the cats-vs-dogs dataset from {origin}: no network connection? ({exc})"
        ) from exc
    found = _find_train_validation(Path(result))
    if found is None:
        # A bad download (an HTML error page, say) would otherwise be reused forever by get_file.
        (datasets_dir / CATS_DOGS_FNAME).unlink(missing_ok=True)
        raise UserError(
            f"The file downloaded from {origin} is not the cats-vs-dogs zip (no train/ and validation/ folders)."
        )
    return found


# ----------------------------------------------------------------------------------------------
# tf.data
# ----------------------------------------------------------------------------------------------

_PIPELINE_ERROR = re.compile(r"ImageError: (Could not read image .*?)(?:\n|$)")


def image_error_from(exc: BaseException) -> ImageError | None:
    """The plain ImageError behind a TensorFlow pipeline error (from make_dataset), if there is one."""
    match = _PIPELINE_ERROR.search(str(exc))
    return ImageError(match.group(1)) if match else None


def make_dataset(
    paths: Sequence[str | Path],
    labels: Sequence[int] | np.ndarray,
    size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
):
    """A tf.data.Dataset of (float32 [B,S,S,3] pixels in 0-255, int32 [B] labels), decoded in parallel.

    Decoding goes through lib.images.decode (the same as prediction). A file that fails to decode
    stops iteration with a tf.errors.OpError naming the file; image_error_from() turns it back into
    a plain ImageError.
    """
    import tensorflow as tf

    paths = [str(p) for p in paths]
    labels = np.asarray(labels, dtype=np.int32)
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")

    def load(path: bytes) -> np.ndarray:
        name = path.decode("utf-8", "surrogateescape")
        try:
            return images.decode(name, size)
        except Exception as exc:
            raise ImageError(f"Could not read image {name}: {exc}") from exc

    def to_pixels(path, label):
        pixels = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        pixels.set_shape((size, size, 3))
        return tf.cast(pixels, tf.float32), label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        ds = ds.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(to_pixels, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
