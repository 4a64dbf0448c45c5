""" "I don't know this" and honest percentages: the unknown-photo detector and the temperature.

Numpy only (no TensorFlow), so a prediction path without TensorFlow can use it too.

The detector: the base's pooled features, L2-normalised, modelled as one Gaussian per class with a
shared covariance shrunk by Ledoit-Wolf (it stays invertible with fewer images than dimensions).
A photo's distance is its smallest Mahalanobis distance to a class centre. The threshold is
split-conformal: the distances of in-distribution images the detector did not see when it was
fitted (5-fold cross-fitting over train+validation, duplicates kept in one fold) are the reference,
and a photo's *known score* is the share of those images that look at least as unusual:

    known_score = (1 + #{reference >= distance}) / (n + 1)      (a conformal p-value, 0..1)
    unknown_score = 1 - known_score
    known  <=>  unknown_score <= acceptance   (acceptance 0.99: ~99% of real photos accepted)

So the acceptance level moves without refitting anything. The temperature divides the classifier's
logits (log-probabilities) so that "80% sure" is right about 80% of the time on validation images.
Stored in the run as unknown.npz (plain arrays, no pickles).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg import lapack

from lib import files
from lib.models import safety

FILE_NAME = "unknown.npz"
VERSION = 1
DEFAULT_ACCEPTANCE = 0.99  # share of real (validation) photos accepted; see docs/unknown.md for why 99%
ACCEPTANCE_CHOICES = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
FOLDS = 5
MIN_VAL_FOR_TEMPERATURE = 50  # fewer validation images than this: T stays 1 (a fit would be noise)
MIN_OOF_FOR_TEMPERATURE = 40  # out-of-fold images needed to fit T on them (else validation, else 1)
ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)


# ----------------------------------------------------------------------------------------------
# Features and the Gaussian model
# ----------------------------------------------------------------------------------------------


def pooled(features: np.ndarray) -> np.ndarray:
    """N x D pooled features from what a base gives (N x D vectors, or N x H x W x D maps: averaged)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1)
    return x


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = pooled(x)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ledoit_wolf(residuals: np.ndarray) -> tuple[np.ndarray, float]:
    """(shrunk covariance, shrinkage) of already-centred rows (Ledoit & Wolf 2004, as
    sklearn.covariance.ledoit_wolf with assume_centered=True)."""
    x = np.asarray(residuals, dtype=np.float64)
    n, p = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / p
    # sum((x**2).T @ (x**2)) = sum over i of |x_i|^4: O(n p) instead of a second p x p product
    beta_ = float(np.sum(np.einsum("ij,ij->i", x, x) ** 2))
    delta_ = float(np.sum(emp**2))  # = sum((X^T X)^2) / n^2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * np.trace(emp) + p * mu**2) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if beta <= 0 or delta <= 0 else beta / delta
    shrunk = (1.0 - shrinkage) * emp
    shrunk.flat[:: p + 1] += shrinkage * mu
    return shrunk, float(shrinkage)


@dataclass
class Gaussians:
    """Class centres and a whitening matrix: distance_c(x) = |x W - centre_c W|^2."""

    whitening: np.ndarray  # D x D
    centres: np.ndarray  # C x D, already whitened
    shrinkage: float = 0.0

    def distances(self, features: np.ndarray) -> np.ndarray:
        """N x C squared Mahalanobis distances of (raw pooled) features to every class centre.
        Large batches (fitting) run in float64 with BLAS; a few photos (predicting) in float32
        through einsum's own loop (~0.3 ms a photo for 1,280 features): right after an inference
        engine's threads, BLAS's threads take ~10 ms just to wake on 2 cores."""
        x = l2_normalise(features)
        if len(x) <= 64:
            x = x.astype(np.float32)
            z = np.einsum("nd,de->ne", x, self._whitening32(), optimize=False)
            diff = z[:, None, :] - self._centres32()[None, :, :]
            return np.einsum("ncd,ncd->nc", diff, diff).astype(np.float64)
        z = x @ self.whitening
        d = (z**2).sum(1)[:, None] - 2.0 * z @ self.centres.T + (self.centres**2).sum(1)[None, :]
        return np.maximum(d, 0.0)

    def _whitening32(self) -> np.ndarray:
        if getattr(self, "_w32", None) is None:
            self._w32 = np.ascontiguousarray(self.whitening, dtype=np.float32)
        return self._w32

    def _centres32(self) -> np.ndarray:
        if getattr(self, "_c32", None) is None:
            self._c32 = np.ascontiguousarray(self.centres, dtype=np.float32)
        return self._c32

    def score(self, features: np.ndarray) -> np.ndarray:
        """The smallest distance to a class centre (bigger = less like anything the model knows)."""
        if len(features) == 0:
            return np.zeros(0)
        return self.distances(features).min(axis=1)


