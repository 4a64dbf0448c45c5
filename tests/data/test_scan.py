"""lib.data.scan and layouts/splits: layouts, content-hash splits, every problem kind, the scan CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib import vocab
from lib.data import layouts
from lib.data import scan as scanning
from lib.errors import UserError
from lib.text import readable_label

ROOT = Path(__file__).resolve().parents[2]
RED, GREEN, BLUE = (200, 40, 40), (40, 180, 60), (40, 60, 200)


def rows(scan: scanning.Scan) -> dict[str, dict]:
    return {r["relpath"]: r for r in scan.manifest.to_dict("records")}


def problem(scan: scanning.Scan, kind: str) -> scanning.Problem:
    found = [p for p in scan.problems if p.kind == kind]
    assert found, f"no {kind} problem in {[p.kind for p in scan.problems]}"
    return found[0]


def split_of(scan: scanning.Scan) -> dict[str, str]:
    return dict(zip(scan.manifest["relpath"], scan.manifest["split"], strict=True))


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def test_class_folders_are_split_70_15_15(tmp_path, fill):
    for cls in ("red", "green", "blue"):
        fill(tmp_path / cls, 60)
    s = scanning.scan(tmp_path)
    assert s.layout == "class_folders"
    assert s.classes == ["blue", "green", "red"]
    assert s.problems == []
    counts = scanning.class_counts(s)
    assert list(counts.columns) == ["train", "validation", "test", "total"]
    assert counts["total"].tolist() == [60, 60, 60]
    shares = counts[["train", "validation", "test"]].sum() / 180
    assert (
        0.55 < shares["train"] < 0.85 and 0.05 < shares["validation"] < 0.25 and 0.05 < shares["test"] < 0.25
    )
    assert (counts["validation"] >= 1).all() and (counts["test"] >= 1).all()
    assert "70% train, 15% validation, 15% test" in s.layout_text


def test_fractions_are_configurable(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / cls, 60)
    s = scanning.scan(tmp_path, val_fraction=0.3, test_fraction=0.0)
    counts = scanning.class_counts(s)
    assert counts["test"].sum() == 0
    assert s.problems == []  # no test split was asked for, so none is missing
    assert 20 < counts["validation"].sum() < 55
    with pytest.raises(UserError):
        scanning.scan(tmp_path, val_fraction=0.6, test_fraction=0.5)


@pytest.mark.parametrize("val_name", ["validation", "val", "valid", "Validation"])
def test_split_folders_are_kept(tmp_path, fill, val_name):
    for split in ("train", val_name, "test"):
        for cls in ("red", "green"):
            fill(tmp_path / split / cls, 4)
    s = scanning.scan(tmp_path)
    assert s.layout == "splits"
    assert s.classes == ["green", "red"]
    for rel, split in split_of(s).items():
        folder = rel.split("/")[0].lower()
        assert split == vocab.SPLIT_FOLDERS[folder]
    assert scanning.class_counts(s)[["train", "validation", "test"]].to_numpy().tolist() == [[4, 4, 4]] * 2


def test_train_and_test_carve_validation_from_train(tmp_path, fill):
    for cls in ("red", "green", "blue"):
        fill(tmp_path / "train" / cls, 50)
        fill(tmp_path / "test" / cls, 10, start=500)
    s = scanning.scan(tmp_path)
    assert s.layout == "train_test"
    splits = split_of(s)
    assert all(v == "test" for k, v in splits.items() if k.startswith("test/"))
    from_train = [v for k, v in splits.items() if k.startswith("train/")]
    assert set(from_train) == {"train", "validation"}
    assert 0.05 < from_train.count("validation") / len(from_train) < 0.3
    assert (scanning.class_counts(s)["validation"] >= 1).all()


def test_train_and_validation_carve_test_from_validation(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / "train" / cls, 20)
        fill(tmp_path / "validation" / cls, 50, start=500)
    s = scanning.scan(tmp_path)
    assert s.layout == "train_validation"
    splits = split_of(s)
    assert all(v == "train" for k, v in splits.items() if k.startswith("train/"))
    from_val = [v for k, v in splits.items() if k.startswith("validation/")]
    assert set(from_val) == {"validation", "test"}
    assert 0.08 < from_val.count("test") / len(from_val) < 0.35  # one fifth, by hash


def test_train_validation_never_carves_the_last_validation_image(tmp_path, fill):
    for cls in ("red", "green", "blue"):
        fill(tmp_path / "train" / cls, 5)
        fill(tmp_path / "val" / cls, 1, start=700)
    s = scanning.scan(tmp_path)
    assert (scanning.class_counts(s)["validation"] == 1).all()


def test_train_folder_only_is_split_by_the_app(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / "train" / cls, 40)
    s = scanning.scan(tmp_path)
    assert s.layout == "train_only"
    assert set(s.manifest["split"]) == {"train", "validation", "test"}


def test_lone_top_folder_is_stepped_into(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / "wrapper" / "inner" / "train" / cls, 3)
        fill(tmp_path / "wrapper" / "inner" / "validation" / cls, 3, start=50)
    s = scanning.scan(tmp_path)
    assert s.root == (tmp_path / "wrapper" / "inner").resolve()
    assert s.layout == "train_validation"


def test_validation_without_train_is_a_clear_error(tmp_path, fill):
    fill(tmp_path / "val" / "red", 3)
    fill(tmp_path / "test" / "red", 3, start=10)
    with pytest.raises(UserError, match="no train folder"):
        scanning.scan(tmp_path)


def test_readable_label():
    assert readable_label("bean_rust") == "Bean rust"
    assert readable_label("angular-leaf__spot") == "Angular leaf spot"
    assert readable_label("cats") == "Cats"


# ----------------------------------------------------------------------------------------------
# Splits: stable, content-based, every class validated
# ----------------------------------------------------------------------------------------------


def test_adding_or_removing_files_never_moves_the_others(tmp_path, fill, img):
    for cls in ("red", "green"):
        fill(tmp_path / cls, 40)
    before = split_of(scanning.scan(tmp_path))
    for i in range(8):
        img(tmp_path / "red" / f"new_{i}.png", seed=90_000 + i)
    after = split_of(scanning.scan(tmp_path))
    assert {k: after[k] for k in before} == before
    assert any(k.startswith("red/new_") for k in after)
    (tmp_path / "green" / "0003.png").unlink()
    del before["green/0003.png"]
    assert {k: v for k, v in split_of(scanning.scan(tmp_path)).items() if k in before} == before


def test_split_follows_content_not_name(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / cls, 30)
    first = rows(scanning.scan(tmp_path))
    (tmp_path / "red" / "0005.png").rename(tmp_path / "red" / "renamed.png")
    second = rows(scanning.scan(tmp_path))
    assert second["red/renamed.png"]["split"] == first["red/0005.png"]["split"]


def test_identical_files_land_in_the_same_split(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / cls, 30)
    for i in range(10):
        shutil.copyfile(tmp_path / "red" / f"{i:04d}.png", tmp_path / "red" / f"copy_{i}.png")
        shutil.copyfile(tmp_path / "red" / f"{i:04d}.png", tmp_path / "green" / f"stray_{i}.png")
    r = rows(scanning.scan(tmp_path))
    for i in range(10):
        assert r[f"red/copy_{i}.png"]["split"] == r[f"red/{i:04d}.png"]["split"]
        assert r[f"green/stray_{i}.png"]["split"] == r[f"red/{i:04d}.png"]["split"]


def test_every_class_with_two_images_gets_validation_and_train(tmp_path, fill):
    sizes = {f"class_{n:02d}": n for n in range(1, 13)}
    for name, n in sizes.items():
        fill(tmp_path / name, n)
    s = scanning.scan(tmp_path)
    counts = scanning.class_counts(s)
    for name, n in sizes.items():
        assert counts.at[name, "total"] == n
        assert counts.at[name, "train"] >= 1, name
        if n >= 2:
            assert counts.at[name, "validation"] >= 1, name
    assert problem(s, "missing_split")  # the 1-image class can't be validated


def test_small_train_folders_still_get_validation(tmp_path, fill):
    for n, cls in enumerate(("a", "b", "c", "d"), start=2):
        fill(tmp_path / "train" / cls, n)
        fill(tmp_path / "test" / cls, 2, start=100)
    counts = scanning.class_counts(scanning.scan(tmp_path))
    assert (counts["validation"] >= 1).all() and (counts["train"] >= 1).all()
    assert (counts["test"] == 2).all()


# ----------------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def messy(tmp_path, fill, img):
    """A class-folder dataset with one of every file-level problem."""
    for cls in ("red", "green"):
        fill(tmp_path / cls, 12)
    (tmp_path / "red" / "empty.jpg").write_bytes(b"")
    (tmp_path / "red" / "notes.jpg").write_text("this is not a picture")
    (tmp_path / "red" / "labels.txt").write_text("red")
    full = io.BytesIO()
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(full, "JPEG", quality=95)
    (tmp_path / "green" / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    img(tmp_path / "green" / "tiny.png", seed=5, size=(100, 20))
    shutil.copyfile(tmp_path / "red" / "0001.png", tmp_path / "red" / "0001 copy.png")
    shutil.copyfile(tmp_path / "red" / "0002.png", tmp_path / "green" / "mislabelled.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "red" / "Thumbs.db").write_bytes(b"xx")
    (tmp_path / "red" / "._0003.png").write_bytes(b"\0\5\26\7")
    (tmp_path / "__MACOSX" / "red").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "red" / "._0004.png").write_bytes(b"\0\5\26\7")
    (tmp_path / "empty_class").mkdir()
    img(tmp_path / "loose.png", seed=77)
    (tmp_path / "README.md").write_text("docs next to the class folders are ignored")
    return tmp_path


@pytest.mark.parametrize(
    ("kind", "files"),
    [
        ("empty_file", {"red/empty.jpg"}),
        ("unreadable", {"red/notes.jpg", "red/labels.txt"}),
        ("truncated", {"green/truncated.jpg"}),
        ("too_small", {"green/tiny.png"}),
        ("duplicate", {"red/0001.png", "red/0001 copy.png"}),
        ("conflicting_labels", {"red/0002.png", "green/mislabelled.png"}),
        ("hidden", {".DS_Store", "red/Thumbs.db", "red/._0003.png", "__MACOSX/"}),
        ("empty_class", {"empty_class"}),
        ("outside_class", {"loose.png"}),
    ],
)
def test_each_problem_is_reported_and_its_files_left_out(messy, kind, files):
    s = scanning.scan(messy)
    p = problem(s, kind)
    assert set(p.files) == files
    assert p.message and "\n" not in p.message
    r = rows(s)
    for f in files - {"__MACOSX/", "empty_class"}:
        assert r[f]["usable"] == (kind == "duplicate" and f == "red/0001.png"), f
        if not r[f]["usable"]:
            assert kind in r[f]["problems"].split("; ")


def test_a_messy_folder_scans_without_crashing_or_deleting(messy):
    before = sorted(p.relative_to(messy) for p in messy.rglob("*"))
    s = scanning.scan(messy)
    assert sorted(p.relative_to(messy) for p in messy.rglob("*")) == before
    assert s.classes == ["green", "red"]
    usable = s.manifest[s.manifest["usable"]]
    assert len(usable) == 12 + 12 - 1  # the mislabelled pair's red copy is out; green gained none
    assert (usable["problems"] == "").all()
    assert (s.manifest.loc[~s.manifest["usable"], "problems"] != "").all()
    assert "README.md" not in set(s.manifest["relpath"])
    dup = problem(s, "duplicate")
    assert dup.groups == (("red/0001.png", "red/0001 copy.png"),)  # the shorter name is kept
    assert rows(s)["red/0001.png"]["usable"] and not rows(s)["red/0001 copy.png"]["usable"]
    json.dumps(scanning.health_report(s))  # JSON-able
    table = scanning.problems_table(s)
    assert {"problem", "files", "what it means", "which"} <= set(table.columns)
    assert len(table) == len(s.problems)


def test_leakage_across_split_folders_keeps_the_train_copy(tmp_path, fill):
    for split in ("train", "validation", "test"):
        for cls in ("red", "green"):
            fill(tmp_path / split / cls, 5)
    src = sorted((tmp_path / "train" / "red").iterdir())[0]
    shutil.copyfile(src, tmp_path / "test" / "red" / "leak.png")
    s = scanning.scan(tmp_path)
    p = problem(s, "leakage")
    assert p.groups == ((src.relative_to(tmp_path).as_posix(), "test/red/leak.png"),)
    r = rows(s)
    assert r[src.relative_to(tmp_path).as_posix()]["usable"]
    assert not r["test/red/leak.png"]["usable"] and r["test/red/leak.png"]["problems"] == "leakage"


def test_single_class_is_reported(tmp_path, fill):
    fill(tmp_path / "only", 6)
    s = scanning.scan(tmp_path)
    assert s.classes == ["only"]
    assert problem(s, "single_class").files == ("only",)


def test_unknown_folder_next_to_splits_is_reported(tmp_path, fill):
    for split in ("train", "test"):
        fill(tmp_path / split / "red", 4)
        fill(tmp_path / split / "green", 4)
    fill(tmp_path / "extras" / "red", 2, start=900)
    s = scanning.scan(tmp_path)
    assert problem(s, "ignored_folder").files == ("extras/",)
    assert not any(r.startswith("extras/") for r in s.manifest["relpath"])


@pytest.mark.parametrize("what", ["missing", "file", "empty", "no_images", "all_bad"])
def test_folders_that_cannot_be_scanned_raise_user_error(tmp_path, what):
    target = tmp_path / "data"
    if what == "file":
        target.write_text("x")
    elif what == "empty":
        target.mkdir()
    elif what == "no_images":
        (target / "cls").mkdir(parents=True)
        (target / "README").write_text("x")
    elif what == "all_bad":
        (target / "a").mkdir(parents=True)
        (target / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(UserError) as err:
        scanning.scan(target)
    assert "\n" not in str(err.value) and str(target.name) in str(err.value)


# ----------------------------------------------------------------------------------------------
# Cache key, summaries
# ----------------------------------------------------------------------------------------------


def test_scan_key_sees_deep_changes_without_reading(tmp_path, fill):
    fill(tmp_path / "train" / "red", 3)
    key = layouts.scan_key(tmp_path)
    assert layouts.scan_key(tmp_path) == key
    target = tmp_path / "train" / "red" / "0001.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    key2 = layouts.scan_key(tmp_path)
    assert key2 != key
    (tmp_path / "train" / "green").mkdir()
    assert layouts.scan_key(tmp_path) != key2


def test_majority_baseline_uses_train_majority_on_validation(tmp_path, fill):
    fill(tmp_path / "train" / "red", 9)
    fill(tmp_path / "train" / "green", 3, start=20)
    fill(tmp_path / "validation" / "red", 2, start=40)
    fill(tmp_path / "validation" / "green", 6, start=60)
    fill(tmp_path / "test" / "red", 1, start=80)
    fill(tmp_path / "test" / "green", 1, start=90)
    b = scanning.majority_baseline(scanning.scan(tmp_path))
    assert (b.label, b.split) == ("red", "validation")
    assert b.accuracy == pytest.approx(2 / 8)


def test_health_report_and_the_training_images(tiny_dataset):
    from lib.train.items import training_data

    s = scanning.scan(tiny_dataset)
    report = scanning.health_report(s)
    assert json.loads(json.dumps(report)) == report
    assert report["usable"] == 90 and report["classes"] == ["blue", "green", "red"]
    assert report["totals"]["total"] == 90
    assert sum(report["counts"]["validation"].values()) == report["totals"]["validation"]
    data = training_data(s)
    train = data.index("train")
    assert len(train) == report["totals"]["train"] and data.labels.dtype == np.int32
    for i in train:
        assert (
            Path(data.paths[i]).is_absolute() and Path(data.paths[i]).parent.name == s.classes[data.labels[i]]
        )


def test_scan_reports_its_time(tiny_dataset):
    s = scanning.scan(tiny_dataset)
    assert s.seconds > 0 and scanning.health_report(s)["seconds"] == round(s.seconds, 3)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lib", "scan", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_the_report_and_exits_0_even_with_problems(messy):
    out = _cli(str(messy))
    assert out.returncode == 0, out.stderr
    assert "red" in out.stdout and "Problem [truncated]" in out.stdout and "green/truncated.jpg" in out.stdout
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["classes"] == ["green", "red"] and summary["problems"]["truncated"] == 1

    out = _cli(str(messy), "--json")
    assert out.returncode == 0
    report = json.loads(out.stdout)
    kinds = {p["kind"]: p for p in report["problems"]}
    assert kinds["empty_file"]["files"] == ["red/empty.jpg"]
    assert report["counts"]["total"]["red"] == 11  # 12, minus the one also in green (conflict)


@pytest.mark.parametrize("what", ["missing", "file", "no_images"])
def test_cli_exits_2_with_one_line(tmp_path, what):
    target = tmp_path / "d"
    if what == "file":
        target.write_text("x")
    elif what == "no_images":
        (target / "a").mkdir(parents=True)
    out = _cli(str(target))
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: ")


@pytest.mark.parametrize("name", ["bad\nname", "tab\there", "esc\x1b[31m", "rtl\u202egpj.exe"])
@pytest.mark.parametrize("split_layout", [False, True])
def test_class_folders_with_control_characters_are_refused_by_name(tmp_path, make_image, name, split_layout):
    root = tmp_path / "data"
    base = root / "train" if split_layout else root
    for cls in (name, "good"):
        for i in range(2):
            make_image(base / cls / f"{i}.png", (200, 30, 30), seed=i)
    with pytest.raises(UserError) as err:
        scanning.scan(root)
    message = str(err.value)
    shown = ("train/" if split_layout else "") + name
    assert f"class folder {shown!r}" in message and "control characters or line breaks" in message
    assert "\n" not in message and "\x1b" not in message and "\u202e" not in message


def test_the_health_report_labels_colliding_classes_distinctly(tmp_path, make_image):
    for n, cls in enumerate(("cats", "Cats")):
        for i in range(3):
            make_image(tmp_path / cls / f"{i}.png", (40 + n * 150, 90, 200 - n * 150), seed=10 * n + i)
    report = scanning.health_report(scanning.scan(tmp_path))
    assert report["classes"] == ["Cats", "cats"] and report["labels"] == ["Cats (Cats)", "Cats (cats)"]
