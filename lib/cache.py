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
