"""lib.files: the one atomic writer (files, JSON, folders), and cleaning temporary files of killed processes."""

from __future__ import annotations

import json
import os
import time

import pytest

from lib import files


def test_write_atomic_replaces_whole_files_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "file.json"
    files.write_json(target, {"a": 1, "p": tmp_path})
    assert json.loads(target.read_text()) == {"a": 1, "p": str(tmp_path)}
    files.write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # readable like any other file


def test_a_failed_write_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    files.write_atomic(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError):
        files.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_atomic_dir_renames_into_place_and_keeps_a_twin_that_finished_first(tmp_path):
    final = tmp_path / "cache" / "entry"
    with files.atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("mine")
    assert (final / "a.txt").read_text() == "mine"
    with files.atomic_dir(final) as tmp:  # a concurrent twin: the first copy stays
        (tmp / "a.txt").write_text("twin")
    assert (final / "a.txt").read_text() == "mine"
    assert sorted(p.name for p in final.parent.iterdir()) == ["entry"]
    with pytest.raises(ValueError), files.atomic_dir(tmp_path / "other") as tmp:
        raise ValueError
    assert not (tmp_path / "other").exists() and sorted(p.name for p in (tmp_path).iterdir()) == ["cache"]


def test_clean_temp_removes_only_old_temporaries(tmp_path):
    old_file = tmp_path / f"{files.TEMP_PREFIX}status.json.123.abc"
    old_dir = tmp_path / f"{files.TEMP_PREFIX}features.123.abc"
    fresh = tmp_path / f"{files.TEMP_PREFIX}fresh"
    keep = tmp_path / "status.json"
    for p in (old_file, fresh, keep):
        p.write_text("x")
    old_dir.mkdir()
    (old_dir / "features.npy").write_text("x")
    past = time.time() - 7 * 3600
    for p in (old_file, old_dir):
        os.utime(p, (past, past))
    assert files.clean_temp(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, keep.name])


def test_read_json_wants_an_object(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError):
        files.read_json(path)
