"""lib.runs: the Run record, listing that survives broken folders, status transitions and the one
status recorder, process identity (PID and start time), renaming/notes/deleting."""

from __future__ import annotations

import csv
import errno
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lib import files, runs, vocab
from lib.errors import Cancelled, UserError


def _config(base="MobileNetV2"):
    return {"data_dir": "/data", "base": base, "image_size": 96, "classes": ["a", "b"]}


def test_create_run_makes_a_unique_timestamped_folder(tmp_path):
    first = runs.create_run(tmp_path / "models", _config())
    second = runs.create_run(tmp_path / "models", _config())
    assert first != second
    assert re.fullmatch(r"\d{8}-\d{6}-MobileNetV2(-\d+)?", first.name)
    config = runs.read_run(first).config
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
    files.write_json(good / "metrics.json", {"val_accuracy": 0.9, "test_accuracy": 0.8})
    broken = tmp_path / "20200101-000000-Broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    empty = tmp_path / "20200101-000001-Empty"
    empty.mkdir()
    no_model = runs.create_run(tmp_path, _config("ResNet50"))
    runs.write_status(no_model, "finished")
    (tmp_path / ".deleting-x").mkdir()  # hidden folders are not runs
    (tmp_path / "stray.txt").write_text("x")

    infos = {i.id: i for i in runs.list_runs(tmp_path)}
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
    assert runs.read_run(run).config["name"] == "Beans, first try"
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
    assert list(df.columns) == list(vocab.HISTORY_COLUMNS)
    assert df["phase"].tolist() == ["head", "fine-tune"]
    assert np.isnan(df["val_loss"][1])
    assert runs.read_history(tmp_path / "missing").empty


def test_history_csv_neutralizes_text_and_keeps_numbers(tmp_path):
    rows = [
        {"epoch": np.int64(1), "phase": "=HYPERLINK(\"http://e\",\"x\")", "loss": np.float32(0.25),
         "accuracy": 0.5, "val_loss": -0.0, "val_accuracy": 1, "seconds": 0.1},
    ]  # fmt: skip
    runs.write_history(tmp_path, rows)
    header, line = (tmp_path / "history.csv").read_text().splitlines()
    assert header == ",".join(vocab.HISTORY_COLUMNS)
    cells = next(csv.reader([line]))
    assert cells[1].startswith("'=")
    assert not any(c.startswith(("=", "+", "@", "\t", "\r")) for c in cells)  # "-0" stays a number
    df = runs.read_history(tmp_path)
    assert df["loss"][0] == pytest.approx(0.25) and df["epoch"][0] == 1 and df["val_accuracy"][0] == 1


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
    from lib.train.config import TrainConfig

    run = runs.create_run(tmp_path, TrainConfig(data_dir="/d", base="efficientnetb0"))
    config = runs.read_run(run).config
    assert config["base"] == "EfficientNetB0" and config["image_size"] == 224
    assert TrainConfig.from_json((run / "config.json").read_text()).base == "EfficientNetB0"
    with pytest.raises(UserError, match="Unknown base"):
        runs.create_run(tmp_path / "other", TrainConfig(data_dir="/d", base="VGG16"))
    assert not (tmp_path / "other").exists()


def test_the_run_record_reads_everything_once(tmp_path):
    run_dir = runs.create_run(tmp_path, {**_config(), "name": "Beans"})
    files.write_json(run_dir / "metrics.json", {"val_accuracy": 0.75, "test_accuracy": None})
    runs.write_status(run_dir, "finished")
    (run_dir / "model.keras").write_bytes(b"x")
    run = runs.read_run(run_dir)
    assert (run.id, run.name, run.base, run.image_size, run.classes) == (
        run_dir.name,
        "Beans",
        "MobileNetV2",
        96,
        ["a", "b"],
    )
    assert run.state == "finished" and run.usable and run.val_accuracy == 0.75 and run.test_accuracy is None
    assert run.data_dir == "/data" and run.model_path == run_dir / "model.keras"
    assert "Beans · MobileNetV2" in run.label() and "val 75.0%" in run.label()
    assert runs.open_run(run_dir).classes == ["a", "b"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.write_text("x"), "is a file"),
        (lambda d: d.mkdir(), "has no config.json"),
        (lambda d: (d.mkdir(), (d / "config.json").write_text("{")), "cannot be read"),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text('{"image_size": 96}')),
            "does not list its classes",
        ),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text('{"classes": ["a"], "image_size": "x"}')),
            "no valid image size",
        ),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text('{"classes": ["a"], "image_size": 96}')),
            "no saved model",
        ),
    ],
)
def test_open_run_says_why_a_folder_cannot_be_used(tmp_path, make, message):
    target = tmp_path / "run"
    make(target)
    with pytest.raises(UserError, match=message):
        runs.open_run(target)


