"""Settings read from the environment (or `.streamlit/secrets.toml` via the app), with safe defaults.

Every setting is documented in the README. Functions, not module constants, so tests can set
environment variables per test.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default


def hosted() -> bool:
    """Hosted mode: a public demo link (no server folders, limits on uploads and training)."""
    return _flag("STUDIO_HOSTED", False)


def allow_server_folders() -> bool:
    """Whether the Dataset page may read a folder on the server (off by default when hosted)."""
    return _flag("STUDIO_ALLOW_SERVER_FOLDERS", not hosted())


def runs_dir() -> Path:
    return Path(os.environ.get("STUDIO_RUNS_DIR") or ROOT / "models")


def cache_dir() -> Path:
    """Feature caches, extracted uploads, downloaded datasets and read-only runs' predictions."""
    return Path(os.environ.get("STUDIO_CACHE_DIR") or ROOT / ".cache")


def max_pixels() -> int:
    return _int("STUDIO_MAX_PIXELS", 50_000_000)


def max_upload_mb() -> int:
    return _int("STUDIO_MAX_UPLOAD_MB", 200 if hosted() else 2000)


def sample_dir() -> Path:
    return ROOT / "data" / "sample"


def bundled_weights() -> Path:
    return ROOT / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"


def max_concurrent_jobs() -> int:
    """Training jobs that may run at once; the rest wait in a queue with a visible position."""
    return _int("STUDIO_MAX_JOBS", 1)
