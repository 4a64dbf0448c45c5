"""Prediction for people: photos in, a plain-words verdict per photo out.

Every file gets its own result: a bad file becomes a result with an error sentence and the rest of
the batch goes on. Inputs are expanded by lib.serve.inputs, decoded by the one feeder and judged
by a loaded model (lib.models.loader) in batches.
"""

from __future__ import annotations

import csv
import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lib import settings
from lib.data import images
from lib.data.feeder import Feeder
from lib.errors import ImageError, UserError
from lib.models import unknown
from lib.serve.inputs import Input, Quota, Source, expand
from lib.text import CSV_LINE_END, csv_safe, readable_labels

BATCH_SIZE = 32
DEFAULT_TOP_K = 3
DEFAULT_UNSURE_THRESHOLD = 0.6
DEFAULT_MARGIN = 0.1
DEFAULT_ACCEPTANCE = unknown.DEFAULT_ACCEPTANCE


class Model(Protocol):
    """What prediction needs of a model: lib.models.loader.LoadedModel, or a test's stand-in."""

    classes: list[str]
    size: int

    def predict(self, pixels: np.ndarray) -> np.ndarray: ...


# A Model may also have judge(pixels) -> (calibrated probabilities, unknown scores or None), as
# LoadedModel does: then photos unlike anything it knows get the third verdict.


# ----------------------------------------------------------------------------------------------
# Labels and verdict texts
# ----------------------------------------------------------------------------------------------


def knows_line(classes: Sequence[str]) -> str:
    """One line saying what the model can answer, so a photo of something else isn't over-trusted."""
    labels = list(readable_labels(classes).values())
    kinds = "kind" if len(labels) == 1 else "kinds"
    return f"This model knows {len(labels)} {kinds}: {', '.join(labels)}"


def other_photos_line(detector: unknown.Detector | None) -> str:
    """What happens to a photo of something else, after knows_line (and whether the percentages
    are calibrated: a run with too few validation images keeps the model's own)."""
    if detector is not None:
        percentages = (
            "the percentages are calibrated (80% sure is right about 80% of the time)."
            if "temperature_note" not in detector.info
            else "the percentages are the model's own (too few validation photos to calibrate them)."
        )
        return (
            'A photo of something else gets "This doesn\'t look like any of these", with the closest kind '
            f"as a hint; {percentages}"
        )
    return (
        "It can only answer with one of these, so a photo of something else will still get one of these "
        "names (this run was trained before the studio could tell; train it again to get that)."
    )


def unusual_text(unknown_score: float) -> str:
    """How unusual a refused photo is, in words, for under its verdict."""
    share = min(float(unknown_score), 0.999)
    return f"Stranger than {share:.1%} of the real photos the model was checked on.".replace(".0%", "%")


def acceptance_text(level: float) -> str:
    """How an acceptance level reads in the Options ("99%: 1 in 100 real photos refused")."""
    refused = 1.0 - float(level)
    one_in = round(1.0 / refused) if refused > 0 else 0
    return f"{level:.1%}".replace(".0%", "%") + (
        f" (about 1 in {one_in:,} real photos refused)" if one_in else ""
    )


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
    words = readable_labels(classes)
    first = words[str(classes[order[0]])]
    if unsure and len(order) > 1:
        return f"Not sure: could be {first} or {words[str(classes[order[1]])]}", True
    if unsure:
        return f"Not sure: maybe {first} ({percent(top)}%)", True
    return f"{first} — {percent(top)}% sure", False


def unknown_text(probabilities: Sequence[float], classes: Sequence[str]) -> str:
    """The third verdict: the photo looks like none of the classes; the closest one as a hint."""
    probs = np.asarray(probabilities, dtype=np.float64)
    words = readable_labels(classes)
    labels = list(words.values())
    kinds = "kind" if len(labels) == 1 else "kinds"
    closest = words[str(classes[int(np.argmax(probs))])]
    return (
        f"This doesn't look like any of the {len(labels)} {kinds} this model knows ({', '.join(labels)}). "
        f"Closest: {closest}"
    )


