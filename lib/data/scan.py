"""The scan: read and check every file of a dataset once, flag problems, assign splits.

A scan reads every file (in a thread pool: Pillow releases the GIL while decoding) and returns a
manifest with one row per file, bad ones included, so the UI can show exactly what was left out
and why. Nothing here deletes or changes user files. `load_scan` keeps scans on disk, keyed by a
stat walk of the folder, so a second look at the same folder costs milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lib import files, settings
from lib.data import curation, images
from lib.data.layouts import LAYOUTS, Entry, check_folder, dataset_root, scan_key, walk
from lib.data.splits import assign_splits
from lib.errors import ImageError, UserError
from lib.evaluate.metrics import majority_baseline as _majority
from lib.text import readable_labels
from lib.vocab import SPLITS

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
    "excluded",
    "relabeled",
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
    curation: str = ""  # fingerprint of the Data doctor decisions applied ("" when none)

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


def _read(entry: Entry, max_pixels: int) -> dict[str, Any]:
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
    curated: bool = True,
) -> Scan:
    """Find the layout, read and check every file, flag problems, and assign splits; then apply
    the Data doctor's decisions about this folder (lib.data.curation) unless curated=False.

    Raises UserError when the folder is missing or unreadable or has no usable image in a class folder.
    """
    start = time.perf_counter()
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            "The validation and test fractions must each be between 0 and 1 and leave some images for training."
        )
    root = dataset_root(check_folder(root))
    try:
        layout, found = walk(root)
    except OSError as exc:
        raise UserError(f"The folder {root} cannot be read ({exc.strerror or exc}).") from exc

    df = _read_all(found.entries, max_pixels, workers)
    dup_groups = _mark_duplicates(df)
    df["usable"] = df["kinds"].map(len).eq(0) & (df["class"] != "")
    df["split"] = assign_splits(df, layout, val_fraction, test_fraction) if len(df) else ""
    df["problems"] = df["kinds"].map("; ".join)
    classes = sorted(set(df.loc[df["usable"], "class"]))
    if not classes:
        raise UserError(_nothing_usable(root, df))

    problems = [
        *_class_problems(classes, found),
        *_split_problems(df, classes, found, layout, val_fraction, test_fraction),
        *_file_problems(df, found, dup_groups),
    ]
    problems.sort(key=lambda p: PROBLEM_KINDS.index(p.kind))
    manifest = df[MANIFEST_COLUMNS].reset_index(drop=True)
    manifest = manifest.astype(
        {"width": "int64", "height": "int64", "bytes": "int64", "usable": "bool"}, copy=False
    )
    raw = Scan(
        root=root,
        layout=layout,
        classes=classes,
        manifest=manifest,
        problems=problems,
        seconds=time.perf_counter() - start,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    return curate(raw) if curated else curate(raw, {})


def curate(raw: Scan, decisions: dict[str, curation.Decision] | None = None) -> Scan:
    """The scan with the person's decisions applied (default: those stored for its folder):
    excluded images left out, relabelled ones in their new class. The manifest gains
    `given_class` (the folder's class) and `decision`. Files are never touched."""
    found = curation.decisions(raw.root) if decisions is None else decisions
    manifest = curation.apply(raw.manifest, raw.classes, found)
    if not found:
        return dataclasses.replace(raw, manifest=manifest, curation="")
    classes = sorted(set(manifest.loc[manifest["usable"], "class"]))
    if not classes:  # every image excluded: the decisions can't leave a dataset with nothing to train on
        return dataclasses.replace(raw, manifest=curation.apply(raw.manifest, raw.classes, {}), curation="")
    problems = [p for p in raw.problems if p.kind not in ("excluded", "relabeled")]
    excluded = tuple(manifest.loc[manifest["decision"] == "exclude", "relpath"])
    relabeled = tuple(manifest.loc[manifest["decision"] == "relabel", "relpath"])
    if excluded:
        problems.append(
            Problem(
                "excluded",
                f"{_n(len(excluded), 'image was', 'images were')} excluded on the Data doctor page and "
                "left out (the files themselves are untouched; undo there).",
                excluded,
            )
        )
    if relabeled:
        problems.append(
            Problem(
                "relabeled",
                f"{_n(len(relabeled), 'image was', 'images were')} relabelled on the Data doctor page: "
                "training and evaluation use the new class (the files stay where they are).",
                relabeled,
            )
        )
    problems.sort(key=lambda p: PROBLEM_KINDS.index(p.kind))
    return dataclasses.replace(
        raw, classes=classes, manifest=manifest, problems=problems, curation=curation.digest(found)
    )


_WORK_COLUMNS = [*MANIFEST_COLUMNS[:-3], "kinds", "detail", "source_split"]


def _read_all(entries: list[Any], max_pixels: int, workers: int | None) -> pd.DataFrame:
    """One row per file, read in a thread pool (decoding releases the GIL)."""
    workers = workers or min(8, 2 * (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(lambda e: _read(e, max_pixels), entries))
    return pd.DataFrame(rows, columns=_WORK_COLUMNS)


def _nothing_usable(root: Path, df: pd.DataFrame) -> str:
    checked = int((df["class"] != "").sum())
    if checked:
        kinds = sorted({k for ks in df["kinds"] for k in ks})
        return (
            f"No usable images in {root}: all {_n(checked, 'file', 'files')} in its class folders "
            f"have problems ({', '.join(kinds)})."
        )
    return f"No images found in {root}: put them in one folder per class (e.g. {root.name}/cats/*.jpg)."


def _class_problems(classes: list[str], found: Any) -> list[Problem]:
    problems = []
    if len(classes) == 1:
        problems.append(
            Problem(
                "single_class",
                f"Only one class ({classes[0]}) was found: a classifier needs at least two class folders.",
                tuple(found.class_dirs[classes[0]]),
            )
        )
    empty = [c for c in sorted(found.class_dirs) if c not in classes]
    if empty:
        problems.append(
            Problem(
                "empty_class",
                f"{_n(len(empty), 'class folder has', 'class folders have')} no usable images and "
                f"{'is' if len(empty) == 1 else 'are'} left out: {', '.join(empty)}.",
                tuple(d for c in empty for d in found.class_dirs[c]),
            )
        )
    return problems


def _split_problems(
    df: pd.DataFrame, classes: list[str], found: Any, layout: str, val_fraction: float, test_fraction: float
) -> list[Problem]:
    usable = df[df["usable"]]
    expected = list(SPLITS)
    if layout in ("class_folders", "train_only"):  # a zero fraction asks for no such split
        expected = [s for s in SPLITS if {"validation": val_fraction, "test": test_fraction}.get(s, 1) > 0]
    present = set(zip(usable["class"], usable["split"], strict=True))
    missing = [f"{c} ({s})" for c in classes for s in expected if (c, s) not in present]
    if not missing:
        return []
    short = {m.split(" (")[0] for m in missing}
    return [
        Problem(
            "missing_split",
            f"No images in some splits: {', '.join(missing)}. Scores for "
            f"{'this class' if len(short) == 1 else 'these classes'} will be missing or unreliable: add images.",
            tuple(d for c in classes if c in short for d in found.class_dirs[c]),
        )
    ]


def _file_problems(
    df: pd.DataFrame, found: Any, dup_groups: dict[str, list[tuple[str, ...]]]
) -> list[Problem]:
    def with_kind(kind: str) -> list[str]:
        return [r for r, ks in zip(df["relpath"], df["kinds"], strict=True) if kind in ks]

    problems = []
    for kind in ("empty_file", "unreadable", "truncated", "too_small"):
        listed = with_kind(kind)
        if kind == "unreadable":
            listed += [f"{d}/" for d in found.unreadable_dirs]
        if listed:
            problems.append(_file_problem(kind, listed))
    for kind in ("conflicting_labels", "leakage", "duplicate"):
        if dup_groups.get(kind):
            problems.append(_duplicate_problem(kind, dup_groups[kind]))
    hidden = with_kind("hidden") + [f"{d}/" for d in found.hidden_dirs]
    if hidden:
        problems.append(_file_problem("hidden", sorted(hidden)))
    outside = with_kind("outside_class")
    if outside:
        problems.append(_file_problem("outside_class", outside))
    if found.ignored_dirs:
        n = len(found.ignored_dirs)
        problems.append(
            Problem(
                "ignored_folder",
                f"{_n(n, 'folder is', 'folders are')} not train, validation or test and "
                f"{'was' if n == 1 else 'were'} ignored: {', '.join(found.ignored_dirs)}.",
                tuple(f"{d}/" for d in found.ignored_dirs),
            )
        )
    return problems


def load_scan(
    data_dir: str | Path, val_fraction: float = 0.15, test_fraction: float = 0.15, *, curated: bool = True
) -> Scan:
    """scan(), kept on disk keyed by the folder's stat fingerprint (a new scan reads every image);
    the stored scan is the raw one, the decisions are applied on the way out (see curate)."""
    root = dataset_root(check_folder(data_dir))
    key = hashlib.sha256(
        f"{scan_key(root)}|{val_fraction}|{test_fraction}|{settings.max_pixels()}".encode()
    ).hexdigest()[:24]
    path = settings.cache_dir() / "scans" / f"{key}.pkl"
    with contextlib.suppress(Exception):  # a stale or foreign pickle just means scanning again
        with open(path, "rb") as fh:
            found = pickle.load(fh)
        if isinstance(found, Scan):
            return curate(found) if curated else curate(found, {})
    result = scan(
        root,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_pixels=settings.max_pixels(),
        curated=False,
    )
    with contextlib.suppress(OSError):
        files.write_atomic(path, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return curate(result) if curated else result


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
    evaluated, split = usable[usable["split"] == "validation"], "validation"
    if evaluated.empty:
        evaluated, split = usable, "all"
    found = _majority(
        evaluated["class"].tolist(),
        scan.classes,
        reference=(train if len(train) else usable)["class"].tolist(),
    )
    return Baseline(label=str(found["class"]), accuracy=float(found["accuracy"]), split=split)


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
        "labels": list(readable_labels(scan.classes).values()),
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
