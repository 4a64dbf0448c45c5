"""Prediction for people: images (or a zip of them) in, a plain-words verdict per image out.

Every file gets its own result: a bad file becomes a result with an error sentence and the rest of
the batch goes on. Zips are read in memory (never written to disk) with the untrusted-input checks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
import threading
import weakref
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lib.errors import ImageError, UserError
from lib.text import readable_label

BATCH_SIZE = 32
DEFAULT_TOP_K = 3
DEFAULT_UNSURE_THRESHOLD = 0.6
DEFAULT_MARGIN = 0.1

# Zips read for prediction (in memory, member by member).
ZIP_MAX_MEMBERS = 10_000
ZIP_MAX_TOTAL_BYTES = 4 * 1024**3  # declared uncompressed total
ZIP_MAX_MEMBER_BYTES = 256 * 1024**2  # one photo; enforced while reading, whatever the header says
ARCHIVE_EXTENSIONS = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".jar", ".apk")
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "icon\r"}

Source = str | Path | bytes | bytearray


# ----------------------------------------------------------------------------------------------
# Labels and verdict texts
# ----------------------------------------------------------------------------------------------


def knows_line(classes: Sequence[str]) -> str:
    """One line saying what the model can answer, so a photo of something else isn't over-trusted."""
    labels = [readable_label(c) for c in classes]
    kinds = "kind" if len(labels) == 1 else "kinds"
    return f"This model knows {len(labels)} {kinds}: {', '.join(labels)}"


def percent(p: float) -> int:
    """A probability as a whole percentage, never "100%" (a model is never certain) nor below 0."""
    return int(min(99, max(0, round(float(p) * 100))))


