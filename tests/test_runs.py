"""The runs store: atomic writes, listing that survives broken folders, status transitions,
renaming/notes/deleting, and a run folder that opens after being copied elsewhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lib import runs
from lib.errors import UserError


def _config(base="MobileNetV2"):
    return {"data_dir": "/data", "base": base, "image_size": 96, "classes": ["a", "b"]}


def test_write_atomic_replaces_whole_files_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "file.json"
    runs.write_json_atomic(target, {"a": 1, "p": tmp_path})
    assert json.loads(target.read_text()) == {"a": 1, "p": str(tmp_path)}
    runs.write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # readable like any other file


def test_a_failed_write_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    runs.write_atomic(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", boom)
    with pytest.raises(OSError):
        runs.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_create_run_makes_a_unique_timestamped_folder(tmp_path):
    first = runs.create_run(tmp_path / "models", _config())
    second = runs.create_run(tmp_path / "models", _config())
    assert first != second
    assert re.fullmatch(r"\d{8}-\d{6}-MobileNetV2(-\d+)?", first.name)
    config = runs.read_config(first)
    assert config["base"] == "MobileNetV2" and config["name"] == first.name
    assert runs.read_status(first)["state"] == "queued"
    assert (first / "notes.md").read_text() == ""


def test_status_transitions_and_bad_states(tmp_path):
    run = runs.create_run(tmp_path, _config())
    runs.write_status(run, "running", pid=os.getpid(), progress={"phase": "head", "epoch": 2, "epochs": 10})
    status = runs.read_status(run)
    assert status["state"] == "running" and status["progress"]["epoch"] == 2
    assert runs.process_alive(status)
    runs.write_status(run, "failed", reason="The weights file does not fit.")
    status = runs.read_status(run)
    assert status == {**status, "state": "failed", "reason": "The weights file does not fit.", "pid": None}
    with pytest.raises(ValueError):
        runs.write_status(run, "exploded")
    (run / "status.json").unlink()
    assert runs.read_status(run)["state"] == "unknown"


def test_a_running_run_whose_process_died_lists_as_interrupted(tmp_path):
    run = runs.create_run(tmp_path, _config())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    runs.write_status(run, "running", pid=proc.pid)
    (info,) = runs.list_runs(tmp_path)
    assert info.state == "interrupted" and "no longer running" in info.reason
    assert runs.read_status(run)["state"] == "running"  # listing never rewrites a status


def test_list_runs_marks_broken_folders_instead_of_failing(tmp_path):
    good = runs.create_run(tmp_path, _config())
    runs.write_json_atomic(good / "metrics.json", {"val_accuracy": 0.9, "test_accuracy": 0.8})
    broken = tmp_path / "20200101-000000-Broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    empty = tmp_path / "20200101-000001-Empty"
    empty.mkdir()
    no_model = runs.create_run(tmp_path, _config("ResNet50"))
    runs.write_status(no_model, "finished")
    (tmp_path / ".deleting-x").mkdir()  # hidden folders are not runs
    (tmp_path / "stray.txt").write_text("x")

    infos = {i.run_id: i for i in runs.list_runs(tmp_path)}
    assert set(infos) == {good.name, broken.name, empty.name, no_model.name}
    assert infos[good.name].damaged is None
    assert infos[good.name].val_accuracy == 0.9 and infos[good.name].test_accuracy == 0.8
    assert "config.json cannot be read" in infos[broken.name].damaged
    assert "config.json is missing" in infos[empty.name].damaged
    assert "model.keras is missing" in infos[no_model.name].damaged
    assert runs.list_runs(tmp_path / "nope") == []


def test_rename_note_and_delete(tmp_path):
    run = runs.create_run(tmp_path, _config())
    assert runs.rename_run(run, "  Beans,\n first try ") == "Beans, first try"
    assert runs.read_config(run)["name"] == "Beans, first try"
    assert run.is_dir()  # the folder keeps its id
    with pytest.raises(UserError):
        runs.rename_run(run, "   ")
    runs.set_note(run, "# Notes\nlr too high?")
    assert runs.list_runs(tmp_path)[0].note.startswith("# Notes")

    runs.write_status(run, "running", pid=os.getpid())
    with pytest.raises(UserError, match="still training"):
        runs.delete_run(run)
    runs.write_status(run, "finished")
    runs.delete_run(run)
    assert not run.exists() and list(tmp_path.iterdir()) == []

    not_a_run = tmp_path / "photos"
    not_a_run.mkdir()
    (not_a_run / "cat.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="does not look like a run folder"):
        runs.delete_run(not_a_run)
    assert (not_a_run / "cat.jpg").exists()


def test_history_round_trip(tmp_path):
    rows = [
        {
            "epoch": 1,
            "phase": "head",
            "loss": 1.0,
            "accuracy": 0.5,
            "val_loss": 0.9,
            "val_accuracy": 0.6,
            "seconds": 0.1,
        },
        {
            "epoch": 2,
            "phase": "fine-tune",
            "loss": 0.5,
            "accuracy": 0.8,
            "val_loss": None,
            "val_accuracy": 0.7,
            "seconds": 0.2,
        },
    ]
    runs.write_history(tmp_path, rows)
    df = runs.read_history(tmp_path)
    assert list(df.columns) == list(runs.HISTORY_COLUMNS)
    assert df["phase"].tolist() == ["head", "fine-tune"]
    assert np.isnan(df["val_loss"][1])
    assert runs.read_history(tmp_path / "missing").empty


def test_a_copied_run_loads_its_model_and_lambda_models_are_refused(tmp_path):
    import keras

    from lib import models

    run = runs.create_run(tmp_path / "a", _config("ResNet50"))
    spec = models.get_base("SmallCNN")
    model = models.build_classifier(spec, 32, models.build_base("SmallCNN", 32, "none"), 2, models.HeadSpec())
    # A custom layer too, so loading needs lib.layers registered.
    from lib.layers import CaffePreprocess

    inputs = keras.Input((None, None, 3))
    wrapped = keras.Model(inputs, model(CaffePreprocess()(inputs)))
    wrapped.save(run / "model.keras")
    pixels = np.random.default_rng(0).integers(0, 256, (1, 40, 40, 3)).astype("float32")
    expected = wrapped.predict(pixels, verbose=0)

    copy = tmp_path / "elsewhere" / run.name
    shutil.copytree(run, copy)
    shutil.rmtree(run)
    loaded = runs.load_model(copy)
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), expected, atol=1e-6)

    lam = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    lam.save(copy / "model.keras")
    with pytest.raises(UserError, match="cannot be loaded|Lambda"):
        runs.load_model(copy)
    (copy / "model.keras").unlink()
    with pytest.raises(UserError, match="no saved model"):
        runs.load_model(copy)


def test_progress_writer_throttles_but_keeps_phase_changes(tmp_path):
    run = runs.create_run(tmp_path, _config())
    write = runs.progress_writer(run, every=60)
    write({"phase": "features", "done": 16, "total": 100, "eta_seconds": np.float32(3.5)})
    write({"phase": "features", "done": 32, "total": 100})  # throttled
    assert runs.read_status(run)["progress"]["done"] == 16
    assert runs.read_status(run)["progress"]["eta_seconds"] == 3.5
    write({"phase": "head", "epoch": 1, "epochs": 10, "logs": {"loss": float("nan")}})
    status = runs.read_status(run)
    assert status["state"] == "running" and status["progress"]["phase"] == "head"
    assert status["progress"]["logs"]["loss"] is None


def test_create_run_resolves_a_train_config_and_refuses_a_bad_one(tmp_path):
    from lib.training import TrainConfig

    run = runs.create_run(tmp_path, TrainConfig(data_dir="/d", base="efficientnetb0"))
    config = runs.read_config(run)
    assert config["base"] == "EfficientNetB0" and config["image_size"] == 224
    assert TrainConfig.from_json((run / "config.json").read_text()).base == "EfficientNetB0"
    with pytest.raises(UserError, match="Unknown base"):
        runs.create_run(tmp_path / "other", TrainConfig(data_dir="/d", base="VGG16"))
    assert not (tmp_path / "other").exists()
