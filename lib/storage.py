"""Disk use across the app: what the cache folder holds (for `python -m lib cache` and the Train
page's Storage section) and, on start, removing the temporary files killed processes left wherever
the app writes atomically (run folders, cache folders, hosted workspaces).

The feature cache's own size limit and eviction live with it, in lib.train.features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lib import files, settings, workspace

# What each folder of the cache holds, in words (folders not listed here are shown by name).
CACHE_FOLDERS = {
    "features": "image features of frozen bases (rebuilt when needed)",
    "engines": "frozen bases converted to LiteRT, shared by every run (rebuilt when needed)",
    "tflite": "LiteRT models of read-only runs, like the demo (rebuilt when needed)",
    "scans": "dataset scans (rebuilt when needed)",
    "predictions": "predictions of read-only runs, like the demo (rebuilt when needed)",
    "exports": "exported models of read-only runs (rebuilt when needed)",
    "reports": "reports of read-only runs",
    "uploads": "unpacked uploaded zips",
    "downloads": "downloaded datasets",
    "workspaces": "hosted visitors' workspaces (uploads and runs)",
    "jobs": "the training queue",
    "doctor": "colour layouts of images for the Data doctor (rebuilt when needed)",
    "curation": "your Data doctor decisions per dataset (relabel, exclude, keep; never cleared)",
    "checked-models": "model and weights files known to read safely (made here, or checked once)",
    "locks": "empty files that let one process at a time make the same converted model",
}


@dataclass(frozen=True)
class CacheUse:
    name: str
    what: str
    path: Path
    bytes: int


def cache_report() -> list[CacheUse]:
    """Every folder of the cache with its size, the known ones first in CACHE_FOLDERS order."""
    root = settings.cache_dir()
    try:
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        found = []
    order = [n for n in CACHE_FOLDERS if n in found] + [n for n in found if n not in CACHE_FOLDERS]
    return [CacheUse(n, CACHE_FOLDERS.get(n, ""), root / n, files.tree_bytes(root / n)) for n in order]


def temp_folders(runs_dir: Path | None = None) -> list[tuple[Path, int]]:
    """(folder, depth) pairs where atomic writes happen, for clean_temp_tree: run folders and their
    predictions/exports, each cache folder, and every hosted workspace's runs and uploads."""
    cache = settings.cache_dir()
    found = [(Path(runs_dir or settings.runs_dir()), 2), (cache, 0)]
    found += [
        (cache / name, 0)
        for name in (
            "features",
            "scans",
            "uploads",
            "downloads",
            "jobs",
            "curation",
            "doctor",
            "checked-models",
        )
    ]
    found += [(cache / name, 2) for name in ("predictions", "exports", "reports")]
    root = workspace.workspaces_root()
    found.append((root, 0))
    try:
        spaces = [p for p in root.iterdir() if workspace.valid_token(p.name) and p.is_dir()]
    except OSError:
        spaces = []
    for space in spaces:
        found += [(space / workspace.RUNS, 2), (space / workspace.UPLOADS, 0)]
    return found


def clean_temp_files(runs_dir: Path | None = None) -> int:
    """Remove the temporary files and folders of killed processes everywhere the app writes; returns
    how many (files of processes still running are kept)."""
    return sum(files.clean_temp_tree(folder, depth) for folder, depth in temp_folders(runs_dir))