def is_known(unknown_score: float | None, acceptance: float = DEFAULT_ACCEPTANCE) -> bool | None:
    """Whether a photo is accepted as one of the known kinds (None: the run has no detector)."""
    if unknown_score is None:
        return None
    return bool(float(unknown_score) <= float(acceptance))


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
    label: str | None = None  # the predicted class in words (distinct among the run's classes)
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)  # in class order
    top_k: list[tuple[str, float]] = field(default_factory=list)  # (class name, probability)
    unsure: bool = False
    verdict: str = ""
    known: bool | None = None  # False: looks like none of the classes; None: the run has no detector
    unknown_score: float | None = None  # 0..1; above the acceptance level (e.g. 0.99) it is unknown
    skipped: bool = False
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # SxS RGB fed to the model
    digest: str | None = None  # sha256 of the photo's bytes (uploads), for caches keyed by content

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
            "known": self.known,
            "unknown_score": self.unknown_score,
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
    unknown_score: float | None = None,
    acceptance: float = DEFAULT_ACCEPTANCE,
) -> PredictionResult:
    """A result from one row of probabilities (in the run's class order); with an unknown score
    above the acceptance level the verdict says the photo looks like none of the classes."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(classes),):
        raise UserError(
            f"The model gives {p.size} outputs but the run has {len(classes)} classes: "
            "the run folder looks inconsistent."
        )
    order = np.argsort(-p, kind="stable")
    best = str(classes[order[0]])
    verdict, unsure = verdict_text(p, classes, unsure_threshold=unsure_threshold, margin=margin)
    known = is_known(unknown_score, acceptance)
    if known is False:
        verdict, unsure = unknown_text(p, classes), True
    k = max(1, min(int(top_k), len(classes)))
    return PredictionResult(
        name=name,
        ok=True,
        predicted=best,
        label=readable_labels(classes)[best],
        confidence=float(p[order[0]]),
        probabilities={str(c): float(v) for c, v in zip(classes, p, strict=True)},
        top_k=[(str(classes[i]), float(p[i])) for i in order[:k]],
        unsure=unsure,
        verdict=verdict,
        known=known,
        unknown_score=None if unknown_score is None else round(float(unknown_score), 4),
        image=image,
    )


def results_frame(results: Sequence[PredictionResult], classes: Sequence[str]) -> Any:
    """A table: file, verdict, predicted, confidence, unsure, one probability column per class, error."""
    import pandas as pd

    fixed = ["file", "verdict", "predicted", "confidence", "unsure", "known", "unknown_score"]
    columns: dict[str, str] = {}
    for c in classes:
        col = readable_labels(classes)[str(c)]
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
            "known": r.known if r.ok else None,
            "unknown_score": r.unknown_score if r.ok else None,
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
        df[col] = df[col].map(csv_safe)
    df.columns = [csv_safe(c) for c in df.columns]
    buf = io.StringIO()
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator=CSV_LINE_END)
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


# ----------------------------------------------------------------------------------------------
# Batch prediction
# ----------------------------------------------------------------------------------------------


def _chunks(it: Iterator[Input], n: int) -> Iterator[list[Input]]:
    chunk: list[Input] = []
    for item in it:
        chunk.append(item)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Limits:
    """What one batch may ask of the server (settings: local defaults are generous, hosted tight)."""

    files: int
    megabytes: int
    megapixels: int


def batch_limits() -> Limits:
    return Limits(settings.max_predict_files(), settings.max_predict_mb(), settings.max_predict_megapixels())


class _Seen:
    """Probabilities, pixels and unknown scores of photos already judged, by (model, content
    hash): moving a slider or opening an expander never runs the model on the same photo again."""

    def __init__(self, entries: int = 512):
        self.entries = entries
        self._items: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[np.ndarray, np.ndarray, float | None] | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(
        self, key: tuple, probs: np.ndarray, pixels: np.ndarray, unknown_score: float | None = None
    ) -> None:
        with self._lock:
            self._items[key] = (np.asarray(probs, dtype=np.float32), pixels, unknown_score)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


SEEN = _Seen()


@dataclass
class _Pending:
    item: Input
    digest: str | None = None
    result: PredictionResult | None = None


def _admit(
    pending: _Pending, model_key: tuple | None, pixels_left: list[int], max_pixels: int | None
) -> None:
    """Fill pending.result from the cache, or refuse a photo over the batch's megapixels; else
    leave it to be decoded."""
    item = pending.item
    if isinstance(item.source, (bytes, bytearray)):
        pending.digest = hashlib.sha256(item.source).hexdigest()
    if model_key is not None and pending.digest is not None and SEEN.get((model_key, pending.digest)):
        return
    try:
        px = images.header_pixels(item.source, max_pixels=max_pixels or settings.max_pixels())
    except ImageError as exc:
        pending.result = _error(item.name, exc.reason)
        return
    if px > pixels_left[0]:
        pending.result = _error(
            item.name,
            "This batch holds too many megapixels to judge at once here: send this photo in another batch.",
        )
        return
    pixels_left[0] -= px


def predict_images(
    model: Model,
    items: Iterable[tuple[str, Source]],
    *,
    max_pixels: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    unsure_threshold: float = DEFAULT_UNSURE_THRESHOLD,
    margin: float = DEFAULT_MARGIN,
    keep_images: bool = True,
    limits: Limits | None = None,
    acceptance: float = DEFAULT_ACCEPTANCE,
) -> list[PredictionResult]:
    """One result per photo (zips and folders expand into their files), in input order; bad files
    don't stop the batch. `items` are (display name, bytes or path). With keep_images, each result
    carries the S x S pixels the model saw (small: never the original). At most `limits` photos,
    megabytes and megapixels per batch (settings by default); a photo seen before by this model is
    not judged again. Percentages are the calibrated ones; with a detector, a photo whose unknown
    score is above `acceptance` gets the "looks like none of these" verdict."""
    limits = limits or batch_limits()
    classes = list(model.classes)
    model_key = getattr(model, "key", None)
    feeder = Feeder(model.size, batch=BATCH_SIZE, max_pixels=max_pixels)
    quota = Quota(files=limits.files, bytes=limits.megabytes * 1024 * 1024)
    pixels_left = [limits.megapixels * 1_000_000]
    results: list[PredictionResult] = []

    judge = getattr(model, "judge", None)

    def run_model(pixels: np.ndarray) -> tuple[np.ndarray, Any]:
        if judge is not None:
            return judge(pixels)
        return model.predict(pixels), None

    def judged(
        item: Input, probs: np.ndarray, pixels: np.ndarray, digest: str | None, score: float | None
    ) -> PredictionResult:
        result = make_result(
            item.name,
            probs,
            classes,
            top_k=top_k,
            unsure_threshold=unsure_threshold,
            margin=margin,
            image=pixels if keep_images else None,
            unknown_score=score,
            acceptance=acceptance,
        )
        result.digest = digest
        return result

    with ThreadPoolExecutor(max_workers=feeder.workers) as pool:
        for chunk in _chunks(expand(items, quota), BATCH_SIZE):
            pending = [_Pending(item) for item in chunk]
            for p in pending:
                if p.item.error is not None:
                    p.result = _error(p.item.name, p.item.error, skipped=p.item.skipped)
                else:
                    _admit(p, model_key, pixels_left, max_pixels)
            todo = []
            for p in pending:
                if p.result is None and (hit := SEEN.get((model_key, p.digest)) if model_key else None):
                    p.result = judged(p.item, hit[0], hit[1], p.digest, hit[2])
                elif p.result is None:
                    todo.append(p)
            batch = feeder.decode_many(
                [p.item.source for p in todo], range(len(todo)), pool, [p.item.name for p in todo]
            )
            decoded = [k for k in range(len(todo)) if k not in batch.errors]
            probs: dict[int, np.ndarray] = {}
            scores: dict[int, float | None] = {}
            if decoded:
                out, unknown_scores = run_model(batch.pixels[decoded])
                probs = dict(zip(decoded, out, strict=True))
                scores = {
                    k: None if unknown_scores is None else float(unknown_scores[j])
                    for j, k in enumerate(decoded)
                }
            for k, p in enumerate(todo):
                if k in batch.errors:
                    p.result = _error(p.item.name, batch.errors[k].reason)
                    continue
                pixels = batch.pixels[k].copy()
                if model_key is not None and p.digest is not None:
                    SEEN.put((model_key, p.digest), probs[k], pixels, scores[k])
                p.result = judged(p.item, probs[k], pixels, p.digest, scores[k])
            results.extend(p.result for p in pending if p.result is not None)
    return results


@dataclass
class KerasModel:
    """A plain Keras classifier (pixels in, probabilities out) as a prediction Model."""

    model: Any
    classes: list[str]
    size: int

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(np.asarray(pixels, dtype=np.float32)), dtype=np.float32)
