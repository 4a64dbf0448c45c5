"""The one place that knows Streamlit: cached wrappers around lib and the state shared between pages.

Cache keys are plain values (paths, fingerprints of files), never TensorFlow objects.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from lib import datasets, settings

DATASET_KEY = "dataset_dir"


@st.cache_data(show_spinner=False, max_entries=8)
def _scan(root: str, fingerprint: str) -> datasets.Scan:
    return datasets.scan(Path(root), max_pixels=settings.max_pixels())


def scan(root: str | Path) -> datasets.Scan:
    """Scan a dataset folder; cached until any file under it is added, removed or changed."""
    root = Path(root)
    return _scan(str(root.resolve()), datasets.scan_key(root))


def current_dataset() -> Path | None:
    """The dataset chosen on the Dataset page (carried across pages in the session and the URL)."""
    value = st.session_state.get(DATASET_KEY)
    if value and Path(value).is_dir():
        return Path(value)
    return None


def set_dataset(path: str | Path | None) -> None:
    if path is None:
        st.session_state.pop(DATASET_KEY, None)
    else:
        st.session_state[DATASET_KEY] = str(Path(path).resolve())


@st.cache_data(show_spinner=False, max_entries=2000)
def _thumbnail(path: str, mtime_ns: int, side: int):
    from lib import images

    return images.thumbnail(path, side)


def thumbnail(path: str | Path, side: int = 256):
    """A small preview of an image file, cached until the file changes."""
    p = Path(path)
    return _thumbnail(str(p), p.stat().st_mtime_ns, side)


def upload_dir(name: str, data: bytes) -> Path:
    """Where an uploaded zip is unpacked: keyed by its content, so the same zip is unpacked once."""
    import hashlib

    digest = hashlib.sha1(data).hexdigest()[:16]
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(name).stem)[:40] or "upload"
    return settings.cache_dir() / "uploads" / f"{stem}-{digest}"
