"""The data doctor on datasets with planted problems: flips, near-copies, an outlier; small classes,
one class; the arithmetic's memory bound; the user's files never modified."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lib.doctor import findings
from lib.doctor.examine import embedding_map, examine
from tests.doctor.conftest import COPIES, OUTLIER, flipped_paths, folder_hash


@pytest.fixture(scope="module")
def report(planted, doctor_home):
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_CACHE_DIR", str(doctor_home))
    try:
        before = folder_hash(planted)
        found = examine(planted, weights="bundled")
        assert folder_hash(planted) == before, "the doctor never changes the user's files"
        yield found
    finally:
        mp.undo()


def test_planted_flips_lead_the_suspects(report):
    ranked = [r["path"] for r in report.label_issues]
    assert flipped_paths() <= set(ranked[:5]), ranked[:5]
    by_path = {r["path"]: r for r in report.label_issues}
    assert by_path["train/bean_rust/00728.jpg"]["suggested"] == "healthy"
    assert by_path["train/healthy/00383.jpg"]["given"] == "healthy"
    scores = [r["score"] for r in report.label_issues]
    assert scores == sorted(scores, reverse=True), "most suspect first"


def test_planted_near_copies_are_found_with_their_kind(report):
    pairs = {frozenset((r["a"], r["b"])): r for r in report.near_duplicates}
    kinds = {}
    for copy, original in COPIES.items():
        assert frozenset((copy, original)) in pairs, (copy, sorted(map(tuple, pairs))[:5])
        kinds[copy] = pairs[frozenset((copy, original))]["kind"]
    assert kinds == {
        "test/healthy/copy_of_00773.jpg": "across-splits",
        "train/bean_rust/copy_of_00776.jpg": "conflicting-labels",
    }
    planted = [
        r for r in report.near_duplicates if frozenset((r["a"], r["b"])) in map(frozenset, COPIES.items())
    ]
    others = [r for r in report.near_duplicates if r not in planted]
    assert len(others) <= 6, "few false pairs among 230 distinct leaves"
    assert min(p["similarity"] for p in planted) > max([o["similarity"] for o in others] or [0])


def test_the_screenshot_is_an_outlier(report):
    assert [r["path"] for r in report.outliers][:1] == [OUTLIER]


def test_the_map_shows_every_image_with_the_findings_marked(report, doctor_env):
    points = embedding_map(report)
    assert len(points) == report.images
    flags = {p["path"]: p["flag"] for p in points}
    assert all(flags[p] == "suspect" for p in flipped_paths())
    assert flags[OUTLIER] in ("outlier", "suspect")
    xy = np.array([[p["x"], p["y"]] for p in points])
    assert np.isfinite(xy).all() and xy.std(axis=0).min() > 0


def test_a_class_too_small_for_k_folds_is_named_and_still_checked(tmp_path, planted, doctor_env):
    root = tmp_path / "small"
    shutil.copytree(planted, root)
    tiny = root / "train" / "tiny"
    tiny.mkdir()
    for i, src in enumerate(sorted((root / "train" / "healthy").glob("0*.jpg"))[:3]):
        shutil.copy(src, tiny / f"t{i}.jpg")  # exact copies: left out by the scan, so three distinct images:
        (tiny / f"t{i}.jpg").write_bytes(src.read_bytes() + b"\0" * (i + 1))  # same picture, other bytes
    found = examine(root, weights="bundled")
    assert found.skipped_classes == ["tiny"]
    assert any("Tiny (3)" in n for n in found.notes), found.notes
    assert not any(r["given"] == "tiny" for r in found.label_issues)
    tiny_pairs = [r for r in found.near_duplicates if "train/tiny/" in r["a"] + r["b"]]
    assert any(r["kind"] == "conflicting-labels" for r in tiny_pairs), "duplicates still checked"


def test_one_class_only_gets_no_label_check_but_no_crash(tmp_path, planted, doctor_env):
    root = tmp_path / "one"
    shutil.copytree(planted / "train" / "healthy", root / "healthy")
    found = examine(root, weights="bundled")
    assert found.label_issues == [] and found.notes
    assert found.to_json()["images"] == len(list((root / "healthy").iterdir()))


def test_neighbours_are_the_same_in_small_blocks_and_bounded():
    rng = np.random.default_rng(0)
    z = findings.normed(rng.normal(size=(300, 16)))
    z[10] = z[20] + 0.01  # a near pair
    z = findings.normed(z)
    whole = findings.neighbours(z, threshold=0.9, block_bytes=10**9)
    small = findings.neighbours(z, threshold=0.9, block_bytes=4 * 300 * 7)  # 7 rows at a time
    assert (10, 20) in set(zip(whole.a.tolist(), whole.b.tolist(), strict=True))
    assert np.array_equal(whole.a, small.a) and np.array_equal(whole.b, small.b)
    assert np.allclose(whole.knn, small.knn)
    same = findings.normed(np.ones((50, 4)))
    capped = findings.neighbours(same, threshold=0.9, max_pairs=3)
    assert capped.capped and len(capped.a) <= 50 * 3
