"""The doctor's arithmetic on a feature matrix (no files, no TensorFlow): suspect labels, near-
duplicate pairs, outliers and a 2-D map.

- Suspect labels: out-of-sample class probabilities by stratified K-fold logistic regression on the
  L2-normed features (averaged over a few fold shuffles, which steadies the ranking), then
  cleanlab's `find_label_issues` (confident learning), ranked most suspect first. Classes with
  fewer than K images can't be cross-validated: they are named and left out of this part only.
- Near-duplicates and outliers come from one pass over cosine similarities, block by block (memory
  ~BLOCK_BYTES whatever the dataset's size). Candidate pairs have similar centred, normed pooled
  features (DUPLICATE_SIMILARITY) and a similar colour layout (the image as 4x4 mean colours,
  LAYOUT_SIMILARITY); a candidate is a near-duplicate when the 16x16 colour thumbnails correlate
  (MATCH) at the best shift of up to one cell (a 5% crop moves the picture by about that). Pooled
  features alone rate two photos of the same kind of leaf above a half-size JPEG copy of one of
  them (they are made to ignore where things are, and they see the blur of the copy). Outliers: each image's
  distance to its nearest neighbours in a whitened space, relative to theirs (a local outlier factor).
- The map: t-SNE (scikit-learn) of at most MAP_POINTS images, the flagged ones always included.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

FOLDS = 5
SHUFFLES = 1  # fold shuffles averaged for the out-of-sample probabilities (3 gained ~0.01 P@k on beans, at 3x the time)
C = 1.0  # inverse regularisation of the logistic regression (features are L2-normed)
LR_DIMENSIONS = 256  # PCA before the regression: 20-50x faster than 1,280 dimensions, as accurate
DUPLICATE_SIMILARITY = 0.35  # candidates: cosine of the centred, normed pooled features ...
LAYOUT_SIMILARITY = 0.95  # ... and of the 4x4 colour layouts (see layout()); then
MATCH = 0.70  # the best correlation of the 16x16 colour thumbnails within a one-cell shift (see match())
WHITEN_DIMENSIONS = 128
NEIGHBOURS = 10  # an image's distance: 1 - mean similarity to this many nearest images
OUTLIER_Z = 3.0  # robust z-score (median, MAD) of the local distance ratio above which an image is an outlier
MAX_PAIRS_PER_IMAGE = 20  # near-duplicates listed per image (a folder of 1,000 copies stays bounded)
BLOCK_BYTES = 64 * 2**20  # similarity block size
MAP_POINTS = 2000


@dataclass
class LabelIssues:
    ranked: np.ndarray  # item indices, most suspect first
    suggested: np.ndarray  # class id per ranked item
    scores: np.ndarray  # 1 - cleanlab label quality, per ranked item (higher = more suspect)
    skipped: list[int] = field(default_factory=list)  # class ids too small for K folds
    probs: np.ndarray | None = None  # out-of-sample probabilities (n, classes), NaN rows skipped


def normed(x: np.ndarray, center: bool = False) -> np.ndarray:
    """Rows scaled to unit length (after removing the mean row when center); zero rows stay zero."""
    z = np.asarray(x, dtype=np.float32)
    if center:
        z = z - z.mean(axis=0, keepdims=True)
    z = np.nan_to_num(z)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norms > 0, norms, 1.0)


def similarity_space(x: np.ndarray, dimensions: int = WHITEN_DIMENSIONS, seed: int = 0) -> np.ndarray:
    """Unit rows for comparing images: centred, normed, then PCA-whitened (each component divided
    by the square root of its standard deviation) and normed again. Whitening damps what every
    photo of a dataset shares (the same kind of leaf, the same light), so a resized or re-encoded
    copy stands out from merely similar photos."""
    from sklearn.decomposition import PCA

    z = normed(x, center=True)
    d = min(dimensions, len(z) - 1, z.shape[1])
    if d < 8:
        return z
    pca = PCA(d, random_state=seed, svd_solver="randomized" if len(z) > 1000 else "full").fit(z)
    scale = np.sqrt(np.maximum(pca.explained_variance_, 1e-12)) ** 0.5
    return normed(pca.transform(z) / scale)


def reduced(z: np.ndarray, dimensions: int = LR_DIMENSIONS, seed: int = 0) -> np.ndarray:
    """The first principal components (rows re-normed), when there are more dimensions than that."""
    from sklearn.decomposition import PCA

    if z.shape[1] <= dimensions or len(z) <= dimensions:
        return z
    return normed(PCA(dimensions, random_state=seed, svd_solver="randomized").fit_transform(z))


def out_of_sample_probs(
    x: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    folds: int = FOLDS,
    shuffles: int = SHUFFLES,
    c: float = C,
    leave_out: np.ndarray | None = None,
) -> np.ndarray:
    """Class probabilities of every item from models that never saw it (K-fold, averaged over
    shuffles); `leave_out` items are predicted but never trained on."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    probs = np.zeros((len(labels), n_classes))
    for seed in range(shuffles):
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
            if leave_out is not None and len(leave_out):
                kept = train[~np.isin(train, leave_out)]
                train = kept if len(np.unique(labels[kept])) >= 2 else train
            model = LogisticRegression(C=c, max_iter=1000)
            # One BLAS thread: these small products run 20-30x slower when threads contend.
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore")
                model.fit(x[train], labels[train])
            probs[np.ix_(test, model.classes_)] += model.predict_proba(x[test])
    return probs / shuffles