def test_a_reused_pid_is_not_the_worker(tmp_path):
    run = runs.create_run(tmp_path, _config())
    runs.write_status(run, "running", pid=os.getpid())
    status = runs.read_status(run)
    assert status["pid_started"] is not None and runs.process_alive(status)
    # The same PID with another start time: a process that got the PID after a restart.
    assert not runs.process_alive({**status, "pid_started": status["pid_started"] - 3600})
    assert runs.read_run(run).state == "running"
    files.write_json(run / "status.json", {**status, "pid_started": status["pid_started"] - 3600})
    assert runs.read_run(run).state == "interrupted"


def _raised_while_handling(cause: BaseException) -> BaseException:
    """What a library that writes files may raise: its own error, while handling the disk's."""
    try:
        try:
            raise cause
        except OSError:
            raise RuntimeError("Unable to synchronously write data") from None
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    "error, state, kind, reason",
    [
        (None, "finished", "", ""),
        (Cancelled(), "cancelled", "cancelled", "Cancelled by the user."),
        (KeyboardInterrupt(), "cancelled", "cancelled", "Interrupted from the keyboard."),
        (UserError("The folder is empty."), "failed", "user", "The folder is empty."),
        (MemoryError(), "failed", "memory", runs.OUT_OF_MEMORY),
        (RuntimeError("OOM when allocating tensor"), "failed", "memory", runs.OUT_OF_MEMORY),
        (OSError(errno.ENOSPC, "No space left on device"), "failed", "disk", runs.DISK_FULL),
        (OSError(errno.EFBIG, "File too large"), "failed", "disk", runs.DISK_FULL),  # RLIMIT_FSIZE
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "failed", "disk", runs.DISK_FULL),
        (_raised_while_handling(OSError(errno.ENOSPC, "No space")), "failed", "disk", runs.DISK_FULL),
        (ValueError("bad shape\nmore"), "failed", "error", "Training stopped with an error: bad shape"),
    ],
)
def test_recording_status_maps_every_outcome_in_one_place(tmp_path, error, state, kind, reason):
    run = runs.create_run(tmp_path, _config())
    with runs.recording_status(run) as outcome:
        if error is not None:
            raise error
    status = runs.read_status(run)
    assert status["state"] == outcome.state == state and status["kind"] == kind
    assert status["reason"].startswith(reason) and status["pid"] is None
    assert (outcome.error is None) == (state in ("finished", "cancelled"))
    if kind == "error":
        assert (
            "ValueError: bad shape" in (run / "worker.log").read_text()
        )  # the traceback, for people who debug


def test_best_run_prefers_your_own_and_the_output_dir_of_a_shipped_run(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    mine = []
    for acc in (0.7, 0.9, 0.8):
        d = runs.create_run(tmp_path / "models", _config())
        files.write_json(d / "metrics.json", {"val_accuracy": acc})
        mine.append(runs.read_run(d))
    demo = runs.create_run(tmp_path / "demo", _config())
    (demo / "model.keras").write_bytes(b"x")
    shipped = runs.read_run(demo)
    assert runs.best_run([shipped, *mine]).val_accuracy == 0.9
    assert runs.best_run([shipped]) is shipped
    assert shipped.shipped and shipped.output_dir("predictions").is_relative_to(tmp_path / "cache")
    assert mine[0].output_dir("predictions") == mine[0].path / "predictions"
