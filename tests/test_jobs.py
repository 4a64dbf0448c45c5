"""Background jobs: a real worker process per run; finish, queue, cancel, failure and restart states."""

import os
import time
from pathlib import Path

import pytest

from lib import jobs, runs, settings, training


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


def _wait(run_dir: Path, states, timeout=180.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = runs.read_status(run_dir)
        if status["state"] in states:
            return status
        time.sleep(0.3)
    raise AssertionError(
        f"run stayed {runs.read_status(run_dir)} (log: {(run_dir / 'worker.log').read_text()})"
    )


def _config(data: Path, **kw) -> training.TrainConfig:
    options = dict(base="SmallCNN", weights="none", image_size=32, epochs=3) | kw
    return training.TrainConfig(data_dir=str(data), **options)


def test_job_finishes_and_the_next_one_waits_in_the_queue(tiny_dataset, tmp_path):
    runs_dir = tmp_path / "models"
    first = jobs.start(_config(tiny_dataset), runs_dir)
    second = jobs.start(_config(tiny_dataset, seed=7), runs_dir)
    _wait(first, {"running"})
    status = _wait(second, {"queued"})
    assert jobs.queue_position(second) == 1
    assert _wait(first, {"finished", "failed"})["state"] == "finished", runs.read_status(first)
    assert (first / "model.keras").is_file() and runs.read_metrics(first)["epochs_run"] >= 1
    # the queued job cancelled before it starts: it never trains
    jobs.cancel(second)
    status = runs.read_status(second)
    assert status["state"] == "cancelled" and not (second / "model.keras").exists()


def test_cancel_stops_a_running_job_at_once(tiny_dataset, tmp_path):
    run_dir = jobs.start(_config(tiny_dataset, epochs=400, early_stopping=0), tmp_path / "models")
    status = _wait(run_dir, {"running"})
    pid = status["pid"]
    started = time.time()
    jobs.cancel(run_dir)
    assert time.time() - started < 8
    assert runs.read_status(run_dir)["state"] == "cancelled"
    assert not runs.process_alive({"pid": pid})


def test_bad_weights_file_fails_with_a_plain_reason(tiny_dataset, tmp_path):
    bad = tmp_path / "weights.h5"
    bad.write_text("not weights")
    config = training.TrainConfig(
        data_dir=str(tiny_dataset), base="MobileNetV2", weights=str(bad), image_size=96, epochs=1
    )
    run_dir = jobs.start(config, tmp_path / "models")
    status = _wait(run_dir, {"failed", "finished"})
    assert status["state"] == "failed"
    assert "weights" in status["reason"].lower() and "Traceback" not in status["reason"]


def test_restart_marks_orphaned_runs_interrupted(tiny_dataset, tmp_path):
    runs_dir = tmp_path / "models"
    run_dir = runs.create_run(runs_dir, _config(tiny_dataset))
    # a pid that cannot be alive: as if the server restarted while this run was training
    runs.write_status(run_dir, "running", pid=2**22 + 12345, progress={"phase": "head", "epoch": 2})
    assert jobs.reconcile(runs_dir) == [run_dir]
    status = runs.read_status(run_dir)
    assert status["state"] == "interrupted" and "stopped unexpectedly" in status["reason"]
    # a live run is left alone
    other = runs.create_run(runs_dir, _config(tiny_dataset))
    runs.write_status(other, "running", pid=os.getpid())
    assert jobs.reconcile(runs_dir) == []


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_dataset, tmp_path):
    runs_dir = tmp_path / "models"
    config = training.TrainConfig(
        data_dir=str(tiny_dataset),
        base="MobileNetV2",
        weights=str(settings.bundled_weights()),  # frozen base: the head trains on cached features
        image_size=32,
        epochs=12,
        early_stopping=0,
    )
    run_dir = runs.create_run(runs_dir, config)
    epochs_seen = []

    def crash_after_five() -> bool:  # stands in for the server dying mid-training
        return len(epochs_seen) >= 5

    def on_progress(p):
        if p.get("phase") == "head" and p.get("epoch"):
            epochs_seen.append(p["epoch"])

    result = training.train(config, run_dir, on_progress=on_progress, should_stop=crash_after_five)
    assert result.get("cancelled") and not (run_dir / "model.keras").exists()
    assert (run_dir / training.CHECKPOINT).is_file(), "the last good checkpoint is kept"
    runs.write_status(run_dir, "running", pid=2**22 + 4321)
    assert jobs.reconcile(runs_dir) == [run_dir]
    assert "resumed" in runs.read_status(run_dir)["reason"]

    jobs.resume(run_dir)
    status = _wait(run_dir, {"finished", "failed"})
    assert status["state"] == "finished", status
    history = runs.read_history(run_dir)
    assert list(history["epoch"]) == list(range(1, 13)), "epochs continue where the checkpoint left off"
    assert "Resumed from the checkpoint of epoch 5" in (run_dir / "log.txt").read_text()
    assert not (run_dir / training.CHECKPOINT).exists()
