"""Curation: the person's decisions about single images (relabel as another class, exclude, keep),
stored in the app's own store keyed by the dataset folder, never by moving, renaming or deleting
the user's files (a read-only or uploaded dataset is curated the same way).

One JSON file per dataset under <cache>/curation/: the decisions by path (relative to the dataset
root, as the scan reports it) and a bounded undo stack of the batches that changed them.
`apply` turns a scan into the curated one: excluded images are left out ("excluded" problem),
relabelled ones take their new class. The scan, training and evaluation all read scans through it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lib import files, settings
from lib.errors import UserError
from lib.text import CSV_LINE_END, csv_safe

VERSION = 1
ACTIONS = ("relabel", "exclude", "keep")
UNDO_DEPTH = 200  # batches of decisions that can be undone
CSV_COLUMNS = ["path", "action", "label", "decided_at"]


@dataclass(frozen=True)
class Decision:
    path: str  # relative to the dataset root, as the scan reports it
    action: str  # relabel | exclude | keep
    label: str = ""  # the new class, for relabel
    decided_at: str = ""


def store_dir() -> Path:
    return settings.cache_dir() / "curation"


def _root_text(root: str | Path) -> str:
    return str(Path(root).expanduser().resolve())


def location(root: str | Path) -> Path:
    """The curation file of a dataset folder (it may not exist yet)."""
    return (
        store_dir()
        / f"{hashlib.sha256(_root_text(root).encode('utf-8', 'surrogateescape')).hexdigest()[:20]}.json"
    )


def _empty(root: str | Path) -> dict[str, Any]:
    return {"version": VERSION, "root": _root_text(root), "decisions": {}, "undo": []}


def _read(root: str | Path) -> dict[str, Any]:
    """The stored record; a missing, foreign or damaged file reads as no decisions."""
    record = _empty(root)
    with contextlib.suppress(OSError, ValueError):
        found = json.loads(location(root).read_text())
        if isinstance(found, dict) and found.get("root") == record["root"]:
            record["decisions"] = {
                str(p): d
                for p, d in dict(found.get("decisions") or {}).items()
                if isinstance(d, dict) and d.get("action") in ACTIONS
            }
            record["undo"] = [b for b in found.get("undo") or [] if isinstance(b, list)][-UNDO_DEPTH:]
    return record


def decisions(root: str | Path) -> dict[str, Decision]:
    """Every decision about a dataset, by path."""
    return {
        path: Decision(path, d["action"], str(d.get("label") or ""), str(d.get("decided_at") or ""))
        for path, d in _read(root)["decisions"].items()
    }


def fingerprint(root: str | Path) -> str:
    """Changes whenever the decisions do ("" when there are none): part of every cache key that
    depends on the curated dataset."""
    return digest(decisions(root))


def digest(found: dict[str, Decision]) -> str:
    """The fingerprint of a set of decisions ("" for none)."""
    if not found:
        return ""
    text = json.dumps({p: [d.action, d.label] for p, d in found.items()}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def can_undo(root: str | Path) -> bool:
    return bool(_read(root)["undo"])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def decide(root: str | Path, changes: Iterable[Decision | tuple[str, str] | tuple[str, str, str]]) -> int:
    """Record decisions as one undoable batch (a later decision about a path replaces the earlier
    one); returns how many changed. Actions and labels are checked by `check`, not here."""
    record = _read(root)
    before: dict[str, Any] = {}
    stamp = _now()
    for change in changes:
        d = change if isinstance(change, Decision) else Decision(*change)
        if d.action not in ACTIONS:
            raise UserError(f"Unknown decision {d.action!r}: use one of {', '.join(ACTIONS)}.")
        if d.action == "relabel" and not d.label:
            raise UserError(f"Relabelling {d.path} needs the new class.")
        new = {"action": d.action, "label": d.label if d.action == "relabel" else "", "decided_at": stamp}
        old = record["decisions"].get(d.path)
        if old is not None and old.get("action") == new["action"] and old.get("label", "") == new["label"]:
            continue
        before.setdefault(d.path, old)
        record["decisions"][d.path] = new
    if before:
        record["undo"] = [*record["undo"], [[p, old] for p, old in before.items()]][-UNDO_DEPTH:]
        _write(root, record)
    return len(before)


def forget(root: str | Path, paths: Iterable[str]) -> int:
    """Remove the decisions about these paths (as one undoable batch); returns how many."""
    record = _read(root)
    before = {p: record["decisions"].pop(p) for p in list(paths) if p in record["decisions"]}
    if before:
        record["undo"] = [*record["undo"], [[p, old] for p, old in before.items()]][-UNDO_DEPTH:]
        _write(root, record)
    return len(before)


def undo(root: str | Path) -> int:
    """Take back the last batch of decisions; returns how many paths it restored (0: nothing to undo)."""
    record = _read(root)
    if not record["undo"]:
        return 0
    batch = record["undo"].pop()
    for path, old in batch:
        if old is None:
            record["decisions"].pop(path, None)
        else:
            record["decisions"][path] = old
    _write(root, record)
    return len(batch)


def _write(root: str | Path, record: dict[str, Any]) -> None:
    try:
        files.write_json(location(root), record)
    except OSError as exc:
        raise UserError(f"The decisions could not be saved ({exc.strerror or exc}).") from exc


def apply(manifest: pd.DataFrame, classes: list[str], found: dict[str, Decision]) -> pd.DataFrame:
    """The manifest with the decisions applied: excluded rows unusable (problem "excluded"),
    relabelled rows in their new class (their old one in `given_class`). Decisions about files no
    longer in the dataset, or naming a class it doesn't have, are ignored."""
    df = manifest.copy()
    df["given_class"] = df["class"]
    df["decision"] = ""
    if not found:
        return df
    by_path = {p: i for i, p in zip(df.index, df["relpath"], strict=True)}
    for path, d in found.items():
        i = by_path.get(path)
        if i is None or not df.at[i, "usable"] and d.action != "exclude":
            continue
        if d.action == "exclude":
            df.at[i, "decision"] = "exclude"
            if df.at[i, "usable"]:
                df.at[i, "usable"] = False
                df.at[i, "problems"] = "; ".join(x for x in (df.at[i, "problems"], "excluded") if x)
                df.at[i, "detail"] = "Excluded on the Data doctor page (the file itself is untouched)."
        elif d.action == "relabel" and d.label in classes and d.label != df.at[i, "class"]:
            df.at[i, "decision"] = "relabel"
            df.at[i, "class"] = d.label
        elif d.action == "keep":
            df.at[i, "decision"] = "keep"
    return df


