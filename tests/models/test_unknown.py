"""lib.models.unknown on constructed data: the Gaussians, the conformal threshold, the temperature,
ECE, AUROC and the stored file (numpy only: no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from lib.models import unknown


def _clusters(n: int = 240, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative "pooled features" in three clusters (like ReLU outputs of a base)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = rng.gamma(2.0, 1.0, size=(3, d))
    x = np.abs(centres[y] + rng.normal(0, 0.4, size=(n, d)))
    return x, y


def test_ledoit_wolf_matches_the_reference_formula_on_a_known_case():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 10))
    cov, shrinkage = unknown.ledoit_wolf(x - x.mean(0))
    assert 0.0 < shrinkage < 1.0
    assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
    # More images than dimensions and a true identity covariance: strong shrinkage toward it.
    big = rng.normal(size=(2000, 10))
    cov_big, _ = unknown.ledoit_wolf(big)
    assert np.allclose(cov_big, np.eye(10), atol=0.1)


def test_distances_are_mahalanobis_distances():
    x, y = _clusters()
    g = unknown.fit_gaussians(x, y, 3)
    z = unknown.l2_normalise(x)
    means = np.stack([z[y == c].mean(0) for c in range(3)])
    cov, _ = unknown.ledoit_wolf(z - means[y])
    v = z[0] - means[1]
    assert g.distances(x[:1])[0, 1] == pytest.approx(float(v @ np.linalg.solve(cov, v)), rel=1e-6)


def test_in_distribution_accepted_at_the_stated_level_and_foreign_refused():
    x, y = _clusters(600)
    train, held = np.arange(600) % 4 != 0, np.arange(600) % 4 == 0
    det = unknown.fit(x[train], y[train], 3, [str(i) for i in np.flatnonzero(train)])
    accepted = np.mean(det.unknown_score(x[held]) <= det.acceptance)
    assert accepted >= 0.95  # 99% stated; 150 held-out images
    rng = np.random.default_rng(5)
    foreign = rng.gamma(2.0, 1.0, size=(50, x.shape[1]))  # other directions in feature space
    assert np.all(det.unknown_score(foreign) > det.acceptance)
    assert unknown.auroc(det.distance(x[held]), det.distance(foreign)) > 0.99
    # The threshold in distance agrees with the score's decision, and a lower acceptance refuses more.
    d = det.distance(x[held])
    assert np.array_equal(d > det.threshold(), det.unknown_score(x[held]) > det.acceptance)
    assert np.mean(det.unknown_score(x[held]) > 0.9) > np.mean(det.unknown_score(x[held]) > 0.99)


def test_duplicates_stay_in_one_fold():
    groups = ["a", "b", "a", "c", "b", "d", "e", "a"]
    fold = unknown.fold_of_groups(groups, 3)
    assert fold[0] == fold[2] == fold[7] and fold[1] == fold[4]


def test_temperature_lowers_nll_and_ece_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, c = 2000, 4
    labels = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), labels] += 1.5  # right ~70% of the time...
    probs = np.exp(logits * 4.0)  # ...but ~95% sure: overconfident by a temperature of 4
    probs /= probs.sum(1, keepdims=True)
    t = unknown.fit_temperature(probs, labels)
    assert 2.5 < t < 6.0
    after = unknown.calibrate(probs, t)
    assert unknown.nll(after, labels) < unknown.nll(probs, labels) - 0.1
    assert unknown.ece(after, labels) < 0.03 < unknown.ece(probs, labels)
    assert np.array_equal(after.argmax(1), probs.argmax(1))  # accuracy unchanged
    assert np.allclose(after.sum(1), 1.0)
    assert unknown.calibrate(probs, 1.0) is not None and np.allclose(unknown.calibrate(probs, 1.0), probs)


def test_few_validation_images_keep_the_temperature_at_one():
    x, y = _clusters(120)
    probs = np.full((20, 3), 0.05)
    probs[np.arange(20), y[:20]] = 0.9
    det = unknown.fit(x, y, 3, [str(i) for i in range(120)], val_probs=probs, val_labels=(y[:20] + 1) % 3)
    assert det.temperature == 1.0 and "temperature kept at 1" in det.info["temperature_note"]


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), labels] += 1.5
    probs = np.exp(logits * 4.0)  # overconfident by a temperature of 4
    return probs / probs.sum(1, keepdims=True), labels


def test_out_of_fold_probabilities_give_a_small_dataset_a_real_temperature():
    # 20 validation images alone keep T at 1; 300 out-of-fold ones (same overconfident head) fit it.
    x, y = _clusters(120)
    val_p, val_y = _overconfident(20, 1)
    oof_p, oof_y = _overconfident(300, 2)
    oof_p[:3] = np.nan  # an item no fold predicted is left out
    groups = [str(i) for i in range(120)]
    det = unknown.fit(x, y, 3, groups, val_probs=val_p, val_labels=val_y, oof_probs=oof_p, oof_labels=oof_y)
    assert 2.0 < det.temperature < 7.0
    assert det.info["temperature_source"].startswith("out-of-fold") and det.info["temperature_images"] == 317
    assert det.info["oof_ece_after"] < det.info["oof_ece_before"]
    # Measured on fresh images of the same model: NLL and ECE both fall.
    test_p, test_y = _overconfident(3000, 3)
    after = det.calibrated(test_p)
    assert unknown.nll(after, test_y) < unknown.nll(test_p, test_y) - 0.1
    assert unknown.ece(after, test_y) < 0.04 < unknown.ece(test_p, test_y)
    # Too few out-of-fold images (and validation under 50): T stays 1, as before.
    few = unknown.fit(
        x, y, 3, groups, val_probs=val_p, val_labels=val_y, oof_probs=oof_p[3:30], oof_labels=oof_y[3:30]
    )
    assert few.temperature == 1.0 and "temperature kept at 1" in few.info["temperature_note"]


def test_reliability_bins_and_auroc_edge_cases():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    r = unknown.reliability(probs, np.array([0, 1, 1]))
    assert r["images"] == 3 and sum(b["count"] for b in r["bins"]) == 3
    assert r["ece"] == pytest.approx((abs(0.9 - 1) + abs(0.8 - 0) + abs(0.7 - 1)) / 3)
    assert unknown.auroc([1, 2], [3, 4]) == 1.0 and unknown.auroc([1, 2], [1, 2]) == 0.5
    assert np.isnan(unknown.auroc([], [1.0]))


def test_saved_detector_round_trips_and_a_damaged_file_is_ignored(tmp_path):
    x, y = _clusters()
    det = unknown.fit(x, y, 3, [str(i) for i in range(len(y))])
    det.temperature = 1.7
    det.save(tmp_path / "unknown.npz")
    back = unknown.load(tmp_path / "unknown.npz")
    assert back is not None and back.temperature == 1.7 and back.acceptance == unknown.DEFAULT_ACCEPTANCE
    assert np.allclose(back.unknown_score(x[:10]), det.unknown_score(x[:10]))
    (tmp_path / "bad.npz").write_bytes(b"not a numpy file")
    assert unknown.load(tmp_path / "bad.npz") is None
    assert unknown.load(tmp_path / "missing.npz") is None


def _npz_declaring(path, **shapes):
    """An unknown.npz whose members' headers declare `shapes` (name -> (shape, dtype[, fill])). A
    member with a fill byte holds all its data (with bytes, exactly those) (zeros compress ~1000:1, so a few hundred KB hold
    hundreds of MB); without one it holds 64 bytes. What a hostile copied run could hold."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (shape, dtype, *fill) in shapes.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
                np.lib.format.write_array_header_1_0(fh, {**header, "shape": shape})
                if not fill or isinstance(fill[0], bytes):
                    fh.write(fill[0] if fill else b"\0" * 64)
                    continue
                left = int(np.prod(shape)) * np.dtype(dtype).itemsize
                chunk = bytes(fill) * (8 << 20)
                while left > 0:
                    fh.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
    return path


