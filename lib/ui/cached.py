"""Cached loaders for the pages: Streamlit's caches around lib, keyed by plain values (paths, stat
fingerprints, model file identity), never by TensorFlow objects.

Models are not cached here: lib.models.loader keeps one bounded, process-wide copy of each.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from lib import runs, settings
from lib.data import curation, images
from lib.data.layouts import scan_key
from lib.data.scan import Scan
from lib.data.scan import scan as scan_folder
from lib.errors import UserError
from lib.evaluate import predictions as preds
from lib.models import loader, unknown
from lib.runs import Run
from lib.serve import gradcam
from lib.text import readable_labels
from lib.train import augment
from lib.train.config import TrainConfig

THUMBNAIL_ROWS = 300


@st.cache_data(show_spinner=False, max_entries=8)
def _scan(root: str, fingerprint: str, decisions: str) -> Scan:
    return scan_folder(Path(root), max_pixels=settings.max_pixels())


def scan(root: str | Path) -> Scan:
    """Scan a dataset folder (with the Data doctor's decisions applied); cached until any file
    under it is added, removed or changed, or a decision changes."""
    root = Path(root)
    return _scan(str(root.resolve()), scan_key(root), curation.fingerprint(root))


@st.cache_data(show_spinner=False, max_entries=2000)
def _thumbnail(path: str, mtime_ns: int, side: int) -> np.ndarray:
    return images.thumbnail(path, side)


def thumbnail(path: str | Path, side: int = 256) -> np.ndarray:
    """A small preview of an image file, cached until the file changes."""
    p = Path(path)
    return _thumbnail(str(p), p.stat().st_mtime_ns, side)


@st.cache_data(show_spinner=False, max_entries=4000)
def _thumb_url(path: str, mtime_ns: int) -> str:
    try:
        im = Image.fromarray(images.thumbnail(path, 96))
    except (UserError, OSError):
        return ""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def history(run: Run) -> pd.DataFrame:
    """history.csv of a run (small: read on each rerun, so a live run's curves grow)."""
    return runs.read_history(run.path)


@st.cache_data(show_spinner=False, max_entries=256)
def _heat_map(model_key: tuple, digest: str, class_index: int, _model: Any, _image: np.ndarray) -> np.ndarray:
    return gradcam.overlay(_image, gradcam.gradcam(_model, _image, class_index))


def heat_map(model: loader.LoadedModel, result: Any) -> np.ndarray:
    """The photo with where the model looked drawn over it; made once per photo, model and class
    (a rerun of the page doesn't compute it again)."""
    index = model.classes.index(result.predicted)
    if result.digest is None:
        return gradcam.overlay(result.image, gradcam.gradcam(model, result.image, index))
    return _heat_map(model.key, result.digest, index, model, result.image)


@st.cache_resource(show_spinner=False, max_entries=16)
def _detector(path: str, mtime_ns: int) -> unknown.Detector | None:
    return unknown.load(path)


def detector(run: Run) -> unknown.Detector | None:
    """The run's unknown-photo detector and temperature, without loading its model (None: none)."""
    try:
        mtime = run.unknown_path.stat().st_mtime_ns
    except OSError:
        return None
    return _detector(str(run.unknown_path), mtime)


def model(run: Run) -> loader.LoadedModel:
    """The run's loaded model (one shared copy, see lib.models.loader)."""
    return loader.load(run)


@st.cache_data(show_spinner=False, max_entries=32, ttl=3600)
def _predictions(
    run_dir: str, data_dir: str | None, split: str, model_key: tuple, data_key: str
) -> pd.DataFrame:
    return preds.predict_split(run_dir, data_dir, split)


def predictions(run: Run, data_dir: str | None, split: str) -> pd.DataFrame:
    """A run's predictions on a split (stored on disk by lib.evaluate, and in memory here)."""
    try:
        root = preds.data_root(run, data_dir, preds.normalize_split(split))
        data_key = scan_key(root)
    except UserError:
        data_key = ""  # the lib call below gives the user the precise message
    ident = run.model_identity() if run.has_model else {}
    return _predictions(str(run.path), data_dir, split, tuple(sorted(ident.items())), data_key)


@st.cache_data(show_spinner=False, max_entries=32)
def _model_summary(run_dir: str, mtime_ns: int) -> dict[str, Any]:
    return loader.model_summary(run_dir)


def model_summary(run: Run) -> dict[str, Any]:
    return _model_summary(str(run.path), run.model_identity()["mtime_ns"])


@st.cache_data(show_spinner=False, max_entries=16)
def _augmentation_preview(path: str, config_items: tuple, seed: int, n: int, size: int) -> list[np.ndarray]:
    config = TrainConfig.from_dict(dict(config_items))
    return augment.preview(config, images.decode(path, size), n=n, seed=seed)


def augmentation_preview(
    path: str, config: TrainConfig, seed: int, n: int = 9, size: int = 224
) -> list[np.ndarray]:
    """n random augmentations of one image, made by the same Keras layers training uses."""
    keys = ("flip", "rotation", "zoom", "contrast", "translation")
    return _augmentation_preview(path, tuple((k, getattr(config, k)) for k in keys), int(seed), n, size)


def prediction_table(
    view: pd.DataFrame, root: Path | None = None, classes: list[str] | None = None
) -> pd.DataFrame:
    """The prediction table for display; thumbnails for the first THUMBNAIL_ROWS rows keep 10,000
    rows fast. With `root`, paths are shown relative to it (hosted: no server folders); classes are
    shown by their distinct readable labels among `classes` (all the run's)."""
    labels = readable_labels(
        classes if classes is not None else sorted({*view["actual"], *view["predicted"]})
    )
    head = view.head(THUMBNAIL_ROWS)
    thumbs: list[str | None] = []
    for p in head["path"]:
        try:
            thumbs.append(_thumb_url(p, Path(p).stat().st_mtime_ns))
        except OSError:
            thumbs.append("")
    thumbs += [None] * (len(view) - len(head))
    return pd.DataFrame(
        {
            "thumbnail": thumbs,
            "file": preds.file_names(view["path"]).to_numpy(),
            "actual": [labels.get(c, c) for c in view["actual"]],
            "predicted": [labels.get(c, c) for c in view["predicted"]],
            "confidence": view["confidence"].to_numpy(),
            "correct": view["correct"].to_numpy(),
            "path": preds.relative_paths(view, root).to_numpy()
            if root is not None
            else view["path"].to_numpy(),
        }
    )
