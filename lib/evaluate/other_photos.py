""" "How does it handle other photos?": photos that are none of a run's classes, judged by its
unknown-photo detector, next to the real test images it would wrongly refuse at the same level.

Used by the Evaluate page and `python -m lib evaluate --unknown DIR`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from lib.errors import UserError
from lib.evaluate import foreign
from lib.evaluate.predictions import predict_split
from lib.models import loader, unknown
from lib.runs import Run
from lib.serve.inputs import Source
from lib.serve.predict import is_known, predict_images

SOURCES = {
    "examples": "Made-up pictures (noise, flat colours, screenshots)",
    "upload": "Upload photos or a zip",
    "folder": "A folder on this server",
}


def source_choices(allow_folders: bool) -> list[str]:
    return [k for k in SOURCES if k != "folder" or allow_folders]


def example_items(**counts: int) -> list[tuple[str, bytes]]:
    """The made-up foreign pictures as (name, PNG bytes), ready for check_other_photos
    (counts: n_noise, n_screens, as lib.evaluate.foreign.examples takes)."""
    out = []
    for name, pixels in foreign.examples(**counts).items():
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append((name, buf.getvalue()))
    return out


@dataclass
class OtherPhotosCheck:
    """Foreign photos caught, real images wrongly refused, and how well the scores separate them."""

    acceptance: float
    photos: pd.DataFrame  # file, verdict, unknown_score, caught (one row per readable foreign photo)
    known_scores: np.ndarray  # unknown scores of the real images of `split`
    split: str = "test"
    unreadable: int = 0

    @property
    def caught(self) -> int:
        return int(self.photos["caught"].sum()) if len(self.photos) else 0

    @property
    def wrongly_refused(self) -> int:
        return int(np.sum(self.known_scores > self.acceptance))

    @property
    def auroc(self) -> float | None:
        if len(self.photos) == 0 or len(self.known_scores) == 0:
            return None
        return unknown.auroc(self.known_scores, self.photos["unknown_score"].to_numpy(dtype=np.float64))

    def summary(self) -> dict[str, Any]:
        n, m = len(self.photos), len(self.known_scores)
        auroc = self.auroc
        return {
            "acceptance": self.acceptance,
            "other_photos": n,
            "caught": self.caught,
            "caught_share": round(self.caught / n, 4) if n else None,
            "split": self.split,
            "real_images": m,
            "wrongly_refused": self.wrongly_refused,
            "wrongly_refused_share": round(self.wrongly_refused / m, 4) if m else None,
            "auroc": None if auroc is None else round(auroc, 4),
            "unreadable": self.unreadable,
        }

    def sentence(self) -> str:
        s = self.summary()
        if not s["other_photos"]:
            return "None of these files could be read as photos."
        text = (
            f"Caught {s['caught']} of {s['other_photos']} other photos ({s['caught_share']:.0%}) as "
            f'"doesn\'t look like any of these kinds"'
        )
        if s["real_images"]:
            text += (
                f"; at the same level {s['wrongly_refused']} of {s['real_images']} real {self.split} images "
                f"({s['wrongly_refused_share']:.0%}) would be wrongly refused"
            )
        return text + "."


def check_other_photos(
    run: Run,
    items: Iterable[tuple[str, Source]],
    *,
    acceptance: float | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
) -> OtherPhotosCheck:
    """Judge the foreign photos (files, folders, zips) and the run's real `split` images at one
    acceptance level (default: the run's). UserError when the run has no detector."""
    model = loader.load(run)
    detector = model.detector
    if detector is None:
        raise UserError(
            "This run was trained before the studio could recognise photos of other things: train it "
            "again to get the unknown-photo check."
        )
    level = detector.acceptance if acceptance is None else float(acceptance)
    results = predict_images(model, items, keep_images=False, acceptance=level)
    good = [r for r in results if r.ok]
    photos = pd.DataFrame(
        {
            "file": [r.name for r in good],
            "verdict": [r.verdict for r in good],
            "unknown_score": [float(r.unknown_score or 0.0) for r in good],
            "caught": [is_known(r.unknown_score, level) is False for r in good],
        },
        columns=["file", "verdict", "unknown_score", "caught"],
    )
    try:
        real = predict_split(run, data_dir, split)
        known_scores = (
            real["unknown_score"].to_numpy(dtype=np.float64) if "unknown_score" in real else np.zeros(0)
        )
    except UserError:
        known_scores = np.zeros(0)  # the dataset isn't on this machine: foreign photos only
    return OtherPhotosCheck(
        acceptance=level,
        photos=photos,
        known_scores=known_scores,
        split=split,
        unreadable=sum(1 for r in results if not r.ok and not r.skipped),
    )