@pytest.mark.parametrize(
    "shapes",
    [
        # a 100,000 x 100,000 whitening matrix: 40 GB declared in a few hundred bytes
        {
            "whitening": ((100_000, 100_000), "f4"),
            "centres": ((3, 100_000), "f4"),
            "reference": ((10,), "f8"),
            "meta": ((14,), "u1"),
        },
        # 40 MB of reference distances (the bound is 2 million), really there, in ~40 KB
        {
            "whitening": ((4, 4), "f4", 0),
            "centres": ((3, 4), "f4", 0),
            "reference": ((5_000_000,), "f8", 0),
            "meta": ((14,), "u1", b'{"version": 1}'),
        },
        {
            "whitening": ((4, 4), "f4"),
            "centres": ((3, 4), "f4"),
            "reference": ((10,), "f8"),
            "meta": ((10**9,), "u1"),
        },
        {
            "whitening": ((4, 4), "O"),
            "centres": ((3, 4), "f4"),
            "reference": ((10,), "f8"),
            "meta": ((14,), "u1"),
        },
        {
            "whitening": ((4, 4, 4, 4), "f4"),
            "centres": ((3, 4), "f4"),
            "reference": ((10,), "f8"),
            "meta": ((14,), "u1"),
        },
    ],
    ids=["40-GB-whitening", "40-MB-reference", "huge-meta", "object-dtype", "wrong-rank"],
)
def test_a_detector_file_declaring_huge_or_odd_arrays_is_ignored_before_numpy_reads_it(tmp_path, shapes):
    path = _npz_declaring(tmp_path / "unknown.npz", **shapes)
    assert path.stat().st_size < 1 << 20
    assert unknown.load(path) is None
