"""Evaluation: predict a run on a split (cached on disk), score it, compare runs, summarize models.

Metrics are pure numpy/pandas on class-name arrays so the page, the CLI and the report agree.
Predictions are cached next to the run (or in the cache folder for read-only runs), keyed by the
dataset's fingerprint and the model file, so reopening the page does not run the model again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib import runs
from lib.errors import ImageError, UserError

SPLITS = ("train", "validation", "test", "all")
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation"}
BATCH_SIZE = 32  # fixed: the last batch is padded, so the model's graph is traced once
PREDICTIONS_VERSION = 1  # bump when the stored predictions' columns or meaning change

# Observable counters (tests assert a cached call runs the model zero times).
STATS: dict[str, int] = {"model_batches": 0, "model_images": 0}


# ----------------------------------------------------------------------------------------------
# Metrics from arrays
# ----------------------------------------------------------------------------------------------


def confusion_matrix(actual: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Counts with rows = actual class, columns = predicted class, both in `classes` order."""
    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    cm = np.zeros((n, n), dtype=np.int64)
    a = np.asarray(actual, dtype=object)
    p = np.asarray(predicted, dtype=object)
    if a.shape != p.shape:
        raise ValueError("actual and predicted must have the same length")
    unknown = {str(x) for x in set(a.tolist()) | set(p.tolist()) if x not in index}
    if unknown:
        raise ValueError(f"labels not in classes: {sorted(unknown)}")
    ai = np.fromiter((index[x] for x in a), dtype=np.int64, count=len(a))
    pi = np.fromiter((index[x] for x in p), dtype=np.int64, count=len(p))
    np.add.at(cm, (ai, pi), 1)
    return cm


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the share of each actual class); empty rows stay 0."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def accuracy(actual: Sequence[str], predicted: Sequence[str]) -> float:
    a = np.asarray(actual, dtype=object)
    p = np.asarray(predicted, dtype=object)
    return float((a == p).mean()) if len(a) else 0.0


