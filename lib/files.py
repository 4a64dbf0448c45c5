"""The one way files are written: atomically, so a reader sees the old content or the new, never half.

Everything the app saves (run files, models, feature caches, predictions, reports, exports) goes
through `atomic_path` or `atomic_dir`: write to a temporary sibling, flush, rename into place, fsync
the folder. A process killed half-way leaves only a temporary file, which `clean_temp` removes later.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"


def _read_umask() -> int:
    """The process umask without changing it (os.umask would, briefly, for every thread)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_UMASK = _read_umask()


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable (a crash right after can't bring back the old name)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """A temporary path next to `path`; whatever is written there replaces `path` when the block ends.

    If the block raises, the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if fsync:
        fsync_dir(path.parent)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write bytes (or UTF-8 text) to `path` atomically; the file gets the usual permissions."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
    return Path(path)


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write an object as indented JSON, atomically (no NaN: JSON has none)."""
    return write_atomic(path, json.dumps(obj, indent=2, default=_jsonable, allow_nan=False) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file; ValueError when it isn't one (callers turn that into plain words)."""
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder next to `path`, renamed to `path` when the block ends without error.

    When another process finished the same folder first, its copy is kept and ours discarded
    (both were made from the same inputs). On error the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def append_line(path: str | Path, text: str) -> None:
    """Append text with a single O_APPEND write, so lines of concurrent writers never interleave."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


def writable_dir(path: str | Path) -> bool:
    """Whether files can be created in `path` (creating it if needed), tested by really writing."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f"{TEMP_PREFIX}write-test-")
        os.close(fd)
        os.unlink(tmp)
        return True
    except OSError:
        return False


def clean_temp(folder: str | Path, max_age_seconds: float = 6 * 3600) -> int:
    """Remove temporary files and folders left in `folder` by killed processes; returns how many."""
    removed = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            if now - entry.lstat().st_mtime < max_age_seconds:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            continue
    return removed