def fit_gaussians(features: np.ndarray, labels: np.ndarray, n_classes: int) -> Gaussians:
    """Class-conditional Gaussians with one shared Ledoit-Wolf covariance (classes without images
    get no centre: a far-away one, so they are never the nearest)."""
    x = l2_normalise(features)
    y = np.asarray(labels)
    d = x.shape[1]
    means = np.zeros((n_classes, d))
    present = np.zeros(n_classes, dtype=bool)
    for c in range(n_classes):
        rows = x[y == c]
        if len(rows):
            means[c] = rows.mean(axis=0)
            present[c] = True
    residuals = x - means[y]
    if len(residuals) < 2:
        cov, shrinkage = np.eye(d) * 1e-2, 1.0
    else:
        cov, shrinkage = ledoit_wolf(residuals)
    cov.flat[:: d + 1] += max(float(np.trace(cov)) / d, 1e-12) * 1e-9  # never singular
    # cov = L L^T, so (x - m) cov^-1 (x - m)^T = |(x - m) L^-T|^2: whitening = L^-T (a Cholesky
    # factor and a triangular inverse cost a tenth of an eigendecomposition).
    factor = np.linalg.cholesky(cov)
    inverse, info = lapack.dtrtri(factor, lower=1)
    whitening = (inverse if info == 0 else np.linalg.inv(factor)).T
    centres = means @ whitening
    centres[~present] = 1e6  # never the nearest
    return Gaussians(whitening=whitening, centres=centres, shrinkage=shrinkage)


def fold_of_groups(groups: list[str] | np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per item; items sharing a group (the same photo twice) share a fold."""
    keys = np.asarray([str(g) for g in groups])
    unique, inverse = np.unique(keys, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_unique = np.empty(len(unique), dtype=np.int64)
    fold_of_unique[order] = np.arange(len(unique)) % folds
    return fold_of_unique[inverse]


def cross_fitted_scores(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    groups: list[str] | np.ndarray,
    folds: int = FOLDS,
    seed: int = 0,
) -> np.ndarray:
    """Each image's distance under Gaussians fitted without its fold: honest in-distribution
    distances even for a 225-image dataset (its validation split alone is ~30 images)."""
    n = len(labels)
    folds = max(2, min(folds, n))
    fold = fold_of_groups(groups, folds, seed)
    out = np.zeros(n)
    for k in range(folds):
        held = fold == k
        if not held.any() or held.all():
            continue
        model = fit_gaussians(features[~held], labels[~held], n_classes)
        out[held] = model.score(features[held])
    return out


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------


def logits_of(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities: the softmax's logits up to a constant per row (all temperature needs)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, 1.0))


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities with the temperature applied (T > 1 softens, T < 1 sharpens; T = 1: unchanged)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0 or abs(float(temperature) - 1.0) < 1e-12:
        return p
    z = logits_of(p) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(probs, dtype=np.float64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-30, 1.0))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the validation negative log-likelihood. The NLL is convex in
    b = 1/T, so Newton's method on b (guarded by bisection inside the allowed range) finds it."""
    z = logits_of(probs)
    y = np.asarray(labels)
    zy = z[np.arange(len(y)), y]
    lo, hi = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]

    def grad_hess(b: float) -> tuple[float, float]:
        s = b * z
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        ez = (p * z).sum(axis=1)
        var = (p * z**2).sum(axis=1) - ez**2
        return float(np.mean(ez - zy)), float(np.mean(var))

    b = 1.0
    for _ in range(100):
        g, h = grad_hess(b)
        if abs(g) < 1e-10:
            break
        if g > 0:
            hi = b
        else:
            lo = b
        step = b - g / h if h > 1e-12 else (lo + hi) / 2
        b = step if lo < step < hi else (lo + hi) / 2
        if hi - lo < 1e-9:
            break
    return float(np.clip(1.0 / b, *TEMPERATURE_RANGE))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error (top-label, equal-width bins) and the per-bin confidence and
    accuracy a reliability diagram draws."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    right = (p.argmax(axis=1) == y) if len(p) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        if count:
            c, a = float(conf[in_bin].mean()), float(right[in_bin].mean())
            ece += count / len(conf) * abs(c - a)
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": count,
                    "confidence": c,
                    "accuracy": a,
                }
            )
    return {"ece": float(ece), "bins": rows, "images": int(len(conf))}


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    return reliability(probs, labels, bins)["ece"]


