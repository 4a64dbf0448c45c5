"""Hosted visitors' workspaces: each visitor's runs and uploads live in a folder named by a token.

The token is random (secrets.token_urlsafe) and kept in the page URL (?ws=...), so a refresh or a
bookmark finds the same workspace and nobody can guess another's. Functions take only the token,
never a path from the visitor, and a token that isn't exactly a token is refused, so it can never
name a folder outside cache_dir()/workspaces/. Workspaces expire a set time after the last visit
(settings.workspace_ttl_hours); one with a live training job is never removed.

Locally (not hosted) there is one shared runs folder, settings.runs_dir(), as before.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import time
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lib import runs, settings
from lib.errors import UserError
from lib.vocab import ACTIVE_STATES

TOKEN_BYTES = 18  # 24 URL-safe characters, 144 random bits
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")
LAST_SEEN = "last_seen"
RUNS = "models"
UPLOADS = "uploads"
CLEANUP_MARK = ".last-cleanup"
# Left out of the download: caches the app rebuilds, and in-progress temporary files.
ZIP_SKIP_DIRS = {"predictions", "exports"}


def new_token() -> str:
    """A fresh unguessable workspace token (URL-safe)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def valid_token(token: object) -> bool:
    """True only for strings that look exactly like a token (letters, digits, - and _; 22-64 long)."""
    return isinstance(token, str) and TOKEN_RE.fullmatch(token) is not None


def _check(token: object) -> str:
    if not valid_token(token):
        raise UserError(
            "This workspace link is not valid: open the app's address without '?ws=…' to get a new one."
        )
    return str(token)


def workspaces_root() -> Path:
    return settings.cache_dir() / "workspaces"


def _path(token: str) -> Path:
    return workspaces_root() / _check(token)


def workspace_dir(token: str) -> Path:
    """The visitor's workspace folder (created on demand); each call counts as a visit."""
    root = _path(token)
    (root / RUNS).mkdir(parents=True, exist_ok=True)
    (root / UPLOADS).mkdir(parents=True, exist_ok=True)
    (root / LAST_SEEN).touch()
    return root


def runs_dir(token: str) -> Path:
    """Where this visitor's training runs go."""
    return workspace_dir(token) / RUNS


def uploads_dir(token: str) -> Path:
    """Where this visitor's uploaded files (zips unpacked, photos) go."""
    return workspace_dir(token) / UPLOADS


def runs_dir_for(token: str | None) -> Path:
    """The runs folder a page should use: the shared one locally, the visitor's own when hosted."""
    if not settings.hosted():
        return settings.runs_dir()
    if token is None:
        raise UserError("This shared app needs a workspace link: reload the page to get one.")
    return runs_dir(token)


def uploads_dir_for(token: str | None) -> Path:
    """Where uploads are unpacked: the shared cache locally, the visitor's workspace when hosted."""
    if not settings.hosted():
        return settings.cache_dir() / "uploads"
    if token is None:
        raise UserError("This shared app needs a workspace link: reload the page to get one.")
    return uploads_dir(token)


def owns(token: str, path: str | Path) -> bool:
    """Whether `path` (a run folder a page is about to open) lies inside this visitor's workspace."""
    try:
        root = _path(token).resolve()
        target = Path(path).resolve()
    except (UserError, OSError):
        return False
    return target != root and root in target.parents


def _last_activity(root: Path) -> float:
    """Newest of the last visit and any run's last status change (a job finishing counts as activity)."""
    times = []
    for p in [root / LAST_SEEN, *(root / RUNS).glob("*/status.json")]:
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            pass
    if not times:
        try:
            times.append(root.stat().st_mtime)
        except OSError:
            times.append(time.time())
    return max(times)


def _ttl() -> timedelta:
    return timedelta(hours=settings.workspace_ttl_hours())


def expires_at(token: str) -> datetime:
    """When the workspace will be deleted if the visitor doesn't come back (UTC)."""
    root = _path(token)
    seen = _last_activity(root) if root.exists() else time.time()
    return datetime.fromtimestamp(seen, UTC) + _ttl()


def _has_live_job(root: Path) -> bool:
    for run_dir in (root / RUNS).iterdir() if (root / RUNS).is_dir() else ():
        if not run_dir.is_dir():
            continue
        if runs.read_run(run_dir).state in ACTIVE_STATES:
            return True
    return False


def cleanup_expired(now: datetime | None = None) -> list[str]:
    """Delete expired workspaces (never one with a queued or running job); returns their tokens.

    Only folders named like tokens are touched. Each is renamed away first, so a half-deleted
    workspace is never seen by a page.
    """
    now = now or datetime.now(UTC)
    root = workspaces_root()
    removed: list[str] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".deleting-") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)  # a deletion interrupted earlier
            continue
        if not (valid_token(entry.name) and entry.is_dir() and not entry.is_symlink()):
            continue
        expiry = datetime.fromtimestamp(_last_activity(entry), UTC) + _ttl()
        if expiry > now or _has_live_job(entry):
            continue
        trash = root / f".deleting-{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, trash)
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(entry.name)
    return removed


def cleanup_if_due(every_seconds: float = 600.0) -> list[str]:
    """cleanup_expired at most once per `every_seconds` (for calling from a page on each visit)."""
    root = workspaces_root()
    mark = root / CLEANUP_MARK
    try:
        if time.time() - mark.stat().st_mtime < every_seconds:
            return []
    except OSError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    mark.touch()
    return cleanup_expired()


def finished_runs(token: str) -> list[Path]:
    """The workspace's finished runs with a model, newest first."""
    return [r.path for r in runs.list_runs(runs_dir(token)) if r.usable]


def runs_zip(token: str) -> bytes:
    """A zip of the workspace's finished runs (one folder each), for download before expiry.

    Prediction and export caches and temporary files are left out; the app rebuilds them.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for run_dir in finished_runs(token):
            for path in sorted(run_dir.rglob("*")):
                rel = path.relative_to(run_dir)
                if (
                    path.is_symlink()
                    or not path.is_file()
                    or rel.parts[0] in ZIP_SKIP_DIRS
                    or any(part.startswith(".") for part in rel.parts)
                ):
                    continue
                zf.write(path, f"{run_dir.name}/{rel.as_posix()}")
    return buf.getvalue()
