"""Prediction for people: photos in, a plain-words verdict per photo out.

Every file gets its own result: a bad file becomes a result with an error sentence and the rest of
the batch goes on. Inputs are expanded by lib.serve.inputs, decoded by the one feeder and judged
by a loaded model (lib.models.loader) in batches.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lib.data.feeder import Feeder
from lib.errors import UserError
from lib.serve.inputs import Input, Source, expand
from lib.text import csv_safe, readable_label

BATCH_SIZE = 32
DEFAULT_TOP_K = 3
DEFAULT_UNSURE_THRESHOLD = 0.6
DEFAULT_MARGIN = 0.1


class Model(Protocol):
    """What prediction needs of a model: lib.models.loader.LoadedModel, or a test's stand-in."""

    classes: list[str]
    size: int

    def predict(self, pixels: np.ndarray) -> np.ndarray: ...


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
        df[col] = df[col].map(csv_safe)
    df.columns = [csv_safe(c) for c in df.columns]
    buf = io.StringIO()
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
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


def predict_images(
    model: Model,
    items: Iterable[tuple[str, Source]],
    *,
    max_pixels: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    unsure_threshold: float = DEFAULT_UNSURE_THRESHOLD,
    margin: float = DEFAULT_MARGIN,
    keep_images: bool = True,
) -> list[PredictionResult]:
    """One result per photo (zips and folders expand into their files), in input order; bad files
    don't stop the batch. `items` are (display name, bytes or path). With keep_images, each result
    carries the S x S pixels the model saw (for the page)."""
    classes = list(model.classes)
    feeder = Feeder(model.size, batch=BATCH_SIZE, max_pixels=max_pixels)
    results: list[PredictionResult] = []
    with ThreadPoolExecutor(max_workers=feeder.workers) as pool:
        for chunk in _chunks(expand(items), BATCH_SIZE):
            readable = [item for item in chunk if item.error is None]
            batch = feeder.decode_many(
                [item.source for item in readable],
                range(len(readable)),
                pool,
                [item.name for item in readable],
            )
            decoded = [k for k in range(len(readable)) if k not in batch.errors]
            probs = dict(zip(decoded, model.predict(batch.pixels[decoded]), strict=True)) if decoded else {}
            k = 0
            for item in chunk:
                if item.error is not None:
                    results.append(_error(item.name, item.error, skipped=item.skipped))
                    continue
                if k in batch.errors:
                    results.append(_error(item.name, batch.errors[k].reason))
                else:
                    image = batch.pixels[k].copy() if keep_images else None
                    results.append(
                        make_result(
                            item.name,
                            probs[k],
                            classes,
                            top_k=top_k,
                            unsure_threshold=unsure_threshold,
                            margin=margin,
                            image=image,
                        )
                    )
                k += 1
    return results


@dataclass
class KerasModel:
    """A plain Keras classifier (pixels in, probabilities out) as a prediction Model."""

    model: Any
    classes: list[str]
    size: int

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(np.asarray(pixels, dtype=np.float32)), dtype=np.float32)
