"""Hosted visitors' workspaces: each visitor's runs and uploads live in a folder named by a token.

The token is random (secrets.token_urlsafe), issued by the server (`issue`) and kept in the page
URL (?ws=...), so a refresh or a bookmark finds the same workspace and nobody can guess another's;
a token that names no existing workspace is never adopted (the visitor gets a fresh one). Functions
take only the token, never a path from the visitor, and a token that isn't exactly a token is
refused, so it can never name a folder outside cache_dir()/workspaces/. Workspaces expire a set time
after the last visit (settings.workspace_ttl_hours); one with a live training job is never removed.
Each holds at most settings.workspace_quota_mb (uploads and runs, with their predictions and exports).
The runs zip a visitor downloads carries no server paths (see `runs_zip`).

Locally (not hosted) there is one shared runs folder, settings.runs_dir(), as before.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import site
import sys
import time
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lib import files, runs, settings
from lib.errors import UserError
from lib.text import size_text, strip_paths
from lib.vocab import ACTIVE_STATES, RUN_FILES

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


def exists(token: object) -> bool:
    """Whether `token` names a workspace this server issued and still keeps."""
    if not valid_token(token):
        return False
    root = workspaces_root() / str(token)
    return root.is_dir() and not root.is_symlink()


def issue() -> str:
    """A fresh token with its workspace already made, so the link works from the first second
    (a refresh finds the workspace; a token nobody was issued never does)."""
    token = new_token()
    workspace_dir(token)
    return token


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


# ----------------------------------------------------------------------------------------------
# Quota
# ----------------------------------------------------------------------------------------------


def usage(token: str) -> int:
    """Bytes the workspace holds: uploads and runs (with their predictions, exports and reports)."""
    return files.tree_bytes(_path(token))


def quota() -> int:
    """Most bytes one workspace may hold (0: no limit)."""
    return settings.workspace_quota_mb() * 1_000_000


def room(token: str | None) -> int | None:
    """Bytes the workspace may still take; None when there is no limit (local use, or quota 0)."""
    if token is None or not settings.hosted() or quota() == 0:
        return None
    return max(0, quota() - usage(token))


def check_room(token: str | None, needed: int = 0) -> None:
    """A UserError when the workspace is full (or `needed` more bytes would not fit): checked before
    an upload is accepted and before a training run starts writing."""
    left = room(token)
    if left is None:
        return
    if left <= 0:
        raise UserError(
            f"Your workspace holds {size_text(usage(token))}, the limit on this demo: "
            "delete old runs or uploads."
        )
    if needed > left:
        raise UserError(
            f"This needs {size_text(needed)} but your workspace has only {size_text(left)} left of its "
            f"{size_text(quota())} on this demo: delete old runs or uploads."
        )


def token_of(runs_dir: str | Path) -> str | None:
    """The token of the workspace a runs folder belongs to (None for the local runs folder)."""
    path = Path(runs_dir).resolve()
    try:
        rel = path.relative_to(workspaces_root().resolve())
    except ValueError:
        return None
    return rel.parts[0] if rel.parts and valid_token(rel.parts[0]) else None


def usage_text(token: str) -> str:
    """'Your workspace holds 12.3 MB of 1.0 GB.' (or without a limit when there is none)."""
    held = size_text(usage(token))
    limit = f" of {size_text(quota())}" if quota() else ""
    return f"Your workspace holds {held}{limit}."


# ----------------------------------------------------------------------------------------------
# Downloading the runs
# ----------------------------------------------------------------------------------------------


def finished_runs(token: str) -> list[Path]:
    """The workspace's finished runs with a model, newest first."""
    return [r.path for r in runs.list_runs(runs_dir(token)) if r.usable]


def server_folders(token: str, run: runs.Run) -> list[tuple[str, str]]:
    """This server's folders that may appear in a run's files, each with what it becomes in a
    download: the dataset its folder name, the workspace and the app's folder nothing, Python's
    folders "<python>"."""
    known: list[tuple[str, str]] = []

    def add(path: object, repl: str) -> None:
        if not path or not str(path).startswith("/"):
            return
        known.append((str(path), repl))
        try:
            known.append((str(Path(str(path)).resolve()), repl))
        except OSError:
            pass

    dataset = run.config.get("dataset")
    for root in (run.data_dir, dataset.get("root") if isinstance(dataset, dict) else None):
        if root:
            add(root, Path(str(root)).name)
    add(_path(token), "")
    add(settings.cache_dir(), "cache")
    add(settings.ROOT, "")
    for folder in {sys.prefix, sys.exec_prefix, sys.base_prefix, *site.getsitepackages()}:
        add(folder, "<python>")  # tracebacks stay readable: <python>/lib/python3.11/.../pandas/...
    return known  # any other absolute path keeps only its last part (text.strip_paths)


def _strip_json(value: object, known: list[tuple[str, str]]) -> object:
    if isinstance(value, str):
        return strip_paths(value, known)
    if isinstance(value, list):
        return [_strip_json(v, known) for v in value]
    if isinstance(value, dict):
        return {k: _strip_json(v, known) for k, v in value.items()}
    return value


# What a run folder's files become in the download: JSON values and logs lose every server path;
# a report keeps its pictures (base64, full of slashes) and loses the known folders only.
LOG_FILES = {RUN_FILES["log"], RUN_FILES["worker_log"], "report.md"}


def needs_stripping(path: Path) -> bool:
    return path.suffix in (".json", ".html") or path.name in LOG_FILES


def public_file(path: Path, known: list[tuple[str, str]]) -> bytes:
    """A run file's bytes as a hosted visitor may download them (no server paths)."""
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            obj = json.loads(data)
        except ValueError:
            return strip_paths(data.decode("utf-8", "replace"), known).encode()
        return (json.dumps(_strip_json(obj, known), indent=2, ensure_ascii=False) + "\n").encode()
    if path.name in LOG_FILES:
        return strip_paths(data.decode("utf-8", "replace"), known).encode()
    if path.suffix == ".html":
        return strip_paths(data.decode("utf-8", "replace"), known, others=False).encode()
    return data


def runs_zip(token: str) -> bytes:
    """A zip of the workspace's finished runs (one folder each), for download before expiry.

    Prediction and export caches and temporary files are left out; the app rebuilds them. Config,
    logs and reports are sanitized copies: paths relative to the dataset or the app, never the
    server's folders.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for run_dir in finished_runs(token):
            known = server_folders(token, runs.read_run(run_dir))
            for path in sorted(run_dir.rglob("*")):
                rel = path.relative_to(run_dir)
                if (
                    path.is_symlink()
                    or not path.is_file()
                    or rel.parts[0] in ZIP_SKIP_DIRS
                    or any(part.startswith(".") for part in rel.parts)
                ):
                    continue
                name = f"{run_dir.name}/{rel.as_posix()}"
                if needs_stripping(path):
                    zf.writestr(name, public_file(path, known))
                else:
                    zf.write(path, name)
    return buf.getvalue()
