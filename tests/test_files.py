"""lib.files: the one atomic writer (files, JSON, folders), and cleaning temporary files of killed processes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import files
from lib.errors import DiskFull


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


def test_atomic_writes_fsync_the_folder_after_renaming(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(files, "fsync_dir", lambda path: synced.append(Path(path)))
    files.write_json(tmp_path / "a" / "status.json", {"state": "finished"})
    assert synced == [tmp_path / "a"]
    with files.atomic_dir(tmp_path / "cache" / "entry") as tmp:
        (tmp / "meta.json").write_text("{}")
    assert synced[-1] == tmp_path / "cache" and (tmp_path / "cache" / "entry" / "meta.json").is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_clean_temp_removes_fresh_temporaries_of_dead_processes_only(tmp_path):
    dead = _dead_pid()
    orphan = tmp_path / f"{files.TEMP_PREFIX}model.keras.{dead}.0123abcd.keras"
    orphan_dir = tmp_path / f"{files.TEMP_PREFIX}features-key.{dead}.89abcdef"
    mine = tmp_path / f"{files.TEMP_PREFIX}status.json.{os.getpid()}.0123abcd.json"
    unknown = tmp_path / f"{files.TEMP_PREFIX}write-test-xyz"  # no owner in the name: age decides
    for p in (orphan, mine, unknown):
        p.write_text("half")
    orphan_dir.mkdir()
    (orphan_dir / "features.npy").write_bytes(b"\0" * 100)
    assert files.clean_temp(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, unknown.name])


def test_clean_temp_tree_reaches_run_folders_and_their_caches(tmp_path):
    dead = _dead_pid()
    deep = tmp_path / "models" / "run-1" / "predictions"
    deep.mkdir(parents=True)
    for folder in (tmp_path / "models", tmp_path / "models" / "run-1", deep):
        (folder / f"{files.TEMP_PREFIX}x.{dead}.0123abcd").write_text("half")
    (deep / "kept.parquet").write_text("done")
    assert files.clean_temp_tree(tmp_path / "models", depth=1) == 2  # two levels
    assert files.clean_temp_tree(tmp_path / "models", depth=2) == 1
    assert [p.name for p in deep.iterdir()] == ["kept.parquet"]


def test_ensure_free_refuses_a_write_the_disk_has_no_room_for(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MIN_FREE_MB", "1")
    monkeypatch.setattr(files, "free_bytes", lambda path: 3_000_000)
    files.ensure_free(tmp_path, 1_500_000, "saving the model")  # 3 MB free, 1 MB kept: fits
    with pytest.raises(DiskFull, match=r"The disk is full: saving the model needs 2\.5 MB") as err:
        files.ensure_free(tmp_path / "not" / "yet", 2_500_000, "saving the model")
    assert err.value.kind == "disk"


def test_free_bytes_asks_the_nearest_existing_folder(tmp_path):
    assert files.free_bytes(tmp_path / "does" / "not" / "exist") == shutil.disk_usage(tmp_path).free


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_preallocate_reserves_a_sparse_file_and_says_disk_full(tmp_path, monkeypatch, code):
    path = tmp_path / "features.npy"
    with open(path, "wb") as fh:
        fh.truncate(4 * 1024 * 1024)  # sparse, like a fresh memmap
    files.preallocate(path, "writing the image features")
    if os.stat(path).st_blocks * 512 < 4 * 1024 * 1024:
        pytest.fail(f"blocks not reserved: {os.stat(path).st_blocks * 512} bytes")

    def full(fd, offset, length):  # no space left, over a quota, over the file-size limit
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "posix_fallocate", full)
    with pytest.raises(DiskFull, match="writing the image features needs 4.2 MB"):
        files.preallocate(path, "writing the image features")


def test_tree_bytes_counts_files_not_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"x" * 100)
    (tmp_path / "y").write_bytes(b"y" * 10)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert files.tree_bytes(tmp_path) == 110  # the linked folder is not counted twice
    assert files.tree_bytes(tmp_path / "y") == 10 and files.tree_bytes(tmp_path / "missing") == 0