def label_issues(x: np.ndarray, labels: np.ndarray, n_classes: int, *, folds: int = FOLDS) -> LabelIssues:
    """Suspect labels by confident learning (cleanlab) on K-fold out-of-sample probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    counts = np.bincount(labels, minlength=n_classes)
    skipped = [int(c) for c in np.flatnonzero(counts < folds)]
    kept_classes = np.flatnonzero(counts >= folds)
    empty = LabelIssues(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), skipped)
    if len(kept_classes) < 2:
        return empty
    rows = np.flatnonzero(np.isin(labels, kept_classes))
    remap = np.full(n_classes, -1)
    remap[kept_classes] = np.arange(len(kept_classes))
    y = remap[labels[rows]]
    z = reduced(normed(x[rows], center=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # One pass. A second one trained without the first pass's suspects (C=3) measured 0.714 ->
        # 0.738 P@k on beans on 5 seeds but 0.719 -> 0.713 on bench/doctor.py's 3: not worth 2x.
        p = out_of_sample_probs(z, y, len(kept_classes), folds=folds)
        found = find_label_issues(y, p, return_indices_ranked_by="self_confidence", n_jobs=1)
        quality = get_label_quality_scores(y, p, method="self_confidence")
    full = np.full((len(labels), n_classes), np.nan)
    full[np.ix_(rows, kept_classes)] = p
    p_other = p.copy()
    p_other[np.arange(len(y)), y] = -1  # the suggestion is the most likely *other* class
    return LabelIssues(
        ranked=rows[found],
        suggested=kept_classes[p_other[found].argmax(axis=1)],
        scores=1.0 - quality[found],
        skipped=skipped,
        probs=full,
    )


def thumbs(pixels: np.ndarray, grid: int = 16) -> np.ndarray:
    """grid x grid mean colours of square uint8 images (n, S, S, 3), float32 (n, grid, grid, 3)."""
    n, side = len(pixels), pixels.shape[1]
    cell = side // grid
    cells = pixels[:, : cell * grid, : cell * grid].astype(np.float32)
    return cells.reshape(n, grid, cell, grid, cell, 3).mean(axis=(2, 4))


def layout(thumb: np.ndarray, grid: int = 4) -> np.ndarray:
    """Colour layout descriptors from thumbs(): grid x grid mean colours, each image's mean removed,
    unit length."""
    n, side = len(thumb), thumb.shape[1]
    cell = side // grid
    cells = thumb.astype(np.float32).reshape(n, grid, cell, grid, cell, 3).mean(axis=(2, 4)).reshape(n, -1)
    return normed(cells - cells.mean(axis=1, keepdims=True))


def match(thumb: np.ndarray, a: np.ndarray, b: np.ndarray, shift: int = 1, chunk: int = 20000) -> np.ndarray:
    """For pairs (a[i], b[i]): the best correlation of their thumbnails (per-channel means removed)
    over shifts of up to `shift` cells, on the overlapping part."""
    side = thumb.shape[1]
    out = np.full(len(a), -1.0, dtype=np.float32)
    for start in range(0, len(a), chunk):
        ta = thumb[a[start : start + chunk]].astype(np.float32)
        tb = thumb[b[start : start + chunk]].astype(np.float32)
        best = np.full(len(ta), -1.0, dtype=np.float32)
        for dy in range(-shift, shift + 1):
            for dx in range(-shift, shift + 1):
                pa = ta[:, max(0, dy) : side + min(0, dy), max(0, dx) : side + min(0, dx)]
                pb = tb[:, max(0, -dy) : side + min(0, -dy), max(0, -dx) : side + min(0, -dx)]
                pa = (pa - pa.mean(axis=(1, 2), keepdims=True)).reshape(len(pa), -1)
                pb = (pb - pb.mean(axis=(1, 2), keepdims=True)).reshape(len(pb), -1)
                den = np.sqrt((pa * pa).sum(1) * (pb * pb).sum(1))
                corr = (pa * pb).sum(1) / np.where(den > 0, den, np.inf)
                best = np.maximum(best, corr)
        out[start : start + chunk] = best
    return out


@dataclass
class Neighbours:
    a: np.ndarray  # pair first items (a < b)
    b: np.ndarray
    similarity: np.ndarray
    knn: np.ndarray  # per item: mean similarity to its nearest neighbours
    nearest: np.ndarray  # per item: the indices of those neighbours (n, k)
    capped: bool = False  # some image had more near-duplicates than MAX_PAIRS_PER_IMAGE


def neighbours(
    z: np.ndarray,
    *,
    pairs_in: np.ndarray | None = None,
    layouts: np.ndarray | None = None,
    threshold: float = DUPLICATE_SIMILARITY,
    layout_threshold: float = LAYOUT_SIMILARITY,
    k: int = NEIGHBOURS,
    block_bytes: int = BLOCK_BYTES,
    max_pairs: int = MAX_PAIRS_PER_IMAGE,
) -> Neighbours:
    """Each row's nearest neighbours in z (unit rows), and the pairs whose cosine similarity in
    `pairs_in` (default z) is >= threshold and, with `layouts`, whose layout similarity is >=
    layout_threshold; from row blocks of z @ z.T, so memory stays ~block_bytes for any n."""
    pairs_in = z if pairs_in is None else pairs_in
    n = len(z)
    k = max(0, min(k, n - 1))
    block = max(1, block_bytes // (4 * max(n, 1)))
    a_parts, b_parts, s_parts = [], [], []
    knn = np.ones(n, dtype=np.float32)
    nearest = np.zeros((n, k), dtype=np.int64)
    capped = False
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = np.arange(stop - start)
        if k:
            sims = z[start:stop] @ z.T
            sims[rows, start + rows] = -np.inf
            top = np.argpartition(sims, n - k, axis=1)[:, n - k :]
            nearest[start:stop] = top
            knn[start:stop] = np.take_along_axis(sims, top, axis=1).mean(axis=1)
        sims = sims if pairs_in is z and k else pairs_in[start:stop] @ pairs_in.T
        sims[rows, start + rows] = -np.inf
        close = sims >= threshold
        if layouts is not None:
            close &= (layouts[start:stop] @ layouts.T) >= layout_threshold
        hit_r, hit_c = np.nonzero(close)
        if len(hit_r):
            s = sims[hit_r, hit_c]
            if layouts is not None:  # rank each row's candidates by layout similarity
                s_rank = np.einsum("ij,ij->i", layouts[start + hit_r], layouts[hit_c])
            else:
                s_rank = s
            order = np.lexsort((-s_rank, hit_r))  # per row, most similar first
            hit_r, hit_c, s = hit_r[order], hit_c[order], s[order]
            rank = np.arange(len(hit_r)) - np.searchsorted(hit_r, hit_r)
            capped = capped or bool((rank >= max_pairs).any())
            keep = (rank < max_pairs) & (hit_c > start + hit_r)
            a_parts.append(start + hit_r[keep])
            b_parts.append(hit_c[keep])
            s_parts.append(s[keep])
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    a, b, s = cat(a_parts, np.int64), cat(b_parts, np.int64), cat(s_parts, np.float32)
    order = np.argsort(-s, kind="stable")
    return Neighbours(a[order], b[order], s[order], knn, nearest, capped)


def outlier_scores(knn: np.ndarray, nearest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, robust z) per item. score: the image's distance to its nearest images (1 - mean
    similarity) over theirs to their own, a local outlier factor: a screenshot among leaves is far
    from every leaf, while a leaf in a sparse corner of its class has sparse neighbours too."""
    distance = 1.0 - knn.astype(np.float64)
    if len(distance) < 3 or nearest.shape[1] == 0:
        return distance, np.zeros_like(distance)
    score = distance / np.maximum(distance[nearest].mean(axis=1), 1e-6)
    median = np.median(score)
    mad = np.median(np.abs(score - median)) * 1.4826
    return score, (score - median) / max(mad, 1e-6)


def map_sample(n: int, flagged: np.ndarray, limit: int = MAP_POINTS, seed: int = 0) -> np.ndarray:
    """Which items the map shows: all of them up to `limit`, else the flagged ones and a random rest."""
    if n <= limit:
        return np.arange(n)
    flagged = np.unique(flagged)[:limit]
    rest = np.setdiff1d(np.arange(n), flagged)
    extra = np.random.default_rng(seed).choice(rest, size=limit - len(flagged), replace=False)
    return np.sort(np.concatenate([flagged, extra]))


def embed_2d(z: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D coordinates (t-SNE after PCA to 50 dimensions; PCA alone for a handful of images)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(z)
    if n < 3:
        return np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
    reduced = PCA(n_components=min(50, n - 1, z.shape[1]), random_state=seed).fit_transform(z)
    if n < 10:
        return reduced[:, :2] if reduced.shape[1] >= 2 else np.column_stack([reduced[:, 0], np.zeros(n)])
    tsne = TSNE(2, perplexity=min(30.0, (n - 1) / 3.0), init="pca", random_state=seed, max_iter=750)
    return tsne.fit_transform(reduced.astype(np.float32))