def per_class_metrics(cm: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (0 instead of NaN when undefined, like sklearn)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return pd.DataFrame(
        {
            "class": list(classes),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support.astype(np.int64),
            "predicted": predicted.astype(np.int64),
        }
    )


def average_metrics(per_class: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Macro and support-weighted averages of precision/recall/F1.

    Like sklearn's default labels, the macro average covers classes that occur in the split or in
    the predictions: a class absent from both (a folder holding a subset of classes) is skipped.
    """
    seen = per_class[(per_class["support"] > 0) | (per_class["predicted"] > 0)]
    total = float(per_class["support"].sum())
    out: dict[str, dict[str, float]] = {"macro": {}, "weighted": {}}
    for col in ("precision", "recall", "f1"):
        out["macro"][col] = float(seen[col].mean()) if len(seen) else 0.0
        out["weighted"][col] = (
            float((per_class[col] * per_class["support"]).sum() / total) if total > 0 else 0.0
        )
    return out


def top_k_accuracy(probs: np.ndarray, actual_index: Sequence[int], k: int) -> float:
    """Share of images whose actual class is among the k most probable."""
    probs = np.asarray(probs, dtype=np.float64)
    actual_index = np.asarray(actual_index, dtype=np.int64)
    if len(actual_index) == 0:
        return 0.0
    k = max(1, min(k, probs.shape[1]))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == actual_index[:, None]).any(axis=1).mean())


def majority_baseline(actual: Sequence[str], classes: Sequence[str] | None = None) -> dict[str, Any]:
    """What always guessing the split's most common class would score (ties: first in class order)."""
    counts = pd.Series(list(actual), dtype=object).value_counts()
    if counts.empty:
        return {"class": None, "accuracy": 0.0}
    best = int(counts.max())
    tied = [c for c in counts.index if counts[c] == best]
    if classes is not None:
        order = {c: i for i, c in enumerate(classes)}
        tied.sort(key=lambda c: order.get(c, len(order)))
    return {"class": str(tied[0]), "accuracy": best / float(counts.sum())}


def most_missed(cm: np.ndarray, classes: Sequence[str], limit: int | None = 10) -> list[dict[str, Any]]:
    """Off-diagonal cells, most frequent first: [{"actual", "predicted", "count", "text"}]."""
    cm = np.asarray(cm)
    pairs = [
        (int(cm[i, j]), i, j)
        for i in range(cm.shape[0])
        for j in range(cm.shape[1])
        if i != j and cm[i, j] > 0
    ]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    if limit is not None:
        pairs = pairs[:limit]
    return [
        {
            "actual": classes[i],
            "predicted": classes[j],
            "count": count,
            "text": f"{classes[i]} predicted as {classes[j]}: {count}",
        }
        for count, i, j in pairs
    ]


def top_k_values(n_classes: int) -> list[int]:
    """Which top-k accuracies are worth showing: only beyond 3 classes (top-3, and top-5 beyond 5)."""
    if n_classes <= 3:
        return []
    return [k for k in (3, 5) if k < n_classes]


def compute_metrics(
    actual: Sequence[str],
    predicted: Sequence[str],
    classes: Sequence[str],
    probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every number of the classic report, as a JSON-ready dict (page, CLI and report share it)."""
    classes = [str(c) for c in classes]
    cm = confusion_matrix(actual, predicted, classes)
    table = per_class_metrics(cm, classes)
    n = int(cm.sum())
    correct = int(np.trace(cm))
    metrics: dict[str, Any] = {
        "classes": classes,
        "n_images": n,
        "correct": correct,
        "incorrect": n - correct,
        "accuracy": correct / n if n else 0.0,
        "majority_baseline": majority_baseline(actual, classes),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": normalize_rows(cm).round(6).tolist(),
        "per_class": {
            row["class"]: {
                "precision": float(row["precision"]),
                "recall": float(row["recall"]),
                "f1": float(row["f1"]),
                "support": int(row["support"]),
            }
            for row in table.to_dict("records")
        },
        "most_missed": most_missed(cm, classes),
        "top_k_accuracy": {},
    }
    averages = average_metrics(table)
    metrics["macro_avg"] = averages["macro"]
    metrics["weighted_avg"] = averages["weighted"]
    if probs is not None and n:
        index = {c: i for i, c in enumerate(classes)}
        actual_index = [index[a] for a in actual]
        metrics["top_k_accuracy"] = {
            str(k): top_k_accuracy(probs, actual_index, k) for k in top_k_values(len(classes))
        }
    return metrics


def metrics_from_predictions(df: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """compute_metrics on a predictions DataFrame (as returned by predict_split, or a filtered part)."""
    prob_cols = [prob_column(c) for c in classes]
    probs = df[prob_cols].to_numpy(dtype=np.float64) if all(c in df for c in prob_cols) else None
    return compute_metrics(df["actual"].tolist(), df["predicted"].tolist(), classes, probs)


def prob_column(class_name: str) -> str:
    return f"prob_{class_name}"


# ----------------------------------------------------------------------------------------------
# Runs and datasets
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """What evaluation needs from a run folder."""

    run_dir: Path
    classes: list[str]
    image_size: int
    data_dir: str | None
    base: str
    config: dict[str, Any] = field(repr=False)

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.keras"


def read_run(run_dir: str | Path) -> RunInfo:
    """Read a run's config and check it has a model; UserError in plain words otherwise."""
    run_dir = Path(run_dir).expanduser()
    config, classes, image_size = runs.read_run_config(run_dir)
    info = RunInfo(
        run_dir=run_dir,
        classes=classes,
        image_size=image_size,
        data_dir=runs.resolve_data_dir(config.get("data_dir")),
        base=str(config.get("base", "")),
        config=config,
    )
    if not info.model_path.is_file():
        state = runs.read_status(run_dir).get("state")
        detail = f" (its state is {state})" if state not in ("finished", "unknown") else ""
        raise UserError(f"The run in {run_dir} has no saved model (model.keras){detail}.")
    return info


_model_lock = threading.Lock()
_model_cache: dict[tuple[str, int, int], Any] = {}


def _load_model(run_dir: Path) -> Any:
    """Load (and keep, keyed by file identity) the run's model through lib.runs.load_model."""
    path = run_dir / "model.keras"
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    with _model_lock:
        if key in _model_cache:
            return _model_cache[key]
        try:
            model = runs.load_model(run_dir)
        except UserError:
            raise
        except Exception as exc:  # a broken or foreign model file: say so plainly
            raise UserError(
                f"The run's model file {path} cannot be loaded ({type(exc).__name__}: {exc})."
            ) from exc
        _model_cache.clear()  # one model at a time: they can be hundreds of MB
        _model_cache[key] = model
        return model


def _normalize_split(split: str) -> str:
    """A split name, or a folder path (returned as given) when it names an existing folder."""
    name = SPLIT_ALIASES.get(str(split).strip().lower(), str(split).strip().lower())
    if name in SPLITS:
        return name
    if Path(split).expanduser().is_dir():
        return str(Path(split).expanduser())
    raise UserError(
        f"Unknown split '{split}': use train, validation, test, all, or the path of an image folder."
    )


def _dataset_fingerprint(root: Path) -> str:
    """lib.datasets.scan_key when available; otherwise a walk of image paths, sizes and mtimes."""
    try:
        from lib.datasets import scan_key
    except ImportError:
        scan_key = None
    if scan_key is not None:
        return str(scan_key(root))
    from lib.images import IMAGE_EXTENSIONS

    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            h.update(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


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


def _split_fractions(run: RunInfo) -> dict[str, float]:
    """The validation/test fractions the run was trained with, so a folder of classes splits the same way."""
    out = {}
    for key in ("val_fraction", "test_fraction"):
        value = run.config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _select_images(run: RunInfo, root: Path, split: str) -> pd.DataFrame:
    """Scan the dataset and return the usable rows to predict: columns path, split, actual."""
    from lib.datasets import scan

    is_folder = split not in SPLITS
    scan_root = Path(split) if is_folder else root
    result = scan(scan_root, **_split_fractions(run))
    data_classes = [str(c) for c in result.classes]
    if is_folder:
        if not set(data_classes) <= set(run.classes):
            raise UserError(_class_difference_message(run.classes, data_classes, f"the folder {scan_root}"))
    elif set(data_classes) != set(run.classes):
        raise UserError(_class_difference_message(run.classes, data_classes, f"the dataset {scan_root}"))
    manifest = result.manifest
    rows = manifest[manifest["usable"].astype(bool)]
    if not is_folder and split != "all":
        rows = rows[rows["split"] == split]
    if rows.empty:
        if is_folder:
            raise UserError(f"The folder {scan_root} has no usable images in class folders.")
        where = "has no usable images" if split == "all" else f"has no usable images in its {split} split"
        present = sorted(set(manifest.loc[manifest["usable"].astype(bool), "split"]))
        hint = f" (it has: {', '.join(present)})" if present else ""
        raise UserError(f"The dataset {scan_root} {where}{hint}.")
    paths = [p if os.path.isabs(str(p)) else str(scan_root / str(p)) for p in rows["path"]]
    return pd.DataFrame(
        {
            "path": paths,
            "split": "folder" if is_folder else rows["split"].astype(str).to_numpy(),
            "actual": rows["class"].astype(str).to_numpy(),
        }
    )


# ----------------------------------------------------------------------------------------------
# Predictions (cached)
# ----------------------------------------------------------------------------------------------


def _model_identity(run: RunInfo) -> dict[str, Any]:
    st = run.model_path.stat()
    return {"mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _cache_stem(run: RunInfo, root: Path, split: str) -> str:
    """File stem of stored predictions: <split>-<data folder hash>-<key of data content and model>.

    The middle part lets a newer file replace older ones for the same run, folder and split.
    """
    label = split if split in SPLITS else "folder"
    data_root = str((Path(split) if split not in SPLITS else root).resolve())
    payload = {
        "version": PREDICTIONS_VERSION,
        "data_root": data_root,
        "data": _dataset_fingerprint(Path(data_root)),
        "split": label,
        "model": _model_identity(run),
        "classes": run.classes,
        "image_size": run.image_size,
        "fractions": _split_fractions(run),
    }
    key = hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{label}-{hashlib.sha1(data_root.encode()).hexdigest()[:8]}-{key}"


def _prune_stale(directory: Path, stem: str) -> None:
    """Remove our own older predictions for the same run, data folder and split (never other files)."""
    prefix = stem.rsplit("-", 1)[0] + "-"
    for path in directory.glob(f"{prefix}*"):
        if path.stem != stem and path.suffix in (".parquet", ".csv"):
            try:
                path.unlink()
            except OSError:
                pass


def _fallback_dir(run: RunInfo) -> Path:
    """Where a read-only run's predictions and report go: cache_dir()/predictions/<run+model hash>/."""
    from lib import settings

    ident = _model_identity(run)
    key = f"{run.run_dir.resolve()}\0{ident['mtime_ns']}\0{ident['size']}"
    return settings.cache_dir() / "predictions" / hashlib.sha1(key.encode()).hexdigest()[:16]


def output_dir(run_dir: str | Path) -> Path:
    """The run folder when writable, else its cache folder: where predictions and reports go."""
    run = read_run(run_dir)
    return run.run_dir if _writable_dir_no_create(run.run_dir) else _fallback_dir(run)


def _writable_dir_no_create(path: Path) -> bool:
    return path.is_dir() and not runs.is_shipped(path) and runs.writable_dir(path)


def _read_cached(stem_paths: Iterable[Path]) -> tuple[pd.DataFrame, Path] | None:
    for stem in stem_paths:
        for suffix in (".parquet", ".csv"):
            path = stem.with_suffix(suffix)
            if not path.is_file():
                continue
            try:
                df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
            except Exception:  # a half-copied or foreign file: predict again
                continue
            return df, path
    return None


def _write_atomic_df(df: pd.DataFrame, directory: Path, stem: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import pyarrow  # noqa: F401

        suffix = ".parquet"
    except ImportError:
        suffix = ".csv"
    target = directory / f"{stem}{suffix}"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}-", suffix=suffix)
    os.close(fd)
    try:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _run_model(model: Any, paths: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities for each path (rows of undecodable files are NaN), decoding ahead in threads."""
    n = len(paths)
    chunks = [paths[i : i + BATCH_SIZE] for i in range(0, n, BATCH_SIZE)]
    out: list[np.ndarray] = []
    ok_all: list[bool] = []
    workers = max(1, min(8, os.cpu_count() or 1))

    from lib.images import decode

    def decode_chunk(pool: ThreadPoolExecutor, chunk: list[str]) -> tuple[np.ndarray, list[bool]]:
        # Images of a chunk are decoded in parallel too: Pillow releases the GIL while decoding.
        batch = np.zeros((BATCH_SIZE, size, size, 3), dtype=np.float32)
        ok = []
        for i, arr in enumerate(pool.map(lambda p: _safe_decode(decode, p, size), chunk)):
            if arr is not None:
                batch[i] = arr
            ok.append(arr is not None)
        return batch, ok

    with ThreadPoolExecutor(max_workers=workers) as inner, ThreadPoolExecutor(max_workers=1) as outer:
        pending = outer.submit(decode_chunk, inner, chunks[0]) if chunks else None
        for idx in range(len(chunks)):
            assert pending is not None
            batch, ok = pending.result()
            pending = outer.submit(decode_chunk, inner, chunks[idx + 1]) if idx + 1 < len(chunks) else None
            out_batch = model.predict_on_batch(batch)
            if isinstance(out_batch, (list, tuple)):
                out_batch = out_batch[0]
            probs = np.asarray(out_batch, dtype=np.float64)
            STATS["model_batches"] += 1
            STATS["model_images"] += len(ok)
            out.append(probs[: len(ok)])
            ok_all.extend(ok)
    probs = np.concatenate(out, axis=0) if out else np.zeros((0, 0))
    return probs, np.asarray(ok_all, dtype=bool)


def _safe_decode(decode: Any, path: str, size: int) -> np.ndarray | None:
    try:
        return decode(path, size=size)
    except ImageError:
        return None


def _predictions_frame(images: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise UserError(
            f"The run's model gives {probs.shape[-1] if probs.ndim else 0} outputs but the run has "
            f"{len(classes)} classes: the run folder looks inconsistent."
        )
    top = probs.argmax(axis=1)
    df = images.reset_index(drop=True).copy()
    df["predicted"] = np.asarray(classes, dtype=object)[top]
    df["confidence"] = probs[np.arange(len(top)), top]
    for j, c in enumerate(classes):
        df[prob_column(c)] = probs[:, j]
    df["correct"] = (df["actual"].to_numpy(dtype=object) == df["predicted"].to_numpy(dtype=object)).astype(
        bool
    )
    columns = [
        "path",
        "split",
        "actual",
        "predicted",
        "confidence",
        *(prob_column(c) for c in classes),
        "correct",
    ]
    return df[columns]


def _resolve_data_dir(run: RunInfo, data_dir: str | Path | None, split: str) -> Path:
    if split not in SPLITS:
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


def predictions_location(
    run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test"
) -> tuple[Path, Path]:
    """Where the predictions of (run, data, split) are (or would be) stored: (in-run stem, cache stem)."""
    run = read_run(run_dir)
    split = _normalize_split(split)
    root = _resolve_data_dir(run, data_dir, split)
    stem = _cache_stem(run, root, split)
    return run.run_dir / "predictions" / stem, _fallback_dir(run) / stem


def predict_split(
    run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test"
) -> pd.DataFrame:
    """Predictions of a run on a split (or an image folder), computed once and then read from disk.

    Columns: path, split, actual, predicted, confidence, prob_<class> per class, correct.
    """
    return _predict_split(run_dir, data_dir, split)[0]


def _predict_split(run_dir: str | Path, data_dir: str | Path | None, split: str) -> tuple[pd.DataFrame, Path]:
    run = read_run(run_dir)
    split = _normalize_split(split)
    root = _resolve_data_dir(run, data_dir, split)
    stem = _cache_stem(run, root, split)
    in_run = run.run_dir / "predictions" / stem
    in_cache = _fallback_dir(run) / stem
    cached = _read_cached([in_run, in_cache])
    if cached is not None:
        df, path = cached
        expected = {"path", "split", "actual", "predicted", "confidence", "correct"} | {
            prob_column(c) for c in run.classes
        }
        if expected <= set(df.columns):
            df["correct"] = df["correct"].astype(bool)
            return df, path

    images = _select_images(run, root, split)
    model = _load_model(run.run_dir)
    probs, ok = _run_model(model, images["path"].tolist(), run.image_size)
    images = images[ok].reset_index(drop=True)
    if images.empty:
        raise UserError("None of the selected images could be read any more.")
    df = _predictions_frame(images, probs[ok], run.classes)

    targets = [in_run.parent] if _writable_dir_no_create(run.run_dir) else []
    for directory in [*targets, in_cache.parent]:
        try:
            path = _write_atomic_df(df, directory, stem)
        except OSError:
            continue
        _prune_stale(directory, stem)
        return df, path
    return df, Path()  # nowhere to cache: still return the predictions


# ----------------------------------------------------------------------------------------------
# Evaluation, comparison, model summary
# ----------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """A run's predictions on one split and their metrics (classes in the run's order)."""

    predictions: pd.DataFrame
    metrics: dict[str, Any]
    classes: list[str]
    run_dir: Path | None = None
    split: str = "test"
    data_dir: Path | None = None
    predictions_file: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def evaluate(
    run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test"
) -> EvaluationResult:
    """Predict (or read cached predictions) and compute every metric of the report."""
    run = read_run(run_dir)
    df, path = _predict_split(run_dir, data_dir, split)
    norm = _normalize_split(split)
    root = _resolve_data_dir(run, data_dir, norm)
    return EvaluationResult(
        predictions=df,
        metrics=metrics_from_predictions(df, run.classes),
        classes=run.classes,
        run_dir=run.run_dir,
        split=norm,
        data_dir=root,
        predictions_file=path if str(path) not in ("", ".") else None,
        config=run.config,
    )


def compare_runs(dfs: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics side by side (one row per run) and the images (common to all runs) whose verdict differs.

    The second frame has path, actual, then predicted_<run>, confidence_<run>, correct_<run> per run.
    """
    rows = []
    for run_id, df in dfs.items():
        classes = sorted(set(df["actual"]) | set(df["predicted"]))
        prob_classes = [c[len("prob_") :] for c in df.columns if c.startswith("prob_")]
        if set(classes) <= set(prob_classes):
            classes = prob_classes
        m = compute_metrics(df["actual"].tolist(), df["predicted"].tolist(), classes)
        rows.append(
            {
                "run": run_id,
                "n_images": m["n_images"],
                "accuracy": m["accuracy"],
                "macro_precision": m["macro_avg"]["precision"],
                "macro_recall": m["macro_avg"]["recall"],
                "macro_f1": m["macro_avg"]["f1"],
                "weighted_f1": m["weighted_avg"]["f1"],
                "incorrect": m["incorrect"],
            }
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "run",
            "n_images",
            "accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "weighted_f1",
            "incorrect",
        ],
    )

    merged: pd.DataFrame | None = None
    for run_id, df in dfs.items():
        part = df[["path", "actual", "predicted", "confidence", "correct"]].drop_duplicates("path")
        part = part.rename(
            columns={
                "predicted": f"predicted_{run_id}",
                "confidence": f"confidence_{run_id}",
                "correct": f"correct_{run_id}",
            }
        )
        if merged is None:
            merged = part
        else:
            merged = merged.merge(part.drop(columns=["actual"]), on="path", how="inner")
    if merged is None or len(dfs) < 2:
        return table, pd.DataFrame(columns=["path", "actual"])
    pred_cols = [f"predicted_{r}" for r in dfs]
    differs = merged[pred_cols].astype(str).nunique(axis=1) > 1
    diff = merged[differs].reset_index(drop=True)
    order = ["path", "actual"]
    for r in dfs:
        order += [f"predicted_{r}", f"confidence_{r}", f"correct_{r}"]
    return table, diff[order]


def model_summary(run_dir: str | Path) -> dict[str, Any]:
    """Layers (top level and in total, nested bases included), parameters, and model.keras size."""
    run = read_run(run_dir)
    model = _load_model(run.run_dir)

    def count_params(weights: Iterable[Any]) -> int:
        return int(sum(int(np.prod(w.shape)) for w in weights))

    def all_layers(layer: Any) -> Iterable[Any]:
        for sub in getattr(layer, "layers", []) or []:
            yield sub
            yield from all_layers(sub)

    total = count_params(model.weights)
    trainable = count_params(model.trainable_weights)
    size = run.model_path.stat().st_size
    return {
        "name": str(getattr(model, "name", "")),
        "base": run.base,
        "layers": sum(1 for _ in all_layers(model)),
        "top_level_layers": len(getattr(model, "layers", [])),
        "parameters": total,
        "trainable_parameters": trainable,
        "non_trainable_parameters": total - trainable,
        "size_bytes": int(size),
        "size_mb": round(size / 1e6, 2),
        "input_size": run.image_size,
        "classes": len(run.classes),
    }


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def evaluate_command(args: Any) -> int:
    """`python -m lib evaluate --run RUN_DIR [--data DIR] [--split NAME]`: report + last-line JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lib.report import write_report

    split = _normalize_split(getattr(args, "split", "test") or "test")
    run = read_run(args.run)
    _resolve_data_dir(run, getattr(args, "data", None), split)  # fail fast, before loading TF
    result = evaluate(args.run, getattr(args, "data", None), split)
    paths = write_report(result)
    m = result.metrics
    base = m["majority_baseline"]
    label = split if split in SPLITS else f"folder {split}"
    print(
        f"{label}: {m['n_images']} images, {m['correct']} correct, {m['incorrect']} incorrect; "
        f"accuracy {m['accuracy']:.1%} (majority-class baseline {base['accuracy']:.1%})"
    )
    for pair in m["most_missed"][:5]:
        print(f"  {pair['text']}")
    print(f"report: {paths['html']}")
    summary = {
        "run_dir": str(result.run_dir),
        "split": split,
        "data_dir": str(result.data_dir) if result.data_dir else None,
        "n_images": m["n_images"],
        "correct": m["correct"],
        "incorrect": m["incorrect"],
        "accuracy": m["accuracy"],
        "majority_baseline": base,
        "classes": m["classes"],
        "per_class": m["per_class"],
        "macro_avg": m["macro_avg"],
        "weighted_avg": m["weighted_avg"],
        "top_k_accuracy": m["top_k_accuracy"],
        "confusion_matrix": m["confusion_matrix"],
        "most_missed": m["most_missed"],
        "report": {k: str(v) for k, v in paths.items()},
        "predictions_file": str(result.predictions_file) if result.predictions_file else None,
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 0


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
        mask &= df["path"].str.rsplit("/", n=1).str[-1].str.contains(text, case=False, regex=False)
    return df[mask]


def predictions_csv(df: pd.DataFrame, classes: Sequence[str]) -> bytes:
    """CSV of prediction rows: file, actual, predicted, confidence, correct, then each class's probability."""
    cols = ["path", "split", "actual", "predicted", "confidence", "correct"]
    cols += [prob_column(c) for c in classes if prob_column(c) in df]
    return df[[c for c in cols if c in df]].to_csv(index=False).encode("utf-8")
