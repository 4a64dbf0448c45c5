"""What a visitor's session remembers across pages: the workspace token, the chosen dataset, the
training settings (the Dataset page's augmentation preview and the Train page edit the same ones),
the job this tab started and where uploads go."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import streamlit as st

from lib import files, settings, workspace
from lib.data import sources
from lib.train.config import TrainConfig, default_of, options

DATASET_KEY = "dataset_dir"
TOKEN_KEY = "ws"
SETTINGS_KEY = "train_settings"  # the TrainConfig field values a visitor chose (survive page switches)
ACTIVE_RUN_KEY = "active_run"


def workspace_token() -> str | None:
    """Hosted mode: this visitor's workspace token, kept in the URL (?ws=...) so a refresh or a
    bookmark finds the same workspace. Streamlit drops query parameters when pages switch, so the
    session remembers it and puts it back. A token in the URL is kept only when it names an existing
    workspace; any other gets a fresh workspace and token (never a name the link chose).
    Local use: None (one shared runs folder)."""
    if not settings.hosted():
        return None
    token = st.session_state.get(TOKEN_KEY)
    if not workspace.valid_token(token):
        asked = st.query_params.get(TOKEN_KEY)
        token = asked if workspace.exists(asked) else workspace.issue()
    st.session_state[TOKEN_KEY] = token
    if st.query_params.get(TOKEN_KEY) != token:
        st.query_params[TOKEN_KEY] = token
    return token


def runs_dir() -> Path:
    """Where this visitor's runs live (the shared models/ folder in local use)."""
    return workspace.runs_dir_for(workspace_token())


def current_dataset() -> Path | None:
    """The dataset chosen on the Dataset page (carried across pages in the session)."""
    value = st.session_state.get(DATASET_KEY)
    if value and Path(value).is_dir():
        return Path(value)
    return None


def set_dataset(path: str | Path | None) -> None:
    if path is None:
        st.session_state.pop(DATASET_KEY, None)
    else:
        st.session_state[DATASET_KEY] = str(Path(path).resolve())


def active_run() -> str | None:
    return st.session_state.get(ACTIVE_RUN_KEY)


def set_active_run(path: str | Path | None) -> None:
    if path is None:
        st.session_state.pop(ACTIVE_RUN_KEY, None)
    else:
        st.session_state[ACTIVE_RUN_KEY] = str(path)


# ----------------------------------------------------------------------------------------------
# Training settings shared by the Dataset and Train pages
# ----------------------------------------------------------------------------------------------


def saved_settings() -> dict[str, Any]:
    """The visitor's training settings so far (TrainConfig defaults for anything not chosen)."""
    saved = st.session_state.setdefault(SETTINGS_KEY, {})
    return {f.name: saved.get(f.name, default_of(f)) for f, _ in options()}


def widget_key(name: str) -> str:
    return f"cfg_{name}"


def prepare_widget(name: str, value: Any) -> str:
    """The widget key of a config field, seeded with the saved value. Streamlit forgets the state
    of widgets a page doesn't draw, so the value lives in SETTINGS_KEY and is put back here."""
    key = widget_key(name)
    if key not in st.session_state:
        st.session_state[key] = value
    return key


def remember(values: dict[str, Any]) -> None:
    st.session_state.setdefault(SETTINGS_KEY, {}).update(values)


def settings_config(**overrides: Any) -> TrainConfig:
    """A TrainConfig of the saved settings (unchecked), with overrides."""
    return TrainConfig.from_dict({**saved_settings(), **overrides})


# ----------------------------------------------------------------------------------------------
# Uploads
# ----------------------------------------------------------------------------------------------


def upload_dir(name: str, data: bytes) -> Path:
    """Where an uploaded zip is unpacked: keyed by its content, so the same zip is unpacked once."""
    digest = hashlib.sha1(data).hexdigest()[:16]
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(name).stem)[:40] or "upload"
    return workspace.uploads_dir_for(workspace_token()) / f"{stem}-{digest}"


def saved_upload(name: str, data: bytes) -> Path:
    """Keep an uploaded file (a weights file) in this visitor's uploads, named by its content
    (within the workspace's quota when hosted)."""
    suffix = ".weights.h5" if name.lower().endswith(".weights.h5") else Path(name).suffix.lower()[:12]
    folder = upload_dir(name, data)
    target = folder.with_name(folder.name + (suffix or ".bin"))
    if not target.exists():
        workspace.check_room(workspace_token(), len(data))
        files.ensure_free(target.parent, len(data), "saving the upload")
        files.write_atomic(target, data)
    return target


def open_zip(name: str, data: bytes) -> Path:
    """An uploaded zip unpacked into this visitor's uploads (its dataset root), within the server's
    limits and, when hosted, what the workspace may still hold."""
    token = workspace_token()
    dest = upload_dir(name, data)
    if not dest.is_dir():
        workspace.check_room(token)
    return sources.open_upload(data, dest, room=workspace.room(token))


def check_room() -> None:
    """A UserError when this visitor's workspace is full (checked before a training run starts)."""
    workspace.check_room(workspace_token())
