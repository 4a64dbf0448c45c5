"""lib.train.features on disk: a bounded cache (least recently used entries leave first, never one
being written or just used) and a full disk that fails a run as "disk full" with no half-written entry."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from lib import files, runs
from lib.data.scan import load_scan
from lib.errors import DiskFull, UserError
from lib.models import build
from lib.train import features
from lib.train.config import TrainConfig
from lib.train.items import training_data
from lib.train.recipe import train
from tests.conftest import share_converted_models

HOUR = 3600.0


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch, converted_models):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(share_converted_models(tmp_path / "cache", converted_models)))
    monkeypatch.setenv("STUDIO_FEATURE_CACHE_MB", "1")  # 1,000,000 bytes
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    return tmp_path / "cache" / "features"


def _entry(name: str, size: int, used_hours_ago: float) -> Path:
    """A finished cache entry of `size` bytes, last used that long ago."""
    entry = features.features_dir() / name
    entry.mkdir(parents=True)
    (entry / "features.npy").write_bytes(b"\0" * (size - 2))
    (entry / "meta.json").write_text("{}")
    when = time.time() - used_hours_ago * HOUR
    os.utime(entry / "meta.json", (when, when))
    return entry


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_the_least_recently_used_entry_leaves_first_and_the_cap_holds(cache):
    _entry("a", 300_000, used_hours_ago=3)
    _entry("b", 300_000, used_hours_ago=2)
    _entry("c", 300_000, used_hours_ago=1)
    assert features.feature_cache_bytes() == 900_000
    assert features.make_room(300_000) == ["a"]  # 600,000 + 300,000 fits the 1,000,000 cap
    assert _names(cache) == ["b", "c"]
    features.touch(cache / "b")  # b is used again: now c is the least recently used
    _entry("d", 300_000, used_hours_ago=0.5)
    assert features.make_room(300_000) == ["c"]
    assert _names(cache) == ["b", "d"]
    assert features.feature_cache_bytes() + 300_000 <= features.cache_limit()


def test_entries_being_written_or_just_used_are_never_evicted(cache):
    writing = cache / f"{files.TEMP_PREFIX}key.{os.getpid()}.0123abcd"
    writing.mkdir(parents=True)
    (writing / "features.npy").write_bytes(b"\0" * 500_000)
    _entry("fresh", 300_000, used_hours_ago=0)  # a run is opening it right now
    with pytest.raises(DiskFull, match="other runs are using right now"):
        features.make_room(300_000)
    assert _names(cache) == sorted(["fresh", writing.name])
    # An hour later the entry may go; the one being written still stays.
    assert features.make_room(300_000, now=time.time() + HOUR) == ["fresh"]
    assert _names(cache) == [writing.name]


def test_features_bigger_than_the_whole_cache_are_refused_in_plain_words(cache):
    _entry("a", 300_000, used_hours_ago=3)
    with pytest.raises(UserError, match="more than the feature cache may hold") as err:
        features.make_room(2_000_000)
    assert "STUDIO_FEATURE_CACHE_MB" in str(err.value) and _names(cache) == [
        "a"
    ]  # nothing evicted for nothing


def test_clearing_the_cache_keeps_entries_being_written(cache):
    _entry("a", 200_000, used_hours_ago=3)
    _entry("b", 100_000, used_hours_ago=0)
    writing = cache / f"{files.TEMP_PREFIX}key.{os.getpid()}.0123abcd"
    writing.mkdir()
    (writing / "features.npy").write_bytes(b"\0" * 1000)
    assert features.clear_feature_cache() == 300_000
    assert _names(cache) == [writing.name] and features.feature_cache_bytes() == 1000


# ----------------------------------------------------------------------------------------------
# With the real base (the bundled MobileNetV2 on the tiny colour set: a few seconds per run)
# ----------------------------------------------------------------------------------------------


def _config(data: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{"data_dir": str(data), "weights": "bundled", "epochs": 2, "seed": 1, **overrides})


def test_a_real_run_evicts_old_entries_to_stay_under_the_cap_and_marks_its_use(tiny_dataset, tmp_path, cache):
    _entry("old", 500_000, used_hours_ago=5)
    _entry("newer", 300_000, used_hours_ago=1)
    config = _config(tiny_dataset)
    metrics = train(config, tmp_path / "run")
    assert metrics["feature_cache"] == "computed"
    key = features.feature_key(
        config.resolved(),
        training_data(load_scan(tiny_dataset)),
        build.resolve_weights(config.spec, "bundled")[0],
    )
    assert _names(cache) == sorted(["newer", key])  # the oldest left; the newer one still fits
    assert features.feature_cache_bytes() <= features.cache_limit()

    # Using the entry again makes it the most recently used.
    past = time.time() - 2 * HOUR
    os.utime(cache / key / "meta.json", (past, past))
    again = train(config, tmp_path / "again")
    assert again["feature_cache"] == "hit"
    assert features.last_used(cache / key) > features.last_used(cache / "newer")


@pytest.mark.parametrize("where", ["before writing", "reserving the blocks"])
def test_a_full_disk_fails_the_run_as_disk_full_with_no_half_written_entry(
    tiny_dataset, tmp_path, cache, monkeypatch, where
):
    if where == "before writing":
        monkeypatch.setattr(files, "free_bytes", lambda path: 10_000)
    else:

        def full(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(files.os, "posix_fallocate", full)
    run_dir = runs.create_run(tmp_path / "models", _config(tiny_dataset))
    with runs.recording_status(run_dir) as outcome:
        train(_config(tiny_dataset), run_dir)
    status = runs.read_status(run_dir)
    assert outcome.state == status["state"] == "failed" and status["kind"] == "disk"
    assert status["reason"].startswith("The disk is full: writing the image features needs")
    assert _names(cache) == []  # no entry and no temporary folder left
    assert not (run_dir / "model.keras").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


def test_saving_the_model_checks_for_room_first(tiny_dataset, tmp_path, monkeypatch):
    real = files.free_bytes

    def free(path):  # room for features, none for the model
        return 10_000 if Path(path) == tmp_path / "run" else real(path)

    monkeypatch.setattr(files, "free_bytes", free)
    with pytest.raises(DiskFull, match="saving the model needs"):
        train(_config(tiny_dataset), tmp_path / "run")
    assert not (tmp_path / "run" / "model.keras").exists()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(files.TEMP_PREFIX)]


def test_entry_bytes_counts_the_float16_rows():
    assert features.entry_bytes(10, (4, 4, 8), 3) == 10 * 128 * 2 + 24 + 64 * 1024  # float16: 2 bytes
