"""A run's predictions on a split (or a folder of class folders), computed once and kept on disk.

Predictions are stored next to the run (or in the cache for read-only runs), keyed by the dataset's
stat fingerprint and the model file, so reopening the Evaluate page runs no model. Rows hold path,
split, actual, predicted, confidence, prob_<class> per class (the model's own, before the
temperature), correct, and unknown_score when the run has an unknown-photo detector.

What the Evaluate page, its CSV, galleries and the report show are the calibrated rows
(`calibrated_predictions`: the run's temperature applied, like Predict), with the model's own
confidence kept as model_confidence; metrics and the calibration numbers use the stored rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib import files, runs
from lib.data import curation
from lib.data.feeder import Feeder
from lib.data.images import decode
from lib.data.layouts import scan_key
from lib.data.scan import Scan, load_scan
from lib.errors import UserError
from lib.evaluate.metrics import calibration, metrics_from_predictions, prob_column
from lib.models import head as dense_head
from lib.models import loader, unknown
from lib.runs import Run
from lib.text import CSV_LINE_END, csv_safe
from lib.train import features
from lib.vocab import EVAL_SPLITS, RUN_FILES, split_name

log = logging.getLogger(__name__)

BATCH_SIZE = 32  # fixed: the last batch is padded, so the model's graph is traced once
CHECKED_IMAGES = 4  # images run through the model to confirm predictions made from cached features
CACHED_TOLERANCE = 5e-3  # largest probability difference allowed there (features cached as float16)
PREDICTIONS_VERSION = 2  # bump when the stored predictions' columns or meaning change
COLUMNS_BEFORE = ["path", "split", "actual", "predicted", "confidence"]
ANOTHER_FOLDER = "another folder"
VERDICT_FILTERS = {"all": None, "correct": True, "incorrect": False}


def split_choices(allow_folders: bool) -> list[str]:
    """What the Evaluate page offers to evaluate on."""
    return ["test", "validation", "train", *([ANOTHER_FOLDER] if allow_folders else [])]


@dataclass
class EvaluationResult:
    """A run's predictions on one split and their metrics (classes in the run's order)."""

    predictions: pd.DataFrame
    metrics: dict[str, Any]
    classes: list[str]
    run: Run | None = None
    split: str = "test"
    data_dir: Path | None = None
    predictions_file: Path | None = None

    @property
    def run_dir(self) -> Path | None:
        return self.run.path if self.run is not None else None

    @property
    def config(self) -> dict[str, Any]:
        return self.run.config if self.run is not None else {}


# ----------------------------------------------------------------------------------------------
# What to predict
# ----------------------------------------------------------------------------------------------


def normalize_split(split: str) -> str:
    """A split name, or a folder path (returned as given) when it names an existing folder."""
    name = split_name(split)
    if name in EVAL_SPLITS:
        return name
    if Path(split).expanduser().is_dir():
        return str(Path(split).expanduser())
    raise UserError(
        f"Unknown split '{split}': use train, validation, test, all, or the path of an image folder."
    )


def data_root(run: Run, data_dir: str | Path | None, split: str) -> Path:
    """The folder to read: the split itself when it is a folder, else the given or recorded dataset."""
    if split not in EVAL_SPLITS:
        return Path(split)
    if data_dir is None:
        if not run.data_dir:
            raise UserError("The run does not record its dataset folder: give the data folder (--data DIR).")
        root = Path(run.data_dir).expanduser()
        if not root.is_dir():
            raise UserError(
                f"The run's dataset folder {root} is not on this machine: give the data folder (--data DIR)."
            )
        return root
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"The data folder {root} does not exist.")
    return root


def _class_difference_message(run_classes: Sequence[str], data_classes: Sequence[str], where: str) -> str:
    missing = [c for c in run_classes if c not in set(data_classes)]
    extra = [c for c in data_classes if c not in set(run_classes)]
    parts = []
    if extra:
        parts.append("not in the run: " + ", ".join(extra))
    if missing:
        parts.append("missing from the data: " + ", ".join(missing))
    return (
        f"The classes of {where} differ from the run's ({'; '.join(parts)}). "
        f"The run knows: {', '.join(run_classes)}."
    )


def _split_fractions(run: Run) -> dict[str, float]:
    """The validation/test fractions the run was trained with, so a folder of classes splits the same way."""
    out = {}
    for key in ("val_fraction", "test_fraction"):
        value = run.config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _select_images(run: Run, root: Path, split: str) -> tuple[pd.DataFrame, Scan]:
    """The usable rows of the (cached) scan to predict (columns path, split, actual), and the scan."""
    is_folder = split not in EVAL_SPLITS
    result = load_scan(root, **_split_fractions(run))  # the scan training stored: no file read again
    data_classes = [str(c) for c in result.classes]
    if is_folder:
        if not set(data_classes) <= set(run.classes):
            raise UserError(_class_difference_message(run.classes, data_classes, f"the folder {root}"))
    elif set(data_classes) != set(run.classes):
        raise UserError(_class_difference_message(run.classes, data_classes, f"the dataset {root}"))
    manifest = result.manifest
    rows = manifest[manifest["usable"].astype(bool)]
    if not is_folder and split != "all":
        rows = rows[rows["split"] == split]
    if rows.empty:
        if is_folder:
            raise UserError(f"The folder {root} has no usable images in class folders.")
        where = "has no usable images" if split == "all" else f"has no usable images in its {split} split"
        present = sorted(set(manifest.loc[manifest["usable"].astype(bool), "split"]))
        hint = f" (it has: {', '.join(present)})" if present else ""
        raise UserError(f"The dataset {root} {where}{hint}.")
    images = pd.DataFrame(
        {
            "path": [str(p) for p in rows["path"]],
            "split": "folder" if is_folder else rows["split"].astype(str).to_numpy(),
            "actual": rows["class"].astype(str).to_numpy(),
        }
    )
    return images, result


def _from_cached_features(run: Run, images: pd.DataFrame, scan: Scan) -> np.ndarray | None:
    """Probabilities (plus the unknown score column when the run has a detector) of `images` from
    the base features training (or the data doctor) cached, through the run's head.npz: no image
    decoded, no network run. None whenever that can't be trusted (no head file, a head of another
    model file, features not all cached, or the run's own model disagreeing on a few of them):
    then the images go through the model as usual."""
    head = dense_head.load(run.path / RUN_FILES["head"], loader.model_digest(run))
    if head is None or head.outputs != len(run.classes):
        return None
    try:
        found, rows = features.cached_items(run.config, scan, images["path"].tolist())
    except (UserError, OSError, ValueError, TypeError, KeyError):
        return None
    if found is None:
        return None
    feats = found.take(rows)
    feats = feats.reshape(len(feats), -1)
    if feats.shape[1] != head.dims:
        return None
    probs = head(feats)
    if not _agrees_with_model(run, images, probs):
        return None
    detector = unknown.load(run.unknown_path)
    if detector is not None:
        probs = np.concatenate([probs, detector.unknown_score(feats)[:, None].astype(np.float32)], axis=1)
    return probs


def _agrees_with_model(run: Run, images: pd.DataFrame, probs: np.ndarray) -> bool:
    """The run's model on a few of the images (spread over the list) gives the probabilities the
    cached features gave, within CACHED_TOLERANCE (features are stored as float16)."""
    model = loader.load(run)
    picks = np.unique(np.linspace(0, len(images) - 1, min(len(images), CHECKED_IMAGES)).astype(int))
    try:
        pixels = np.stack([decode(images["path"].iloc[i], model.size) for i in picks])
    except (UserError, OSError):
        return False
    diff = float(np.max(np.abs(model.predict(pixels) - probs[picks])))
    if diff > CACHED_TOLERANCE:
        log.warning(
            "cached features of run %s disagree with its model (%.1e): predicting the images", run.id, diff
        )
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Stored predictions
# ----------------------------------------------------------------------------------------------


def _cache_stem(run: Run, root: Path, split: str) -> str:
    """File stem of stored predictions: <split>-<data folder hash>-<key of data content and model>.

    The middle part lets a newer file replace older ones for the same run, folder and split.
    """
    label = split if split in EVAL_SPLITS else "folder"
    root_text = str(root.resolve())
    payload = {
        "version": PREDICTIONS_VERSION,
        "data_root": root_text,
        "data": scan_key(root),
        "curation": curation.fingerprint(root),
        "split": label,
        "model": run.model_identity(),
        "classes": run.classes,
        "image_size": run.image_size,
        "fractions": _split_fractions(run),
    }
    key = hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{label}-{hashlib.sha1(root_text.encode()).hexdigest()[:8]}-{key}"


def _prune_stale(directory: Path, stem: str) -> None:
    """Remove our own older predictions for the same run, data folder and split (never other files)."""
    prefix = stem.rsplit("-", 1)[0] + "-"
    for path in directory.glob(f"{prefix}*"):
        if path.stem != stem and path.suffix == ".parquet":
            path.unlink(missing_ok=True)


def _read_stored(path: Path, classes: Sequence[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_parquet(path)
    except Exception:  # noqa: BLE001 - a half-copied or foreign file: predict again
        return None
    expected = {*COLUMNS_BEFORE, "correct"} | {prob_column(c) for c in classes}
    if not expected <= set(df.columns):
        return None
    df["correct"] = df["correct"].astype(bool)
    return df


def predictions_location(
    run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test"
) -> Path:
    """Where the predictions of (run, data, split) are (or would be) stored."""
    run = runs.open_run(run_dir)
    split = normalize_split(split)
    return (
        run.output_dir("predictions") / f"{_cache_stem(run, data_root(run, data_dir, split), split)}.parquet"
    )


def _predictions_frame(images: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise UserError(
            f"The run's model gives {probs.shape[-1] if probs.ndim else 0} outputs but the run has "
            f"{len(classes)} classes: the run folder looks inconsistent."
        )
    top = probs.argmax(axis=1)
    df = images.reset_index(drop=True).copy()
    df["predicted"] = np.asarray(classes, dtype=object)[top]
    df["confidence"] = probs[np.arange(len(top)), top].astype(np.float64)
    for j, c in enumerate(classes):
        df[prob_column(c)] = probs[:, j].astype(np.float64)
    df["correct"] = (df["actual"].to_numpy(dtype=object) == df["predicted"].to_numpy(dtype=object)).astype(
        bool
    )
    return df[[*COLUMNS_BEFORE, *(prob_column(c) for c in classes), "correct"]]


def predict_split(
    run_dir: str | Path | Run, data_dir: str | Path | None = None, split: str = "test"
) -> pd.DataFrame:
    """Predictions of a run on a split (or an image folder), computed once and then read from disk."""
    return _predict_split(run_dir, data_dir, split)[0]


def _predict_split(
    run_dir: str | Path | Run, data_dir: str | Path | None, split: str
) -> tuple[pd.DataFrame, Path | None]:
    run = run_dir if isinstance(run_dir, Run) else runs.open_run(run_dir)
    split = normalize_split(split)
    root = data_root(run, data_dir, split)
    stem = _cache_stem(run, root, split)
    where = run.output_dir("predictions")
    stored = _read_stored(where / f"{stem}.parquet", run.classes)
    if stored is not None:
        return stored, where / f"{stem}.parquet"

    images, scan = _select_images(run, root, split)
    probs = _from_cached_features(run, images, scan)
    failed: list[int] = []
    if probs is None:
        model = loader.load(run)
        detector = model.detector
        feeder = Feeder(model.size, batch=BATCH_SIZE)
        if detector is None:
            probs, failed = feeder.run(images["path"].tolist(), model.predict)
        else:

            def with_scores(pixels: np.ndarray) -> np.ndarray:
                raw, feats = model.predict_with_features(pixels)
                return np.concatenate(
                    [raw, detector.unknown_score(feats)[:, None].astype(np.float32)], axis=1
                )

            probs, failed = feeder.run(images["path"].tolist(), with_scores)
    ok = np.ones(len(images), dtype=bool)
    ok[list(failed)] = False
    images = images[ok].reset_index(drop=True)
    if images.empty:
        raise UserError("None of the selected images could be read any more.")
    probs = probs[ok]
    df = _predictions_frame(images, probs[:, : len(run.classes)], run.classes)
    if probs.shape[1] > len(run.classes):  # the unknown-photo detector's score follows
        df["unknown_score"] = probs[:, len(run.classes)].astype(np.float64)
    try:
        with files.atomic_path(where / f"{stem}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    except OSError:
        return df, None  # nowhere to store them: still return the predictions
    _prune_stale(where, stem)
    return df, where / f"{stem}.parquet"


def calibrated_predictions(
    df: pd.DataFrame, classes: Sequence[str], temperature: float | None
) -> pd.DataFrame:
    """The stored rows with the run's temperature applied to confidence and every prob_<class>
    (the percentages Predict shows; the predicted class can't change), plus model_confidence (the
    model's own). Unchanged rows (a copy) without a temperature or with T = 1."""
    out = df.copy()
    cols = [prob_column(c) for c in classes]
    if temperature is None or abs(float(temperature) - 1.0) < 1e-12 or out.empty or not set(cols) <= set(out):
        return out
    probs = unknown.calibrate(out[cols].to_numpy(dtype=np.float64), float(temperature))
    out["model_confidence"] = out["confidence"].astype(np.float64)
    out[cols] = probs
    out["confidence"] = probs.max(axis=1)
    return out


def evaluate(
    run_dir: str | Path | Run, data_dir: str | Path | None = None, split: str = "test"
) -> EvaluationResult:
    """Predict (or read stored predictions) and compute every metric of the report."""
    run = run_dir if isinstance(run_dir, Run) else runs.open_run(run_dir)
    df, path = _predict_split(run, data_dir, split)
    norm = normalize_split(split)
    metrics = metrics_from_predictions(df, run.classes)
    detector = unknown.load(run.unknown_path)
    if detector is not None:
        metrics["calibration"] = calibration(df, run.classes, detector.temperature)
    return EvaluationResult(
        predictions=calibrated_predictions(df, run.classes, detector.temperature if detector else None),
        metrics=metrics,
        classes=run.classes,
        run=run,
        split=norm,
        data_dir=data_root(run, data_dir, norm),
        predictions_file=path,
    )


# ----------------------------------------------------------------------------------------------
# Looking at predictions
# ----------------------------------------------------------------------------------------------


def filter_predictions(
    df: pd.DataFrame,
    *,
    actual: Sequence[str] = (),
    predicted: Sequence[str] = (),
    correct: bool | None = None,
    confidence: tuple[float, float] = (0.0, 1.0),
    text: str = "",
) -> pd.DataFrame:
    """The rows a user asked for on the Evaluate page (empty selections mean 'any')."""
    mask = pd.Series(True, index=df.index)
    if actual:
        mask &= df["actual"].isin(list(actual))
    if predicted:
        mask &= df["predicted"].isin(list(predicted))
    if correct is not None:
        mask &= df["correct"] == correct
    lo, hi = confidence
    if lo > 0.0 or hi < 1.0:
        mask &= df["confidence"].between(lo, hi)
    if text:
        mask &= file_names(df["path"]).str.contains(text, case=False, regex=False)
    return df[mask]


def file_names(paths: pd.Series) -> pd.Series:
    """The file name part of each path."""
    return paths.astype(str).str.rsplit("/", n=1).str[-1]


def confident_mistakes(df: pd.DataFrame, limit: int | None = 12) -> pd.DataFrame:
    """Wrong predictions, most confident first (ties broken by path for a stable order)."""
    wrong = df[~df["correct"].astype(bool)]
    ordered = wrong.sort_values(["confidence", "path"], ascending=[False, True], kind="stable")
    return ordered if limit is None else ordered.head(limit)


def relative_paths(df: pd.DataFrame, root: Path | None) -> pd.Series:
    """Paths relative to the dataset root (what leaves a hosted server: never its folders)."""
    if root is None:
        return file_names(df["path"])
    base = str(Path(root).resolve()) + os.sep
    return df["path"].astype(str).map(lambda p: p[len(base) :] if p.startswith(base) else os.path.basename(p))


def predictions_csv(df: pd.DataFrame, classes: Sequence[str], *, root: Path | None = None) -> bytes:
    """CSV of prediction rows: path, split, actual, predicted, confidence, correct, each class's
    probability (calibrated rows: also model_confidence, the model's own); formula-safe. With
    `root`, paths are relative to it."""
    cols = ["path", "split", "actual", "predicted", "confidence", "model_confidence", "correct"]
    cols += [prob_column(c) for c in classes if prob_column(c) in df]
    out = df[[c for c in cols if c in df]].copy()
    if root is not None:
        out["path"] = relative_paths(df, root).to_numpy()
    for col in ("path", "actual", "predicted", "split"):
        if col in out:
            out[col] = out[col].map(csv_safe)
    out.columns = [csv_safe(c) for c in out.columns]
    return out.to_csv(index=False, lineterminator=CSV_LINE_END).encode("utf-8")