def verdict_text(
    probabilities: Sequence[float],
    classes: Sequence[str],
    *,
    unsure_threshold: float = DEFAULT_UNSURE_THRESHOLD,
    margin: float = DEFAULT_MARGIN,
) -> tuple[str, bool]:
    """("Healthy — 94% sure", False) or ("Not sure: could be Bean rust or Angular leaf spot", True)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probs, kind="stable")
    top = float(probs[order[0]])
    second = float(probs[order[1]]) if len(order) > 1 else 0.0
    unsure = top < unsure_threshold or (len(order) > 1 and top - second < margin)
    first = readable_label(classes[order[0]])
    if unsure and len(order) > 1:
        return f"Not sure: could be {first} or {readable_label(classes[order[1]])}", True
    if unsure:
        return f"Not sure: maybe {first} ({percent(top)}%)", True
    return f"{first} — {percent(top)}% sure", False


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass
class PredictionResult:
    """One file's outcome: a verdict when ok, else a plain-words error (skipped = junk in a zip)."""

    name: str
    ok: bool
    error: str | None = None
    predicted: str | None = None  # class name as in the run
    label: str | None = None  # readable_label(predicted)
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)  # in class order
    top_k: list[tuple[str, float]] = field(default_factory=list)  # (class name, probability)
    unsure: bool = False
    verdict: str = ""
    skipped: bool = False
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # SxS RGB fed to the model

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (no pixels)."""
        return {
            "file": self.name,
            "ok": self.ok,
            "verdict": self.verdict,
            "predicted": self.predicted,
            "label": self.label,
            "confidence": self.confidence,
            "unsure": self.unsure,
            "probabilities": self.probabilities,
            "top_k": [{"class": c, "probability": p} for c, p in self.top_k],
            "error": self.error,
            "skipped": self.skipped,
        }


def _error(name: str, message: str, *, skipped: bool = False) -> PredictionResult:
    return PredictionResult(name=name, ok=False, error=message, skipped=skipped)


def make_result(
    name: str,
    probs: Sequence[float],
    classes: Sequence[str],
    *,
    top_k: int = DEFAULT_TOP_K,
    unsure_threshold: float = DEFAULT_UNSURE_THRESHOLD,
    margin: float = DEFAULT_MARGIN,
    image: np.ndarray | None = None,
) -> PredictionResult:
    """A result from one row of probabilities (in the run's class order)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(classes),):
        raise UserError(
            f"The model gives {p.size} outputs but the run has {len(classes)} classes: "
            "the run folder looks inconsistent."
        )
    order = np.argsort(-p, kind="stable")
    best = str(classes[order[0]])
    verdict, unsure = verdict_text(p, classes, unsure_threshold=unsure_threshold, margin=margin)
    k = max(1, min(int(top_k), len(classes)))
    return PredictionResult(
        name=name,
        ok=True,
        predicted=best,
        label=readable_label(best),
        confidence=float(p[order[0]]),
        probabilities={str(c): float(v) for c, v in zip(classes, p, strict=True)},
        top_k=[(str(classes[i]), float(p[i])) for i in order[:k]],
        unsure=unsure,
        verdict=verdict,
        image=image,
    )


def _safe_cell(value: Any) -> Any:
    """Neutralize spreadsheet formulas in user text (a file named "=HYPERLINK(...)")."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def results_frame(results: Sequence[PredictionResult], classes: Sequence[str]) -> Any:
    """A table: file, verdict, predicted, confidence, unsure, one probability column per class, error."""
    import pandas as pd

    fixed = ["file", "verdict", "predicted", "confidence", "unsure"]
    columns: dict[str, str] = {}
    for c in classes:
        col = readable_label(c)
        if col in columns.values() or col in fixed or col == "error":
            col = str(c) if str(c) not in columns.values() and str(c) not in fixed else f"p({c})"
        columns[str(c)] = col
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "file": r.name,
            "verdict": r.verdict if r.ok else ("skipped" if r.skipped else ""),
            "predicted": r.predicted or "",
            "confidence": round(r.confidence, 4) if r.confidence is not None else None,
            "unsure": bool(r.unsure) if r.ok else None,
        }
        for c, col in columns.items():
            v = r.probabilities.get(c)
            row[col] = round(v, 4) if v is not None else None
        row["error"] = r.error or ""
        rows.append(row)
    return pd.DataFrame(rows, columns=[*fixed, *columns.values(), "error"])


def results_csv(results: Sequence[PredictionResult], classes: Sequence[str]) -> bytes:
    """The results table as UTF-8 CSV (with a BOM so spreadsheet apps read accents), formula-safe."""
    df = results_frame(results, classes)
    for col in ("file", "verdict", "predicted", "error"):
        df[col] = df[col].map(_safe_cell)
    buf = io.StringIO()
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


# ----------------------------------------------------------------------------------------------
# Inputs: files, bytes, zips (in memory)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    source: Source | None = None
    error: str | None = None
    skipped: bool = False


def _is_zip_bytes(head: bytes) -> bool:
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _head(source: Source) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:4])
    with open(source, "rb") as fh:
        return fh.read(4)


def _is_junk(member: str) -> bool:
    parts = PurePosixPath(member).parts
    if any(p.lower() == "__macosx" for p in parts):
        return True
    base = parts[-1] if parts else member
    return base.lower() in JUNK_NAMES or base.startswith("._") or base.startswith(".")


def _bytes_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


def _unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if "\x00" in name:
        return "it contains a file name with a NUL character"
    mode = (info.external_attr >> 16) & 0xFFFF
    if mode and stat.S_ISLNK(mode):
        return f"it contains a link ({info.filename}), which is not allowed"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"it contains an absolute path ({info.filename}), which is not allowed"
    if ".." in PurePosixPath(name).parts:
        return f"it contains a path that leaves the archive ({info.filename}), which is not allowed"
    if not info.is_dir() and not _is_junk(name) and name.lower().endswith(ARCHIVE_EXTENSIONS):
        return f"it contains another archive ({info.filename}); unpack that one and upload its photos"
    return None


def _zip_entries(name: str, source: Source) -> Iterator[_Entry]:
    """The members of a zip as entries, read lazily in memory; one error entry when it is refused."""
    fp: Any = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else source
    try:
        zf = zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield _Entry(name, error=f"The zip file is damaged and cannot be opened ({exc}).")
        return
    with zf:
        try:
            infos = zf.infolist()
        except Exception as exc:  # a malformed central directory
            yield _Entry(name, error=f"The zip file is damaged and cannot be opened ({exc}).")
            return
        files = [i for i in infos if not i.is_dir()]
        if len(files) > ZIP_MAX_MEMBERS:
            yield _Entry(
                name, error=f"The zip file holds {len(files):,} files; the limit is {ZIP_MAX_MEMBERS:,}."
            )
            return
        total = sum(i.file_size for i in files)
        if total > ZIP_MAX_TOTAL_BYTES:
            yield _Entry(
                name,
                error=f"The zip file unpacks to {_bytes_text(total)}; the limit is {_bytes_text(ZIP_MAX_TOTAL_BYTES)}.",
            )
            return
        for info in infos:
            reason = _unsafe_member_reason(info)
            if reason:
                yield _Entry(name, error=f"The zip file was refused: {reason}.")
                return
        candidates = 0
        for info in files:
            member = info.filename.replace("\\", "/")
            label = f"{name}/{member}"
            if _is_junk(member):
                yield _Entry(label, error="Skipped: a system file, not a photo.", skipped=True)
                continue
            candidates += 1
            if info.flag_bits & 0x1:
                yield _Entry(label, error="The file is password-protected inside the zip.")
                continue
            if info.file_size > ZIP_MAX_MEMBER_BYTES:
                yield _Entry(
                    label,
                    error=f"The file is too big ({_bytes_text(info.file_size)} unpacked; "
                    f"the limit is {_bytes_text(ZIP_MAX_MEMBER_BYTES)}).",
                )
                continue
            try:
                with zf.open(info) as fh:
                    data = fh.read(ZIP_MAX_MEMBER_BYTES + 1)
            except (
                zipfile.BadZipFile,
                OSError,
                ValueError,
                EOFError,
                RuntimeError,
                NotImplementedError,
            ) as exc:
                yield _Entry(label, error=f"The file is damaged inside the zip ({exc}).")
                continue
            if len(data) > ZIP_MAX_MEMBER_BYTES:
                yield _Entry(label, error="The file is too big once unpacked (the zip's sizes are wrong).")
                continue
            if _is_zip_bytes(data[:4]):
                yield _Entry(
                    label, error="This is an archive inside the archive: nested archives are not opened."
                )
                continue
            yield _Entry(label, source=data)
        if candidates == 0:
            yield _Entry(name, error="The zip file has no photos in it.")


def _entries(items: Iterable[tuple[str, Source]]) -> Iterator[_Entry]:
    """Expand the user's items: zips (by content) into their members, paths checked to exist."""
    for name, source in items:
        name = str(name)
        if not isinstance(source, (bytes, bytearray)):
            path = Path(source)
            if not path.exists():
                yield _Entry(name, error="The file does not exist.")
                continue
            if path.is_dir():
                yield _Entry(name, error="This is a folder, not a file: give the image files (or a zip).")
                continue
            source = path
        try:
            head = _head(source)
        except OSError as exc:
            yield _Entry(name, error=f"The file cannot be read ({exc.strerror or exc}).")
            continue
        if _is_zip_bytes(head):
            yield from _zip_entries(name, source)
        else:
            yield _Entry(name, source=source)


def _decode(entry: _Entry, size: int, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    from lib.images import decode

    try:
        return decode(entry.source, size=size, max_pixels=max_pixels), None  # type: ignore[arg-type]
    except ImageError as exc:
        return None, str(exc)
    except MemoryError:
        return None, "The image is too large to open with the memory available."
    except Exception as exc:  # never a traceback for a user's file
        return None, f"The file cannot be read as an image ({type(exc).__name__})."


def _chunks(it: Iterator[_Entry], n: int) -> Iterator[list[_Entry]]:
    chunk: list[_Entry] = []
    for entry in it:
        chunk.append(entry)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ----------------------------------------------------------------------------------------------
# The predictor: a loaded run
# ----------------------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A loaded run ready to predict: its model, classes (output order) and input size."""

    model: Any
    classes: list[str]
    size: int
    run_dir: Path | None = None
    base: str = ""
    last_conv_layer: str | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    _fn: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N x classes) for N x H x W x 3 RGB 0-255 pixels (any H, W; SxS is fastest).

        A tf.function with a shape-agnostic signature, traced once: ~10x faster than an eager call
        for one image, and as fast as model.predict_on_batch without its per-call overhead.
        """
        import tensorflow as tf

        x = np.asarray(batch)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected N x H x W x 3 pixels, got shape {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self._fn is None:
            with self._lock:
                if self._fn is None:
                    model = self.model
                    self._fn = tf.function(
                        lambda t: model(t, training=False),
                        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
                    )
        out = self._fn(tf.convert_to_tensor(x, dtype=tf.float32))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out, dtype=np.float32)


def read_run_config(run_dir: str | Path) -> tuple[dict[str, Any], list[str], int]:
    """A run's config, classes (output order) and input size (lib.runs.read_run_config)."""
    from lib import runs

    return runs.read_run_config(run_dir)


def _load_keras_model(run_dir: Path) -> Any:
    """The run's model through lib.runs.load_model (allow-list checked before Keras sees it)."""
    from lib import runs

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return runs.load_model(run_dir)


def _last_conv_layer(base: str) -> str | None:
    try:
        from lib.models import REGISTRY
    except ImportError:
        return None
    record = REGISTRY.get(base) if hasattr(REGISTRY, "get") else None
    return getattr(record, "last_conv_layer", None) if record is not None else None


def load_predictor(run_dir: str | Path) -> Predictor:
    """Load a run for prediction; UserError (plain words) when the run is missing or broken."""
    run_dir = Path(run_dir).expanduser()
    config, classes, size = read_run_config(run_dir)
    try:
        model = _load_keras_model(run_dir)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"The run's model file cannot be loaded ({type(exc).__name__}: {exc}).") from exc
    outputs = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if outputs is not None and outputs != len(classes):
        raise UserError(
            f"The run's model gives {outputs} outputs but the run lists {len(classes)} classes: "
            "the run folder looks inconsistent."
        )
    base = str(config.get("base", ""))
    return Predictor(
        model=model,
        classes=classes,
        size=size,
        run_dir=run_dir,
        base=base,
        last_conv_layer=_last_conv_layer(base),
        config=config,
    )


