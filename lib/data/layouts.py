"""Dataset layouts: which folders are classes and splits, found by walking the folder once.

A dataset is DIR/<class>/* (the app makes the splits) or DIR/<split>/<class>/* with train plus
optionally validation and test folders; a lone wrapper folder (a zip's top folder) is stepped into.
Hidden and system files are noted, never read. A class folder whose name holds control characters
or line breaks is refused (class names are shown everywhere as plain one-line text).
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lib.errors import UserError
from lib.vocab import SPLIT_FOLDERS, SPLITS, is_junk_name, looks_like_image

LAYOUTS = {
    "class_folders": "one folder per class; train, validation and test made by the app",
    "splits": "train, validation and test folders kept as given",
    "train_test": "train and test folders kept; validation carved from train",
    "train_validation": "train and validation folders kept; test carved from validation (one fifth)",
    "train_only": "a train folder only; validation and test carved from it",
}


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


@dataclass
class Entry:
    path: Path
    relpath: str
    source_split: str  # the split folder it came from ("" for class_folders layouts)
    cls: str
    pre: str = ""  # a problem known before reading: hidden / outside_class


@dataclass
class Found:
    entries: list[Entry] = field(default_factory=list)
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
        dirs = [d for d in dirs if not is_junk_name(d)]
        if len(dirs) != 1 or any(looks_like_image(f) for f in files if not is_junk_name(f)):
            return path
        child = path / dirs[0]
        try:
            cdirs, cfiles = _listdir(child)
        except OSError:
            return path
        if not [d for d in cdirs if not is_junk_name(d)] or any(
            looks_like_image(f) for f in cfiles if not is_junk_name(f)
        ):
            return path
        if dirs[0].lower() in SPLIT_FOLDERS:
            return path
        path = child
    return path


# Characters a class name may not hold: controls (newline, tab, NUL, escape ...), line and paragraph
# separators, and the bidirectional overrides that make text display in another order than it reads.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def bad_name_characters(name: str) -> list[str]:
    """The characters of a class folder name that can't be shown as plain one-line text."""
    return [ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS]


def check_class_name(rel_dir: str, name: str) -> None:
    """A UserError naming the folder (its odd characters shown escaped) when `name` can't be a class."""
    bad = bad_name_characters(name)
    if bad:
        shown = ", ".join(sorted({repr(ch)[1:-1] for ch in bad}))
        raise UserError(
            f"The class folder {rel_dir!r} has control characters or line breaks in its name ({shown}): "
            "rename it to plain text and scan again."
        )


def _walk_class(walk: Found, root: Path, class_dir: Path, split: str, cls: str) -> None:
    rel_dir = class_dir.relative_to(root).as_posix()
    check_class_name(rel_dir, cls)
    walk.class_dirs[cls].append(rel_dir)

    def onerror(exc: OSError) -> None:
        walk.unreadable_dirs.append(os.path.relpath(exc.filename or str(class_dir), root))

    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=onerror):
        for d in sorted(dirnames):
            if is_junk_name(d):
                walk.hidden_dirs.append(Path(os.path.relpath(os.path.join(dirpath, d), root)).as_posix())
        dirnames[:] = sorted(d for d in dirnames if not is_junk_name(d))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            walk.entries.append(Entry(full, rel, split, cls, "hidden" if is_junk_name(name) else ""))


def _walk_level(walk: Found, root: Path, folder: Path, split: str) -> list[str]:
    """Files and hidden things directly in a non-class level (root or a split folder); returns sub-folders."""
    dirs, files = _listdir(folder)
    for name in files:
        full = folder / name
        rel = full.relative_to(root).as_posix()
        if is_junk_name(name):
            walk.entries.append(Entry(full, rel, split, "", "hidden"))
        elif looks_like_image(name):
            walk.entries.append(Entry(full, rel, split, "", "outside_class"))
        # Other files next to the class folders (README, LICENSE, labels.csv) are documentation.
    visible = []
    for d in dirs:
        if is_junk_name(d):
            walk.hidden_dirs.append((folder / d).relative_to(root).as_posix())
        else:
            visible.append(d)
    return visible


def walk(root: Path) -> tuple[str, Found]:
    """(layout name, every file and class folder found) for a dataset root."""
    walk = Found()
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
