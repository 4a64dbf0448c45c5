"""The one way files are written: atomically, so a reader sees the old content or the new, never half.

Everything the app saves (run files, models, feature caches, predictions, reports, exports) goes
through `atomic_path` or `atomic_dir`: write to a temporary sibling, flush, rename into place, fsync
the folder. A process killed half-way leaves only a temporary file, which `clean_temp` removes later.
Before a big write, `ensure_free` checks the disk has room (a full disk is a plain "disk full", never
a half-written file), and `preallocate` reserves a memory-mapped file's blocks up front (writing
into a sparse mapping on a full disk kills the process with SIGBUS instead of raising).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from lib import settings
from lib.errors import DiskFull
from lib.text import size_text

TEMP_PREFIX = ".tmp-"
# Temporary names end in .<pid>.<8 hex digits>[suffix]: the process that was writing it.
_TEMP_OWNER = re.compile(r"\.(\d+)\.[0-9a-f]{8}(?:\.[^.]*)?$")


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


@contextlib.contextmanager
def exclusive(name: str) -> Iterator[None]:
    """Hold a machine-wide lock named `name` (any text: a path, a key) while the block runs, so two
    processes or threads never make the same expensive file at once (the second waits, then finds it
    made). An fcntl lock in the cache: the kernel releases it if the holder dies."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock, at worst the work is done twice
        yield
        return
    folder = settings.cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".lock")
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def _owner_gone(name: str) -> bool:
    """Whether the process named in a temporary file's name (…<pid>.<hex>) no longer runs here."""
    found = _TEMP_OWNER.search(name)
    if found is None:
        return False
    pid = int(found.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False  # alive but not ours (EPERM), or not a pid at all
    return False


def clean_temp(folder: str | Path, max_age_seconds: float = 6 * 3600) -> int:
    """Remove temporary files and folders left in `folder` by killed processes; returns how many.

    A temporary is removed when the process that wrote it is gone, or when it is older than
    `max_age_seconds` (written by another machine sharing the folder, or of unknown origin).
    """
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
            if now - entry.lstat().st_mtime < max_age_seconds and not _owner_gone(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            continue
    return removed


def clean_temp_tree(root: str | Path, depth: int) -> int:
    """clean_temp in `root` and its sub-folders down to `depth` levels (symlinks not followed)."""
    removed = clean_temp(root)
    if depth <= 0:
        return removed
    try:
        with os.scandir(root) as it:
            subdirs = [
                e.path for e in it if not e.name.startswith(TEMP_PREFIX) and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return removed
    for sub in subdirs:
        removed += clean_temp_tree(sub, depth - 1)
    return removed


# ----------------------------------------------------------------------------------------------
# Disk space
# ----------------------------------------------------------------------------------------------

# A write the disk refused for lack of room: no space left, over a quota, or over the process's
# file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails with EFBIG instead).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether an error is the disk refusing a write, or was raised from (or while handling) one:
    libraries that write files (Keras saving a model, h5py, zipfile) may wrap it or fail again
    while cleaning up."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk holding `path` (or its nearest existing parent), for this user."""
    here = Path(path).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return 1 << 62  # can't tell: let the write itself find out


def tree_bytes(path: str | Path) -> int:
    """Bytes the files under `path` take (symlinks not followed; 0 when it doesn't exist)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    with contextlib.suppress(OSError):
        if Path(path).is_file():
            total += os.lstat(path).st_size
    return total


def disk_full_message(what: str, needed: int, free: int) -> str:
    return (
        f"The disk is full: {what} needs {size_text(needed)} but only {size_text(max(free, 0))} "
        "can be used. Free some space (or delete old runs) and try again."
    )


def ensure_free(path: str | Path, needed: int, what: str) -> None:
    """Raise DiskFull unless `needed` bytes fit on the disk of `path` with settings.min_free_mb() to spare."""
    free = free_bytes(path) - settings.min_free_mb() * 1_000_000
    if needed > free:
        raise DiskFull(disk_full_message(what, needed, free))


def preallocate(path: str | Path, what: str) -> None:
    """Reserve the disk blocks of an existing (sparse) file, so writing through a memory map can't
    hit a full disk (SIGBUS) later: a full disk raises DiskFull here instead. File systems without
    fallocate are left as they are."""
    size = os.path.getsize(path)
    if size == 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFull(disk_full_message(what, size, free_bytes(path))) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)
