"""Background training jobs: each run trains in its own process and reports through its run folder.

A separate process means Cancel stops it at once, a crash can't take the app down, and its memory
goes back to the system when it ends. There is no scheduler daemon: a job waits in the queue until it
can take one of N slot locks (fcntl locks, released by the kernel even if the process dies).
Processes are known by PID *and* start time, so a PID reused after a restart is never taken for a
worker (nor signalled by Cancel).

Worker entry point: `python -m lib.train.jobs RUN_DIR`. A worker waiting in the queue holds only
this module (about 20 MB): the training stack (numpy, pandas, TensorFlow …) is imported once it has
a slot, so a full queue costs the server little memory.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lib import files, runs, settings, workspace
from lib.errors import Cancelled, UserError
from lib.runs import Run
from lib.text import duration
from lib.train.config import TrainConfig, offline_retry
from lib.vocab import ACTIVE_STATES, DONE_STATES, EPOCH_PHASES, RESUMABLE_STATES, RUN_FILES

WATCHDOG_GRACE = 180.0  # seconds past the time limit before a worker that didn't stop ends itself
INTERRUPTED = (
    "The training process stopped unexpectedly (the server restarted or the process was killed). "
    "Its last checkpoint is kept: it can be resumed."
)
_children: list[subprocess.Popen] = []  # polled so finished workers don't linger as zombies


def max_concurrent() -> int:
    return max(1, settings.max_concurrent_jobs())


def start(config: TrainConfig, runs_dir: Path) -> Path:
    """Create a queued run for `config` and launch its worker process; returns the run folder.
    UserError (nothing created) when this visitor or the server may not start another job now."""
    with _admission():
        admit(Path(runs_dir))
        run_dir = runs.create_run(Path(runs_dir), config)
        _launch(run_dir)
    return run_dir


def resume(run_dir: Path) -> Path:
    """Restart an interrupted (or failed/cancelled) run in its own folder from its last checkpoint.
    Two tabs pressing Resume at once start one worker: the second is told the run is queued."""
    run_dir = Path(run_dir)
    with _admission():
        if runs.read_run(run_dir).state in ACTIVE_STATES:
            raise UserError("This run is already queued or running.")
        admit(run_dir.parent)
        (run_dir / RUN_FILES["cancel"]).unlink(missing_ok=True)
        runs.write_status(run_dir, "queued", reason="Resuming from the last checkpoint.")
        _launch(run_dir, resume=True)
    return run_dir


@contextlib.contextmanager
def _admission():
    """One start or resume at a time on the whole server, so the checks below can't race."""
    with open(_jobs_dir() / "admission.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def jobs_in_flight() -> int:
    """Jobs queued or running on the whole server: waiting tickets plus held slots."""
    held = 0
    for lock in _jobs_dir().glob("slot-*.lock"):
        with open(lock, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
            except OSError:
                held += 1
    return len(_live_tickets()) + held


def admit(runs_dir: Path) -> None:
    """UserError, in plain words, when another job may not start now: this visitor already has
    one (hosted), or the server's queue is full."""
    workspace.check_room(workspace.token_of(runs_dir))  # a full workspace starts no run
    if settings.one_job_per_workspace():
        mine = active_jobs(runs_dir)
        if mine:
            raise UserError(
                f"You already have a training run {mine[0].state} ({mine[0].name}): wait for it to finish, "
                "or cancel it, before starting another."
            )
    busy = jobs_in_flight()
    if busy >= settings.max_queued_jobs():
        raise UserError(
            f"The training queue of this server is full ({busy} jobs): try again in a few minutes."
        )


def _launch(run_dir: Path, resume: bool = False) -> None:
    """Start the worker; its place in the queue is taken now, so jobs start in the order they were asked for."""
    ticket = _jobs_dir() / f"ticket-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    ticket.touch()
    args = [
        sys.executable,
        "-m",
        "lib.train.jobs",
        str(run_dir),
        "--slots",
        str(max_concurrent()),
        "--ticket",
        str(ticket),
    ]
    with open(run_dir / RUN_FILES["worker_log"], "ab") as log:
        proc = subprocess.Popen(
            args + (["--resume"] if resume else []),
            cwd=settings.ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: Cancel kills it and its children
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    _children.append(proc)
    # the worker waits for these two (ticket first, status last: see _wait_for_launcher)
    files.write_json(ticket, {"pid": proc.pid, "pid_started": runs.process_started(proc.pid)})
    runs.write_status(run_dir, "queued", pid=proc.pid)


def _reap() -> None:
    _children[:] = [p for p in _children if p.poll() is None]


def cancel(run_dir: Path, wait: float = 5.0) -> None:
    """Ask a queued or running job to stop; kill it if it hasn't within `wait` seconds. Only the
    run's own worker is ever signalled (same PID and start time)."""
    run_dir = Path(run_dir)
    status = runs.read_status(run_dir)
    if status.get("state") not in ACTIVE_STATES:
        return
    files.write_atomic(run_dir / RUN_FILES["cancel"], "cancel\n")
    if runs.process_alive(status):
        pid = int(status["pid"])
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.time() + wait
            while time.time() < deadline and runs.process_alive(status):
                time.sleep(0.1)
            if not runs.process_alive(status):
                break
    if runs.read_status(run_dir).get("state") in ACTIVE_STATES:
        runs.write_status(run_dir, "cancelled", reason="Cancelled by the user.")


def delete(run_dir: Path) -> None:
    """Delete a run; a queued or running one is cancelled first (its worker is gone before the
    folder goes)."""
    if runs.read_run(run_dir).state in ACTIVE_STATES:
        cancel(run_dir)
    runs.delete_run(run_dir)


def limits_note() -> str:
    """This server's limits on training, in one sentence ("" when there are none worth saying)."""
    parts = []
    if minutes := settings.job_time_limit_minutes():
        parts.append(f"runs stop after {minutes:g} minutes (keeping their best weights)")
    if settings.one_job_per_workspace():
        parts.append("you can have one run queued or running at a time")
    return ("On this server, " + " and ".join(parts) + ".") if parts else ""


def active_jobs(runs_dir: Path) -> list[Run]:
    """Runs queued or running in this runs folder."""
    return [r for r in runs.list_runs(runs_dir) if r.state in ACTIVE_STATES]


def reconcile(runs_dir: Path) -> list[Path]:
    """Mark runs left 'queued'/'running' by a dead process (server restart, crash, kill) as
    interrupted, and remove the temporary files it left in the run folder (a half-written model or
    checkpoint: the server may run for weeks between the starts that clean up everywhere)."""
    _reap()
    changed = []
    for run in runs.list_runs(Path(runs_dir)):
        if run.status.get("state") in ACTIVE_STATES and run.state == "interrupted":
            runs.write_status(run.path, "interrupted", reason=INTERRUPTED)
            files.clean_temp_tree(run.path, 1)  # only files of processes that are gone
            changed.append(run.path)
    return changed


def _jobs_dir() -> Path:
    """Slot locks and queue tickets are machine-wide (shared by every visitor's workspace)."""
    path = settings.cache_dir() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


TICKET_GRACE = 30.0  # seconds a ticket may wait for its worker's identity to be written


def _ticket_owner(ticket: Path) -> dict:
    """The status-like identity ({pid, pid_started}) of a queue ticket's worker ({} while unknown)."""
    try:
        return files.read_json(ticket)
    except (OSError, ValueError):
        return {}


def _ticket_alive(ticket: Path) -> bool:
    owner = _ticket_owner(ticket)
    if owner.get("pid"):
        return runs.process_alive(owner)
    try:
        return time.time() - ticket.stat().st_mtime < TICKET_GRACE  # its worker is being started
    except OSError:
        return False


def _live_tickets() -> list[Path]:
    """Queue tickets of workers still alive, oldest first; tickets of dead workers are removed, so
    a crash can never block the queue."""
    live = []
    for ticket in sorted(_jobs_dir().glob("ticket-*")):
        if _ticket_alive(ticket):
            live.append(ticket)
        else:
            ticket.unlink(missing_ok=True)
    return live


def queue_position(run_dir: Path) -> int:
    """1 for the next job to start; 0 when the run is not waiting in the queue."""
    status = runs.read_status(Path(run_dir))
    if status.get("state") != "queued":
        return 0
    waiting = _live_tickets()
    mine = [i for i, t in enumerate(waiting, 1) if _ticket_owner(t).get("pid") == status.get("pid")]
    return mine[0] if mine else int(status.get("position") or len(waiting) + 1)


def _take_slot(slots: int):
    for i in range(slots):
        fh = open(_jobs_dir() / f"slot-{i}.lock", "w")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except OSError:
            fh.close()
    return None


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Cancelled()


def _wait_for_slot(run_dir: Path, slots: int, cancel_flag: Path, ticket: Path | None):
    """Queue (first come, first served, by ticket) until one of the slot locks is ours; returns it."""
    if ticket is None:  # started by hand: queue from now
        ticket = _jobs_dir() / f"ticket-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    files.write_json(ticket, {"pid": os.getpid(), "pid_started": runs.process_started(os.getpid())})
    try:
        while True:
            if cancel_flag.exists():
                raise Cancelled()
            ahead = [t for t in _live_tickets() if t.name < ticket.name]
            slot = _take_slot(slots) if len(ahead) < slots else None
            if slot is not None:
                return slot
            runs.write_status(run_dir, "queued", pid=os.getpid(), position=len(ahead) + 1)
            time.sleep(1.0)
    finally:
        ticket.unlink(missing_ok=True)


def _wait_for_launcher(run_dir: Path) -> None:
    """The app writes this worker's queue ticket and then its "queued" status (with its PID) just
    after starting it: wait for them (at most TICKET_GRACE s), so a worker that starts fast never has
    its own status overwritten by "queued", nor its ticket written again after it took a slot."""
    deadline = time.monotonic() + TICKET_GRACE
    while time.monotonic() < deadline and runs.read_status(run_dir).get("pid") != os.getpid():
        time.sleep(0.05)


def _watchdog(run_dir: Path, seconds: float) -> None:
    """A backstop behind the time limit: a run that has not stopped by itself soon after it (stuck
    in one long step) is ended by its own process, with a status saying why."""

    def guard() -> None:
        time.sleep(seconds)
        runs.write_status(
            run_dir,
            "failed",
            reason="Stopped at this server's time limit before a model could be saved.",
            kind="time_limit",
        )
        os._exit(1)

    threading.Thread(target=guard, name="time-limit", daemon=True).start()


def work(run_dir: Path, slots: int, resume: bool = False, ticket: Path | None = None) -> int:
    """The worker: wait for a slot, train, and leave a final status whatever happens."""
    run_dir = Path(run_dir)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cancel_flag = run_dir / RUN_FILES["cancel"]
    if ticket is not None:
        _wait_for_launcher(run_dir)
    with runs.recording_status(run_dir) as outcome:
        slot = _wait_for_slot(run_dir, slots, cancel_flag, ticket)  # noqa: F841 - held until the process ends
        if limit := settings.job_time_limit_minutes() * 60:
            _watchdog(run_dir, limit + WATCHDOG_GRACE)
        runs.write_status(run_dir, "running", pid=os.getpid(), progress={"phase": "starting"})
        from lib.train.recipe import train  # lazy: it brings TensorFlow, a queued worker stays small

        config = TrainConfig.from_file(run_dir / RUN_FILES["config"])
        on_progress = runs.progress_writer(run_dir, pid=os.getpid())
        metrics = train(
            config, run_dir, on_progress=on_progress, should_stop=cancel_flag.exists, resume=resume
        )
        if cancel_flag.exists():
            raise Cancelled()
        outcome.finished(metrics)
    return 0 if outcome.state in (*DONE_STATES, "cancelled") else 1


# ----------------------------------------------------------------------------------------------
# What the Train page shows of a job
# ----------------------------------------------------------------------------------------------


def current_job(runs_dir: Path, chosen: str | None = None) -> Run | None:
    """The job a page shows: the one this visitor started (when it still exists), else any queued
    or running job (locally every tab sees every job)."""
    if chosen and Path(chosen).is_dir():
        return runs.read_run(chosen)
    for run in runs.list_runs(runs_dir):
        if run.state in ACTIVE_STATES:
            return run
    return None


def just_ended(seen: tuple[str, str] | None, run: Run) -> bool:
    """Whether a job seen active (run id, state) on the last look has ended since."""
    return bool(seen) and seen[0] == run.id and seen[1] in ACTIVE_STATES and run.state not in ACTIVE_STATES


@dataclass
class JobView:
    """Everything the live job panel shows, in words."""

    run: Run
    state: str
    fraction: float | None = None  # progress bar, when there is one
    progress_text: str = ""
    eta_text: str = ""
    message: str = ""  # waiting, finished or failed sentence
    can_cancel: bool = False
    can_resume: bool = False
    retry: TrainConfig | None = None  # a config that works offline, after a download failure
    note: str = ""


def view(run: Run) -> JobView:
    """The live job panel of a run (queued, running, finished, failed, cancelled, interrupted)."""
    state = run.state
    progress = run.progress
    job = JobView(run=run, state=state)
    if state == "queued":
        position = run.status.get("position") or queue_position(run.path)
        job.message = f"Waiting for another training job to finish (position {position} in the queue)."
        job.can_cancel = True
    elif state == "running":
        job.can_cancel = True
        phase = progress.get("phase", "starting")
        if phase == "features":
            done, total = int(progress.get("done") or 0), int(progress.get("total") or 1)
            job.fraction = min(done / max(total, 1), 1.0)
            job.progress_text = f"Reading images through the base: {done:,}/{total:,}"
        elif phase in EPOCH_PHASES:
            epoch, epochs = int(progress.get("epoch") or 0), int(progress.get("epochs") or 1)
            job.fraction = min(epoch / max(epochs, 1), 1.0)
            label = "Fine-tuning" if phase == "fine-tune" else "Training"
            job.progress_text = f"{label}: epoch {epoch} of {epochs}"
        elif phase == "saving":
            job.fraction, job.progress_text = 1.0, "Saving the model…"
        else:
            job.fraction, job.progress_text = 0.0, "Starting (loading TensorFlow and the base model)…"
        if progress.get("eta_seconds") is not None:
            job.eta_text = f"About {duration(progress['eta_seconds'])} left."
    elif state in DONE_STATES:
        m = run.metrics
        job.message = (
            ("Stopped at this server's time limit" if state == "stopped" else "Finished")
            + f" in {duration(m.get('train_seconds'))}"
            + (
                f": validation accuracy **{m['val_accuracy']:.1%}**"
                if m.get("val_accuracy") is not None
                else ""
            )
            + (f", test accuracy **{m['test_accuracy']:.1%}**" if m.get("test_accuracy") is not None else "")
            + "."
        )
        job.note = " ".join(str(x) for x in (run.config.get("weights_note"), m.get("fine_tuning")) if x)
    else:
        job.message = f"{state.capitalize()}: {run.reason or 'no reason recorded'}"
        # A worker killed after saving model.keras but before finishing (detector, metrics, status)
        # leaves a model the app won't use (the run isn't finished): Resume is still the way on.
        job.can_resume = state in RESUMABLE_STATES
        if state == "failed" and run.status.get("kind") == "weights_unavailable":
            job.retry = offline_retry(TrainConfig.from_dict(run.config))
    return job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.train.jobs")
    parser.add_argument("run_dir")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--ticket", type=Path, default=None)
    args = parser.parse_args(argv)
    return work(Path(args.run_dir), args.slots, args.resume, args.ticket)


if __name__ == "__main__":
    sys.exit(main())