def check(root: str | Path, changes: list[Decision], relpaths: set[str], classes: list[str]) -> None:
    """UserError naming the first decision that can't apply to this dataset."""
    for d in changes:
        if d.action not in ACTIONS:
            raise UserError(f"Unknown decision {d.action!r} for {d.path}: use one of {', '.join(ACTIONS)}.")
        if d.path not in relpaths:
            raise UserError(f"{d.path} is not a usable image of the dataset {_root_text(root)}.")
        if d.action == "relabel" and d.label not in classes:
            raise UserError(f"Cannot relabel {d.path} as {d.label!r}: the classes are {', '.join(classes)}.")


def to_csv(found: dict[str, Decision]) -> bytes:
    """The decisions as CSV (path, action, label, decided_at), formula-safe for spreadsheets."""
    frame = pd.DataFrame(
        [[csv_safe(d.path), d.action, csv_safe(d.label), d.decided_at] for d in found.values()],
        columns=CSV_COLUMNS,
    )
    return frame.to_csv(index=False, lineterminator=CSV_LINE_END).encode("utf-8")


def _unguard(text: str) -> str:
    """Undo csv_safe's quote (our own CSV download guards names that look like formulas)."""
    return text[1:] if text.startswith("'") and csv_safe(text[1:]) != text[1:] else text


def read_file(path: str | Path) -> list[Decision]:
    """Decisions from a CSV (the page's download: path, action, label) or a JSON file (a list of
    {path, action, label} objects, or {"decisions": [...]}); UserError in plain words when it can't."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the decisions file {path} ({exc}).") from exc
    rows: list[dict[str, Any]]
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"The decisions file {path} is not valid JSON ({exc}).") from exc
        rows = data.get("decisions", []) if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UserError(
                f"The decisions file {path} should hold a list of {{path, action, label}} objects."
            )
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"path", "action"} <= set(reader.fieldnames):
            raise UserError(f"The decisions file {path} needs the columns path and action (and label).")
        rows = list(reader)
    out = []
    for r in rows:
        p = _unguard(str(r.get("path") or "").strip())
        action = str(r.get("action") or "").strip().lower()
        label = _unguard(str(r.get("label") or "").strip())
        if not p:
            raise UserError(f"The decisions file {path} has a row without a path.")
        out.append(Decision(p, action, label))
    return out
