"""lib.datasets: layouts, content-hash splits, every problem kind, sources (zip, download), tf.data."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import zipfile
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib import datasets, images
from lib.errors import ImageError, UserError

ROOT = Path(__file__).resolve().parent.parent
RED, GREEN, BLUE = (200, 40, 40), (40, 180, 60), (40, 60, 200)


@pytest.fixture
def img(make_image):
    """img(path, seed) writes a distinct image; the colour follows the class folder name."""

    def write(path: Path, seed: int, **kwargs) -> Path:
        colour = {"red": RED, "green": GREEN, "blue": BLUE}.get(path.parent.name, (128, 128, 128))
        return make_image(path, kwargs.pop("colour", colour), seed=seed, **kwargs)

    return write


@pytest.fixture
def fill(img, tmp_path):
    """fill(folder, n) writes n distinct images; content depends only on the path under tmp_path."""

    def write(folder: Path, n: int, start: int = 0) -> list[Path]:
        base = zlib.crc32(folder.relative_to(tmp_path).as_posix().encode()) * 10_000
        return [img(folder / f"{i:04d}.png", seed=base + i) for i in range(start, start + n)]

    return write


def rows(scan: datasets.Scan) -> dict[str, dict]:
    return {r["relpath"]: r for r in scan.manifest.to_dict("records")}


def problem(scan: datasets.Scan, kind: str) -> datasets.Problem:
    found = [p for p in scan.problems if p.kind == kind]
    assert found, f"no {kind} problem in {[p.kind for p in scan.problems]}"
    return found[0]


def split_of(scan: datasets.Scan) -> dict[str, str]:
    return dict(zip(scan.manifest["relpath"], scan.manifest["split"], strict=True))


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def test_class_folders_are_split_70_15_15(tmp_path, fill):
    for cls in ("red", "green", "blue"):
        fill(tmp_path / cls, 60)
    s = datasets.scan(tmp_path)
    assert s.layout == "class_folders"
    assert s.classes == ["blue", "green", "red"]
    assert s.problems == []
    counts = datasets.class_counts(s)
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
    s = datasets.scan(tmp_path, val_fraction=0.3, test_fraction=0.0)
    counts = datasets.class_counts(s)
    assert counts["test"].sum() == 0
    assert s.problems == []  # no test split was asked for, so none is missing
    assert 20 < counts["validation"].sum() < 55
    with pytest.raises(UserError):
        datasets.scan(tmp_path, val_fraction=0.6, test_fraction=0.5)


@pytest.mark.parametrize("val_name", ["validation", "val", "valid", "Validation"])
def test_split_folders_are_kept(tmp_path, fill, val_name):
    for split in ("train", val_name, "test"):
        for cls in ("red", "green"):
            fill(tmp_path / split / cls, 4)
    s = datasets.scan(tmp_path)
    assert s.layout == "splits"
    assert s.classes == ["green", "red"]
    for rel, split in split_of(s).items():
        folder = rel.split("/")[0].lower()
        assert split == datasets.SPLIT_FOLDERS[folder]
    assert datasets.class_counts(s)[["train", "validation", "test"]].to_numpy().tolist() == [[4, 4, 4]] * 2


def test_train_and_test_carve_validation_from_train(tmp_path, fill):
    for cls in ("red", "green", "blue"):
        fill(tmp_path / "train" / cls, 50)
        fill(tmp_path / "test" / cls, 10, start=500)
    s = datasets.scan(tmp_path)
    assert s.layout == "train_test"
    splits = split_of(s)
    assert all(v == "test" for k, v in splits.items() if k.startswith("test/"))
    from_train = [v for k, v in splits.items() if k.startswith("train/")]
    assert set(from_train) == {"train", "validation"}
    assert 0.05 < from_train.count("validation") / len(from_train) < 0.3
    assert (datasets.class_counts(s)["validation"] >= 1).all()


def test_train_and_validation_carve_test_from_validation(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / "train" / cls, 20)
        fill(tmp_path / "validation" / cls, 50, start=500)
    s = datasets.scan(tmp_path)
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
    s = datasets.scan(tmp_path)
    assert (datasets.class_counts(s)["validation"] == 1).all()


def test_train_folder_only_is_split_by_the_app(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / "train" / cls, 40)
    s = datasets.scan(tmp_path)
    assert s.layout == "train_only"
    assert set(s.manifest["split"]) == {"train", "validation", "test"}


def test_lone_top_folder_is_stepped_into(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / "wrapper" / "inner" / "train" / cls, 3)
        fill(tmp_path / "wrapper" / "inner" / "validation" / cls, 3, start=50)
    s = datasets.scan(tmp_path)
    assert s.root == (tmp_path / "wrapper" / "inner").resolve()
    assert s.layout == "train_validation"


def test_validation_without_train_is_a_clear_error(tmp_path, fill):
    fill(tmp_path / "val" / "red", 3)
    fill(tmp_path / "test" / "red", 3, start=10)
    with pytest.raises(UserError, match="no train folder"):
        datasets.scan(tmp_path)


def test_readable_label():
    assert datasets.readable_label("bean_rust") == "Bean rust"
    assert datasets.readable_label("angular-leaf__spot") == "Angular leaf spot"
    assert datasets.readable_label("cats") == "Cats"


# ----------------------------------------------------------------------------------------------
# Splits: stable, content-based, every class validated
# ----------------------------------------------------------------------------------------------


def test_adding_or_removing_files_never_moves_the_others(tmp_path, fill, img):
    for cls in ("red", "green"):
        fill(tmp_path / cls, 40)
    before = split_of(datasets.scan(tmp_path))
    for i in range(8):
        img(tmp_path / "red" / f"new_{i}.png", seed=90_000 + i)
    after = split_of(datasets.scan(tmp_path))
    assert {k: after[k] for k in before} == before
    assert any(k.startswith("red/new_") for k in after)
    (tmp_path / "green" / "0003.png").unlink()
    del before["green/0003.png"]
    assert {k: v for k, v in split_of(datasets.scan(tmp_path)).items() if k in before} == before


def test_split_follows_content_not_name(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / cls, 30)
    first = rows(datasets.scan(tmp_path))
    (tmp_path / "red" / "0005.png").rename(tmp_path / "red" / "renamed.png")
    second = rows(datasets.scan(tmp_path))
    assert second["red/renamed.png"]["split"] == first["red/0005.png"]["split"]


def test_identical_files_land_in_the_same_split(tmp_path, fill):
    for cls in ("red", "green"):
        fill(tmp_path / cls, 30)
    for i in range(10):
        shutil.copyfile(tmp_path / "red" / f"{i:04d}.png", tmp_path / "red" / f"copy_{i}.png")
        shutil.copyfile(tmp_path / "red" / f"{i:04d}.png", tmp_path / "green" / f"stray_{i}.png")
    r = rows(datasets.scan(tmp_path))
    for i in range(10):
        assert r[f"red/copy_{i}.png"]["split"] == r[f"red/{i:04d}.png"]["split"]
        assert r[f"green/stray_{i}.png"]["split"] == r[f"red/{i:04d}.png"]["split"]


def test_every_class_with_two_images_gets_validation_and_train(tmp_path, fill):
    sizes = {f"class_{n:02d}": n for n in range(1, 13)}
    for name, n in sizes.items():
        fill(tmp_path / name, n)
    s = datasets.scan(tmp_path)
    counts = datasets.class_counts(s)
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
    counts = datasets.class_counts(datasets.scan(tmp_path))
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
    s = datasets.scan(messy)
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
    s = datasets.scan(messy)
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
    json.dumps(datasets.health_report(s))  # JSON-able
    table = datasets.problems_table(s)
    assert {"problem", "files", "what it means", "which"} <= set(table.columns)
    assert len(table) == len(s.problems)


def test_leakage_across_split_folders_keeps_the_train_copy(tmp_path, fill):
    for split in ("train", "validation", "test"):
        for cls in ("red", "green"):
            fill(tmp_path / split / cls, 5)
    src = sorted((tmp_path / "train" / "red").iterdir())[0]
    shutil.copyfile(src, tmp_path / "test" / "red" / "leak.png")
    s = datasets.scan(tmp_path)
    p = problem(s, "leakage")
    assert p.groups == ((src.relative_to(tmp_path).as_posix(), "test/red/leak.png"),)
    r = rows(s)
    assert r[src.relative_to(tmp_path).as_posix()]["usable"]
    assert not r["test/red/leak.png"]["usable"] and r["test/red/leak.png"]["problems"] == "leakage"


def test_single_class_is_reported(tmp_path, fill):
    fill(tmp_path / "only", 6)
    s = datasets.scan(tmp_path)
    assert s.classes == ["only"]
    assert problem(s, "single_class").files == ("only",)


def test_unknown_folder_next_to_splits_is_reported(tmp_path, fill):
    for split in ("train", "test"):
        fill(tmp_path / split / "red", 4)
        fill(tmp_path / split / "green", 4)
    fill(tmp_path / "extras" / "red", 2, start=900)
    s = datasets.scan(tmp_path)
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
        datasets.scan(target)
    assert "\n" not in str(err.value) and str(target.name) in str(err.value)


# ----------------------------------------------------------------------------------------------
# Formats, modes, EXIF (through the one decoder the scan and the pipeline use)
# ----------------------------------------------------------------------------------------------


def _save(path: Path, im: Image.Image, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt, **kwargs)
    return path


def test_every_mode_and_format_is_read_as_rgb(tmp_path, fill):
    d = tmp_path / "modes"
    fill(tmp_path / "other", 3)
    files = {}
    files["L"] = _save(d / "l.png", Image.new("L", (40, 40), 77))
    files["LA"] = _save(d / "la.png", Image.new("LA", (40, 40), (0, 0)))  # fully transparent -> white
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    files["P"] = _save(d / "p.png", pal, transparency=0)  # index 1 opaque green
    files["RGBA"] = _save(d / "rgba.png", Image.new("RGBA", (40, 40), (255, 0, 0, 0)))
    files["CMYK"] = _save(d / "cmyk.jpg", Image.new("CMYK", (40, 40), (0, 0, 0, 0)), quality=95)
    files["I;16"] = _save(d / "i16.png", Image.fromarray(np.full((40, 40), 65535, np.uint16)))
    frames = [Image.new("RGB", (40, 40), c) for c in ((250, 0, 0), (0, 0, 250))]
    files["GIF"] = d / "anim.gif"
    frames[0].save(files["GIF"], save_all=True, append_images=frames[1:], duration=100)
    files["WEBP"] = _save(d / "x.webp", Image.new("RGB", (40, 40), (1, 2, 3)), lossless=True)
    files["BMP"] = _save(d / "x.bmp", Image.new("RGB", (40, 40), (4, 5, 6)))

    expected = {
        "L": (77, 77, 77),
        "LA": (255, 255, 255),
        "P": (10, 200, 30),
        "RGBA": (255, 255, 255),
        "CMYK": (255, 255, 255),
        "I;16": (255, 255, 255),
        "GIF": (250, 0, 0),
        "WEBP": (1, 2, 3),
        "BMP": (4, 5, 6),
    }
    for key, path in files.items():
        rgb = images.decode(path, 32)
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8, key
        assert np.abs(rgb.reshape(-1, 3).mean(axis=0) - expected[key]).max() <= 2, key

    s = datasets.scan(tmp_path)
    r = rows(s)
    assert all(r[f"modes/{p.name}"]["usable"] for p in files.values())
    assert r["modes/i16.png"]["mode"].startswith("I")
    assert r["modes/cmyk.jpg"]["mode"] == "CMYK"
    assert r["modes/anim.gif"]["format"] == "GIF"
    assert r["modes/x.webp"]["format"] == "WEBP"


def test_exif_orientation_is_applied(tmp_path, img):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path / "rotated.jpg", Image.new("RGB", (80, 40), (120, 30, 30)), exif=exif.tobytes())
    assert images.decode(path).shape == (80, 40, 3)


# ----------------------------------------------------------------------------------------------
# Cache key, summaries
# ----------------------------------------------------------------------------------------------


def test_scan_key_sees_deep_changes_without_reading(tmp_path, fill):
    fill(tmp_path / "train" / "red", 3)
    key = datasets.scan_key(tmp_path)
    assert datasets.scan_key(tmp_path) == key
    target = tmp_path / "train" / "red" / "0001.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    key2 = datasets.scan_key(tmp_path)
    assert key2 != key
    (tmp_path / "train" / "green").mkdir()
    assert datasets.scan_key(tmp_path) != key2


def test_majority_baseline_uses_train_majority_on_validation(tmp_path, fill):
    fill(tmp_path / "train" / "red", 9)
    fill(tmp_path / "train" / "green", 3, start=20)
    fill(tmp_path / "validation" / "red", 2, start=40)
    fill(tmp_path / "validation" / "green", 6, start=60)
    fill(tmp_path / "test" / "red", 1, start=80)
    fill(tmp_path / "test" / "green", 1, start=90)
    b = datasets.majority_baseline(datasets.scan(tmp_path))
    assert (b.label, b.split) == ("red", "validation")
    assert b.accuracy == pytest.approx(2 / 8)


def test_health_report_and_files_and_labels(tiny_dataset):
    s = datasets.scan(tiny_dataset)
    report = datasets.health_report(s)
    assert json.loads(json.dumps(report)) == report
    assert report["usable"] == 90 and report["classes"] == ["blue", "green", "red"]
    assert report["totals"]["total"] == 90
    assert sum(report["counts"]["validation"].values()) == report["totals"]["validation"]
    paths, labels = datasets.files_and_labels(s, "train")
    assert len(paths) == report["totals"]["train"] and labels.dtype == np.int32
    for p, label in zip(paths, labels, strict=True):
        assert Path(p).is_absolute() and Path(p).parent.name == s.classes[label]


def test_scan_is_fast_and_reports_its_time(tiny_dataset):
    s = datasets.scan(tiny_dataset)
    assert 0 < s.seconds < 5 and datasets.health_report(s)["seconds"] == round(s.seconds, 3)


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


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def _zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def _png(seed: int, colour=RED) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-30, 31, (48, 48, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_extract_zip_returns_the_top_folder_and_skips_macosx(tmp_path):
    entries = {
        f"photos/{c}/{i}.png": _png(i + 10 * n, col)
        for n, (c, col) in enumerate((("red", RED), ("green", GREEN)))
        for i in range(4)
    }
    entries["__MACOSX/photos/red/._0.png"] = b"\0\5\26\7"
    dest = tmp_path / "uploads" / "abc"
    root = datasets.extract_zip(_zip(entries), dest)
    assert root == dest / "photos"
    assert not (dest / "__MACOSX").exists()
    s = datasets.scan(root)
    assert s.classes == ["green", "red"] and "hidden" not in {p.kind for p in s.problems}
    assert os.listdir(dest.parent) == ["abc"]  # no partial folders left
    # A finished extraction is reused as is.
    assert datasets.extract_zip(b"not even a zip", dest) == root


def test_extract_zip_from_a_path(tmp_path):
    zpath = tmp_path / "d.zip"
    zpath.write_bytes(_zip({"red/a.png": _png(1), "green/b.png": _png(2, GREEN)}))
    root = datasets.extract_zip(zpath, tmp_path / "out")
    assert root == tmp_path / "out" and (root / "red" / "a.png").is_file()


@pytest.mark.parametrize(
    ("entries", "symlinks", "limits", "match"),
    [
        ({"../evil.png": b"x", "a/b.png": b"y"}, None, {}, "leaves its folder"),
        ({"ok/../../evil.png": b"x"}, None, {}, "leaves its folder"),
        ({"/abs/evil.png": b"x"}, None, {}, "absolute"),
        ({"C:/evil.png": b"x"}, None, {}, "absolute"),
        ({"a/b.png": b"x"}, {"a/link.png": "/etc/passwd"}, {}, "symbolic link"),
        ({"a/b.png": b"x", "a/more.zip": b"PK"}, None, {}, "another archive"),
        ({"a/b.png": b"x", "a/more.tar.gz": b"x"}, None, {}, "another archive"),
        ({f"a/{i}.png": b"x" for i in range(6)}, None, {"max_files": 5}, "limit is 5"),
        ({"a/big.png": b"x" * 5000}, None, {"max_bytes": 4000}, "limit"),
        ({}, None, {}, "empty"),
    ],
)
def test_extract_zip_rejects_unsafe_archives(tmp_path, entries, symlinks, limits, match):
    dest = tmp_path / "box" / "dest"
    with pytest.raises(UserError, match=match):
        datasets.extract_zip(_zip(entries, symlinks), dest, **limits)
    assert not dest.exists()
    assert os.listdir(tmp_path / "box") == []  # nothing written, no partial folder left
    assert sorted(os.listdir(tmp_path)) == ["box"]


def test_extract_zip_rejects_non_zips(tmp_path):
    with pytest.raises(UserError, match="not a zip"):
        datasets.extract_zip(b"%PDF-1.4 hello", tmp_path / "d")


def test_sample_dataset_is_small_licensed_and_clean():
    root = datasets.sample_dataset_dir()
    assert (root / "LICENSE").is_file() and "MIT" in (root / "LICENSE").read_text()
    assert "Makerere" in (root / "PROVENANCE.txt").read_text()
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 5_000_000
    s = datasets.scan(root)
    assert s.layout == "train_test" and s.problems == []
    assert s.classes == ["angular_leaf_spot", "bean_rust", "healthy"]
    counts = datasets.class_counts(s)
    assert (counts["test"] >= 10).all() and (counts["train"] >= 40).all()
    assert s.manifest["width"].min() >= 96


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def zip_server(tmp_path):
    """A loopback HTTP server serving a tiny cats_and_dogs_filtered.zip; yields its URL."""
    served = tmp_path / "served"
    served.mkdir()
    entries = {}
    for split in ("train", "validation"):
        for n, (cls, col) in enumerate((("cats", RED), ("dogs", BLUE))):
            for i in range(3):
                entries[f"cats_and_dogs_filtered/{split}/{cls}/{cls}.{i}.png"] = _png(
                    100 * n + 10 * len(split) + i, col
                )
    entries["cats_and_dogs_filtered/vectorize.py"] = b"print('hi')\n"
    (served / "cats_and_dogs_filtered.zip").write_bytes(_zip(entries))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cats_and_dogs_filtered.zip"
    server.shutdown()
    server.server_close()


def test_download_cats_vs_dogs_from_a_local_server(tmp_path, zip_server):
    cache = tmp_path / "cache"
    root = datasets.download_cats_vs_dogs(cache, origin=zip_server)
    assert (root / "train").is_dir() and (root / "validation").is_dir()
    assert cache in root.parents
    s = datasets.scan(root)
    assert s.layout == "train_validation" and s.classes == ["cats", "dogs"]
    # Cached: no network needed the second time.
    closed = f"http://127.0.0.1:{_free_port()}/cats_and_dogs_filtered.zip"
    assert datasets.download_cats_vs_dogs(cache, origin=closed) == root


def test_download_without_network_says_so(tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}/cats_and_dogs_filtered.zip"
    with pytest.raises(UserError, match="no network connection"):
        datasets.download_cats_vs_dogs(tmp_path / "cache", origin=closed)


# ----------------------------------------------------------------------------------------------
# tf.data
# ----------------------------------------------------------------------------------------------


def test_make_dataset_yields_fixed_shape_batches(tiny_dataset):
    import tensorflow as tf

    s = datasets.scan(tiny_dataset)
    paths, labels = datasets.files_and_labels(s, None)
    ds = datasets.make_dataset(paths, labels, 32, 16)
    assert ds.element_spec[0].shape.as_list() == [None, 32, 32, 3]
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.int32
    seen_labels, batches = [], 0
    for x, y in ds:
        batches += 1
        assert x.shape[1:] == (32, 32, 3)
        assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255
        means = tf.reduce_mean(x, axis=[1, 2]).numpy()
        for m, label in zip(means, y.numpy(), strict=True):
            assert int(np.argmax(m)) == {"blue": 2, "green": 1, "red": 0}[s.classes[label]]
        seen_labels += y.numpy().tolist()
    assert seen_labels == labels.tolist()  # no shuffle: order kept
    assert batches == int(np.ceil(len(paths) / 16))
    shuffled = [
        int(v) for _, y in datasets.make_dataset(paths, labels, 32, 16, shuffle=True, seed=1) for v in y
    ]
    assert sorted(shuffled) == sorted(labels.tolist()) and shuffled != labels.tolist()


def test_make_dataset_names_a_file_that_fails_to_decode(tmp_path, tiny_dataset):
    import tensorflow as tf

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    good = next((tiny_dataset / "red").iterdir())
    ds = datasets.make_dataset([str(good), str(bad)], [0, 1], 32, 2)
    with pytest.raises(tf.errors.OpError) as err:
        list(ds)
    assert str(bad) in str(err.value)
    plain = datasets.image_error_from(err.value)
    assert isinstance(plain, ImageError) and str(bad) in str(plain) and "Traceback" not in str(plain)
