"""lib.train.jobs: a real worker process per run; finish, queue, cancel, failure and restart states,
process identity (a reused PID is never signalled), what the Train page shows of a job."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import files, runs
from lib.errors import Cancelled, UserError
from lib.models import registry
from lib.train import jobs
from lib.train.config import TrainConfig
from lib.train.recipe import train
from tests.conftest import share_converted_models


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, converted_models):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(share_converted_models(tmp_path / "cache", converted_models)))


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


def _config(data: Path, **kw) -> TrainConfig:
    options = dict(base="SmallCNN", weights="none", image_size=32, epochs=3) | kw
    return TrainConfig(data_dir=str(data), **options)


def test_job_finishes_and_the_next_one_waits_in_the_queue(tiny_dataset, tmp_path):
    runs_dir = tmp_path / "models"
    first = jobs.start(_config(tiny_dataset), runs_dir)
    second = jobs.start(_config(tiny_dataset, seed=7), runs_dir)
    _wait(first, {"running"})
    status = _wait(second, {"queued"})
    assert jobs.queue_position(second) == 1
    assert _wait(first, {"finished", "failed"})["state"] == "finished", runs.read_status(first)
    assert (first / "model.keras").is_file() and runs.read_run(first).metrics["epochs_run"] >= 1
    # the queued job cancelled before it starts: it never trains
    jobs.cancel(second)
    status = runs.read_status(second)
    assert status["state"] == "cancelled" and not (second / "model.keras").exists()


def test_a_job_waiting_in_the_queue_holds_little_memory(tiny_dataset, tmp_path):
    """A full queue (STUDIO_MAX_QUEUED_JOBS workers, most of them waiting) must not cost the server
    a training stack per waiting worker: numpy, pandas and TensorFlow load once a job has its slot
    (a waiting worker used to hold 108 MB, 5 of them half a gigabyte)."""
    import psutil

    slot = jobs._take_slot(1)  # the only slot is busy: the job has to wait
    try:
        run_dir = jobs.start(_config(tiny_dataset), tmp_path / "models")
        deadline = time.time() + 120
        while "position" not in (status := runs.read_status(run_dir)) and time.time() < deadline:
            time.sleep(0.2)  # the worker writes its position once it waits in the queue
        assert status.get("state") == "queued" and status.get("position") == 1, status
        worker = psutil.Process(status["pid"])
        maps = Path(f"/proc/{worker.pid}/maps")
        if maps.exists():
            assert "_multiarray_umath" not in maps.read_text(), "a waiting worker imported numpy"
        assert worker.memory_info().rss < 50 * 2**20, worker.memory_info()
        jobs.cancel(run_dir)
        assert runs.read_status(run_dir)["state"] == "cancelled"
    finally:
        slot.close()


def test_cancel_stops_a_running_job_at_once(tiny_dataset, tmp_path):
    run_dir = jobs.start(_config(tiny_dataset, epochs=400, early_stopping=0), tmp_path / "models")
    status = _wait(run_dir, {"running"})
    jobs.cancel(run_dir)
    assert runs.read_status(run_dir)["state"] == "cancelled"
    assert not runs.process_alive(status)  # the worker is gone (SIGTERM, then SIGKILL after 5 s)
    jobs.delete(run_dir)  # deleting right after cancelling works
    assert not run_dir.exists()


def test_bad_weights_file_fails_with_a_plain_reason(tiny_dataset, tmp_path):
    bad = tmp_path / "weights.h5"
    bad.write_text("not weights")
    config = TrainConfig(
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
    dead = 2**22 + 12345
    runs.write_status(run_dir, "running", pid=dead, progress={"phase": "head", "epoch": 2})
    half = run_dir / f"{files.TEMP_PREFIX}model.keras.{dead}.0123abcd.keras"  # it was saving the model
    half.write_bytes(b"half a model")
    assert jobs.reconcile(runs_dir) == [run_dir]
    status = runs.read_status(run_dir)
    assert status["state"] == "interrupted" and "stopped unexpectedly" in status["reason"]
    assert not half.exists()
    # a live run is left alone
    other = runs.create_run(runs_dir, _config(tiny_dataset))
    runs.write_status(other, "running", pid=os.getpid())
    assert jobs.reconcile(runs_dir) == []


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_dataset, tmp_path):
    runs_dir = tmp_path / "models"
    config = TrainConfig(
        data_dir=str(tiny_dataset),
        base="MobileNetV2",
        weights=str(
            registry.get_base("MobileNetV2").bundled
        ),  # frozen base: the head trains on cached features
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

    with pytest.raises(Cancelled):
        train(config, run_dir, on_progress=on_progress, should_stop=crash_after_five)
    assert not (run_dir / "model.keras").exists()
    assert (run_dir / "checkpoint.npz").is_file(), "the last good checkpoint is kept"
    runs.write_status(run_dir, "running", pid=2**22 + 4321)
    assert jobs.reconcile(runs_dir) == [run_dir]
    assert "resumed" in runs.read_status(run_dir)["reason"]

    jobs.resume(run_dir)
    status = _wait(run_dir, {"finished", "failed"})
    assert status["state"] == "finished", status
    history = runs.read_history(run_dir)
    assert list(history["epoch"]) == list(range(1, 13)), "epochs continue where the checkpoint left off"
    assert "Resumed from the checkpoint of epoch 5" in (run_dir / "log.txt").read_text()
    assert not (run_dir / "checkpoint.npz").exists()


def test_a_run_killed_after_saving_its_model_but_before_finishing_can_be_resumed(tiny_dataset, tmp_path):
    runs_dir = tmp_path / "models"
    run_dir = runs.create_run(runs_dir, _config(tiny_dataset))
    (run_dir / "model.keras").write_bytes(b"a model saved before the detector and metrics.json")
    runs.write_status(run_dir, "running", pid=2**22 + 4321, progress={"phase": "saving"})
    assert jobs.reconcile(runs_dir) == [run_dir]
    run = runs.read_run(run_dir)
    assert run.state == "interrupted" and not run.usable  # the app never uses that model...
    assert jobs.view(run).can_resume  # ...and offers to resume the run


def test_cancel_never_signals_a_process_that_only_shares_the_pid(tiny_dataset, tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = runs.create_run(tmp_path / "models", _config(tiny_dataset))
        runs.write_status(run_dir, "running", pid=bystander.pid)
        status = runs.read_status(run_dir)
        # as if the worker died and the PID went to another process after a restart
        files.write_json(run_dir / "status.json", {**status, "pid_started": status["pid_started"] - 100})
        jobs.cancel(run_dir, wait=0.5)
        assert bystander.poll() is None, "the bystander was signalled"
        assert runs.read_status(run_dir)["state"] == "cancelled"
    finally:
        bystander.kill()
        bystander.wait()


def test_tickets_of_dead_workers_are_cleared_so_the_queue_never_blocks(tmp_path):
    jobs_dir = jobs._jobs_dir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = jobs_dir / f"ticket-{time.time_ns():020d}-a"
    files.write_json(stale, {"pid": dead.pid, "pid_started": 1.0})
    reused = jobs_dir / f"ticket-{time.time_ns():020d}-b"  # our PID, another start time
    files.write_json(reused, {"pid": os.getpid(), "pid_started": runs.process_started(os.getpid()) - 50})
    starting = jobs_dir / f"ticket-{time.time_ns():020d}-c"  # a worker being started: kept a while
    starting.touch()
    old = jobs_dir / f"ticket-{time.time_ns():020d}-d"
    old.touch()
    os.utime(old, (time.time() - 600, time.time() - 600))
    assert jobs._live_tickets() == [starting]
    assert not stale.exists() and not reused.exists() and not old.exists()


def test_the_job_view_says_what_to_show(tiny_dataset, tmp_path):
    run_dir = runs.create_run(tmp_path / "models", _config(tiny_dataset))
    runs.write_status(
        run_dir,
        "running",
        pid=os.getpid(),
        progress={"phase": "head", "epoch": 3, "epochs": 12, "eta_seconds": 95},
    )
    view = jobs.view(runs.read_run(run_dir))
    assert view.can_cancel and view.fraction == 0.25 and view.progress_text == "Training: epoch 3 of 12"
    assert view.eta_text == "About 1 min 35 s left."
    runs.write_status(
        run_dir, "running", pid=os.getpid(), progress={"phase": "features", "done": 30, "total": 120}
    )
    assert jobs.view(runs.read_run(run_dir)).progress_text == "Reading images through the base: 30/120"
    runs.write_status(
        run_dir, "failed", reason="Could not download the ImageNet weights.", kind="weights_unavailable"
    )
    view = jobs.view(runs.read_run(run_dir))
    assert view.message.startswith("Failed: Could not download") and not view.can_cancel
    assert view.retry is not None and view.retry.weights == "bundled" and view.retry.base == "MobileNetV2"
    runs.write_status(run_dir, "failed", reason="Ran out of memory.", kind="memory")
    assert jobs.view(runs.read_run(run_dir)).retry is None
    seen = (run_dir.name, "running")
    assert jobs.just_ended(seen, runs.read_run(run_dir)) and not jobs.just_ended(None, runs.read_run(run_dir))


def test_the_time_limit_stops_training_keeps_the_best_weights_and_ends_as_stopped(tiny_dataset, tmp_path):
    config = TrainConfig(data_dir=str(tiny_dataset), weights="bundled", epochs=50, early_stopping=0, seed=3)
    run_dir = runs.create_run(tmp_path / "models", config)
    with runs.recording_status(run_dir) as outcome:
        metrics = train(config, run_dir, time_limit=1e-6)  # over at the first check
        outcome.finished(metrics)
    run = runs.read_run(run_dir)
    assert metrics["time_limited"] and metrics["epochs_run"] == 1
    assert "time limit" in metrics["stopped"] and run.has_model
    assert run.state == "stopped" and run.usable and "time limit" in run.reason
    assert jobs.view(run).message.startswith("Stopped at this server's time limit")


def test_a_visitor_gets_one_job_at_a_time_and_the_server_queue_has_a_cap(tiny_dataset, tmp_path, monkeypatch):
    runs_dir = tmp_path / "models"
    busy = runs.create_run(runs_dir, _config(tiny_dataset))
    runs.write_status(busy, "running", pid=os.getpid())
    monkeypatch.setenv("STUDIO_ONE_JOB_PER_WORKSPACE", "1")
    with pytest.raises(UserError, match="already have a training run running"):
        jobs.start(_config(tiny_dataset), runs_dir)
    assert len(list(runs_dir.iterdir())) == 1  # nothing was created
    monkeypatch.setenv("STUDIO_ONE_JOB_PER_WORKSPACE", "0")
    monkeypatch.setenv("STUDIO_MAX_QUEUED_JOBS", "1")
    ticket = jobs._jobs_dir() / f"ticket-{time.time_ns():020d}-x"
    files.write_json(ticket, {"pid": os.getpid(), "pid_started": runs.process_started(os.getpid())})
    try:
        with pytest.raises(UserError, match=r"queue of this server is full \(1 jobs\)"):
            jobs.start(_config(tiny_dataset), tmp_path / "other")
    finally:
        ticket.unlink()


def test_two_tabs_pressing_resume_start_one_worker(tiny_dataset, tmp_path):
    run_dir = runs.create_run(tmp_path / "models", _config(tiny_dataset, epochs=2))
    runs.write_status(run_dir, "interrupted", reason="the server restarted")
    jobs.resume(run_dir)
    with pytest.raises(UserError, match="already queued or running"):
        jobs.resume(run_dir)
    assert _wait(run_dir, {"finished", "failed"})["state"] == "finished"
    assert (
        len([line for line in (run_dir / "log.txt").read_text().splitlines() if "Training SmallCNN" in line])
        == 1
    )