def auroc(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """The chance that a random foreign photo scores higher than a random known one (ties: half)."""
    a = np.asarray(known_scores, dtype=np.float64)
    b = np.asarray(unknown_scores, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average ranks for ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(both)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    rank_sum = ranks[len(a) :].sum()
    return float((rank_sum - len(b) * (len(b) + 1) / 2.0) / (len(a) * len(b)))


# ----------------------------------------------------------------------------------------------
# What the run stores
# ----------------------------------------------------------------------------------------------


@dataclass
class Detector:
    """The run's unknown-photo detector and temperature (unknown.npz)."""

    gaussians: Gaussians
    reference: np.ndarray  # sorted cross-fitted distances of in-distribution images
    temperature: float = 1.0
    acceptance: float = DEFAULT_ACCEPTANCE
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dimensions(self) -> int:
        return int(self.gaussians.whitening.shape[0])

    def distance(self, features: np.ndarray) -> np.ndarray:
        return self.gaussians.score(features)

    def known_score_of_distance(self, distance: np.ndarray) -> np.ndarray:
        """The conformal p-value: the share of reference images at least this far from every class."""
        d = np.atleast_1d(np.asarray(distance, dtype=np.float64))
        n = len(self.reference)
        at_least = n - np.searchsorted(self.reference, d, side="left")
        return (1.0 + at_least) / (n + 1.0)

    def unknown_score(self, features: np.ndarray) -> np.ndarray:
        """0..1 per photo: above the acceptance level (e.g. 0.99) it is refused as unknown."""
        return 1.0 - self.known_score_of_distance(self.distance(features))

    def threshold(self, acceptance: float | None = None) -> float:
        """The distance above which a photo is unknown at this acceptance level."""
        a = self.acceptance if acceptance is None else float(acceptance)
        n = len(self.reference)
        # known <=> (1 + at_least) / (n + 1) >= 1 - a  <=>  at_least >= k
        k = int(np.ceil((1.0 - a) * (n + 1) - 1.0 - 1e-9))
        if k <= 0:
            return float("inf")
        return float(self.reference[n - k])

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        return calibrate(probs, self.temperature)

    def save(self, path: str | Path) -> None:
        meta = {
            "version": VERSION,
            "temperature": self.temperature,
            "acceptance": self.acceptance,
            **self.info,
        }
        with files.atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(  # the whitening matrix is triangular: half of it compresses away
                fh,
                whitening=self.gaussians.whitening.astype(np.float32),
                centres=self.gaussians.centres.astype(np.float32),
                reference=self.reference.astype(np.float64),
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            )


# What a detector file may declare (a copied run's unknown.npz is untrusted): pooled features of
# the registry's bases have at most a few thousand dimensions.
MAX_DIMENSIONS = 8192
MAX_CLASSES = 10_000
MAX_REFERENCE = 2_000_000
MAX_META_BYTES = 1 << 20
_EXPECTED = {"whitening": 2, "centres": 2, "reference": 1, "meta": 1}


def _arrays_within_bounds(path: Path) -> bool:
    """The members' shapes from their headers (lib.models.safety.npz_shapes), checked before
    numpy allocates anything: a small compressed file can't declare gigabytes."""
    shapes = safety.npz_shapes(path)
    if shapes is None or set(shapes) != set(_EXPECTED):
        return False
    if any(len(shapes[key]) != rank for key, rank in _EXPECTED.items()):
        return False
    return (
        shapes["whitening"][0] <= MAX_DIMENSIONS
        and shapes["whitening"][1] <= MAX_DIMENSIONS
        and shapes["centres"][0] <= MAX_CLASSES
        and shapes["centres"][1] <= MAX_DIMENSIONS
        and shapes["reference"][0] <= MAX_REFERENCE
        and shapes["meta"][0] <= MAX_META_BYTES
    )


def load(path: str | Path) -> Detector | None:
    """The stored detector, or None when there is none or it can't be read (the run still predicts,
    without the unknown verdict)."""
    path = Path(path)
    if not path.is_file() or not _arrays_within_bounds(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            whitening = data["whitening"].astype(np.float64)
            centres = data["centres"].astype(np.float64)
            reference = np.sort(data["reference"].astype(np.float64))
    except (OSError, KeyError, ValueError):
        return None
    if (
        int(meta.get("version", 0)) != VERSION
        or whitening.ndim != 2
        or whitening.shape[0] != whitening.shape[1]
        or centres.ndim != 2
        or centres.shape[1] != whitening.shape[1]
        or len(reference) == 0
    ):
        return None
    info = {k: v for k, v in meta.items() if k not in ("version", "temperature", "acceptance")}
    return Detector(
        gaussians=Gaussians(
            whitening=whitening, centres=centres, shrinkage=float(info.get("shrinkage", 0.0))
        ),
        reference=reference,
        temperature=float(meta.get("temperature", 1.0)),
        acceptance=float(meta.get("acceptance", DEFAULT_ACCEPTANCE)),
        info=info,
    )


def fit(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    groups: list[str] | np.ndarray,
    *,
    val_probs: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    oof_probs: np.ndarray | None = None,
    oof_labels: np.ndarray | None = None,
    seed: int = 0,
) -> Detector:
    """The detector from the in-distribution (train + validation) pooled features, with the
    temperature fitted by NLL on the out-of-fold probabilities (copies of the head, each predicting
    its held-out fold of train+validation; see lib.train.head.out_of_fold_probs) together with the
    validation probabilities, when there are at least MIN_OOF_FOR_TEMPERATURE out-of-fold images;
    otherwise on validation alone (T = 1 with fewer than MIN_VAL_FOR_TEMPERATURE images)."""
    x = pooled(features)
    y = np.asarray(labels)
    reference = np.sort(cross_fitted_scores(x, y, n_classes, groups, seed=seed))
    gaussians = fit_gaussians(x, y, n_classes)
    info: dict[str, Any] = {
        "images": int(len(y)),
        "dimensions": int(x.shape[1]),
        "shrinkage": gaussians.shrinkage,
        "folds": FOLDS,
        "method": "Mahalanobis, class-conditional Gaussians, shared Ledoit-Wolf covariance, L2-normalised pooled features",
    }
    temperature, calibration_info = choose_temperature(val_probs, val_labels, oof_probs, oof_labels, n_classes)
    info.update(calibration_info)
    return Detector(gaussians=gaussians, reference=reference, temperature=temperature, info=info)


def choose_temperature(
    val_probs: np.ndarray | None,
    val_labels: np.ndarray | None,
    oof_probs: np.ndarray | None,
    oof_labels: np.ndarray | None,
    n_classes: int,
) -> tuple[float, dict[str, Any]]:
    """The run's temperature and what unknown.npz records about it: fitted by NLL on the
    out-of-fold probabilities plus validation when there are at least MIN_OOF_FOR_TEMPERATURE
    out-of-fold images, else on validation alone (at least MIN_VAL_FOR_TEMPERATURE), else 1."""
    info: dict[str, Any] = {}
    temperature = 1.0
    has_val = val_probs is not None and val_labels is not None and len(val_labels) > 0
    if has_val:
        before = reliability(val_probs, val_labels)
        info.update(val_ece_before=before["ece"], val_nll_before=nll(val_probs, val_labels))
    if oof_probs is not None and oof_labels is not None:
        keep = np.isfinite(np.asarray(oof_probs)).all(axis=1)
        oof_p, oof_y = np.asarray(oof_probs)[keep], np.asarray(oof_labels)[keep]
    else:
        oof_p, oof_y = np.zeros((0, n_classes)), np.zeros(0, dtype=np.int64)
    if len(oof_y) >= MIN_OOF_FOR_TEMPERATURE:
        fit_p, fit_y = (
            (np.concatenate([oof_p, val_probs]), np.concatenate([oof_y, val_labels]))
            if has_val
            else (oof_p, oof_y)
        )
        temperature = fit_temperature(fit_p, fit_y)
        info.update(
            temperature_source="out-of-fold (train+validation) + validation",
            temperature_images=int(len(fit_y)),
            oof_images=int(len(oof_y)),
            oof_ece_before=ece(oof_p, oof_y),
            oof_ece_after=ece(calibrate(oof_p, temperature), oof_y),
            oof_nll_before=nll(oof_p, oof_y),
            oof_nll_after=nll(calibrate(oof_p, temperature), oof_y),
        )
    elif has_val and len(val_labels) >= MIN_VAL_FOR_TEMPERATURE:
        temperature = fit_temperature(val_probs, val_labels)
        info.update(temperature_source="validation", temperature_images=int(len(val_labels)))
    elif has_val:
        info["temperature_note"] = (
            f"{len(val_labels)} validation images (fewer than {MIN_VAL_FOR_TEMPERATURE}): temperature kept at 1"
        )
    if has_val:
        after = calibrate(val_probs, temperature)
        info.update(val_ece_after=ece(after, val_labels), val_nll_after=nll(after, val_labels))
    return temperature, info