_wrapped: weakref.WeakKeyDictionary[Any, Predictor] = weakref.WeakKeyDictionary()
_wrapped_lock = threading.Lock()


def _as_predictor(model: Any, size: int, classes: Sequence[str]) -> Predictor:
    """A Predictor as given, or one wrapping a Keras model (kept per model so its graph is traced once)."""
    if isinstance(model, Predictor):
        return model
    with _wrapped_lock:
        try:
            found = _wrapped.get(model)
        except TypeError:  # not weak-referenceable
            return Predictor(model=model, classes=list(classes), size=int(size))
        if found is None or found.classes != list(classes) or found.size != int(size):
            found = Predictor(model=model, classes=list(classes), size=int(size))
            _wrapped[model] = found
        return found


# ----------------------------------------------------------------------------------------------
# Batch prediction
# ----------------------------------------------------------------------------------------------


def predict_images(
    model: Any,
    items: Iterable[tuple[str, Source]],
    size: int,
    classes: Sequence[str],
    *,
    max_pixels: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    unsure_threshold: float = DEFAULT_UNSURE_THRESHOLD,
    margin: float = DEFAULT_MARGIN,
    keep_images: bool = True,
) -> list[PredictionResult]:
    """One result per file (zips expand into their members), in input order; bad files don't stop the batch.

    `model` is a Predictor (from load_predictor) or a Keras model. `items` are (display name, bytes
    or path). With keep_images, each result carries the SxS pixels the model saw (for the page).
    """
    if max_pixels is None:
        from lib import settings

        max_pixels = settings.max_pixels()
    predictor = _as_predictor(model, size, classes)
    classes = list(classes)
    results: list[PredictionResult] = []
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in _chunks(_entries(items), BATCH_SIZE):
            decoded = list(
                pool.map(
                    lambda e: _decode(e, size, max_pixels) if e.error is None else (None, e.error), chunk
                )
            )
            good = [i for i, (arr, _) in enumerate(decoded) if arr is not None]
            probs = (
                predictor.predict_arrays(np.stack([decoded[i][0] for i in good]).astype(np.float32))
                if good
                else None
            )
            row = {i: k for k, i in enumerate(good)}
            for i, entry in enumerate(chunk):
                arr, err = decoded[i]
                if arr is None:
                    results.append(
                        _error(entry.name, err or "The file cannot be read.", skipped=entry.skipped)
                    )
                    continue
                assert probs is not None
                results.append(
                    make_result(
                        entry.name,
                        probs[row[i]],
                        classes,
                        top_k=top_k,
                        unsure_threshold=unsure_threshold,
                        margin=margin,
                        image=arr if keep_images else None,
                    )
                )
    return results


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _cli_line(r: PredictionResult) -> str:
    if r.ok:
        extra = f" (top guess {percent(r.confidence or 0.0)}%)" if r.unsure else ""
        return f"{r.name}: {r.verdict}{extra}"
    if r.skipped:
        return f"{r.name}: skipped ({r.error})"
    return f"{r.name}: error: {r.error}"


def predict_command(args: Any) -> int:
    """`python -m lib predict --run RUN IMAGE... [--json]`: 0 when it ran (even if files failed), 2 for a bad run."""
    predictor = load_predictor(args.run)
    top_k = int(getattr(args, "top_k", None) or DEFAULT_TOP_K)
    threshold = getattr(args, "threshold", None)
    results = predict_images(
        predictor,
        [(str(p), Path(p)) for p in args.images],
        predictor.size,
        predictor.classes,
        top_k=top_k,
        unsure_threshold=DEFAULT_UNSURE_THRESHOLD if threshold is None else float(threshold),
        keep_images=False,
    )
    if getattr(args, "json", False):
        payload = {
            "run": str(predictor.run_dir),
            "classes": predictor.classes,
            "results": [r.to_dict() for r in results],
        }
        print(json.dumps(payload, ensure_ascii=False))
    else:
        for r in results:
            print(_cli_line(r))
    sys.stdout.flush()
    return 0
