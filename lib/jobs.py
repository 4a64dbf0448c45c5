"""Background training jobs: each run trains in its own process and reports through its run folder.

A separate process means Cancel stops it at once, a crash can't take the app down, and its memory
goes back to the system when it ends. There is no scheduler daemon: a job waits in the queue until it
can take one of N slot locks (fcntl locks, released by the kernel even if the process dies).

Worker entry point: `python -m lib.jobs RUN_DIR`.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from lib import runs, settings
from lib.errors import UserError

CANCEL_FLAG = "cancel.request"
ACTIVE = ("queued", "running")
_children: list[subprocess.Popen] = []  # polled so finished workers don't linger as zombies


def max_concurrent() -> int:
    return max(1, settings.max_concurrent_jobs())


def start(config, runs_dir: Path) -> Path:
    """Create a queued run for `config` and launch its worker process; returns the run folder."""
    run_dir = runs.create_run(Path(runs_dir), config)
    _launch(run_dir)
    return run_dir


def resume(run_dir: Path) -> Path:
    """Restart an interrupted (or failed/cancelled) run in its own folder from its last checkpoint."""
    run_dir = Path(run_dir)
    if runs.read_status(run_dir).get("state") in ACTIVE:
        raise UserError("This run is still queued or running.")
    (run_dir / CANCEL_FLAG).unlink(missing_ok=True)
    runs.write_status(run_dir, "queued", reason="Resuming from the last checkpoint.")
    _launch(run_dir, resume=True)
    return run_dir


def _launch(run_dir: Path, resume: bool = False) -> None:
    args = [sys.executable, "-m", "lib.jobs", str(run_dir), "--slots", str(max_concurrent())]
    with open(run_dir / "worker.log", "ab") as log:
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
    runs.write_status(run_dir, "queued", pid=proc.pid)


def _reap() -> None:
    _children[:] = [p for p in _children if p.poll() is None]


def _pid_alive(pid: int | None) -> bool:
    return runs.process_alive({"pid": pid})


def cancel(run_dir: Path, wait: float = 5.0) -> None:
    """Ask a queued or running job to stop; kill it if it hasn't within `wait` seconds."""
    run_dir = Path(run_dir)
    status = runs.read_status(run_dir)
    if status.get("state") not in ACTIVE:
        return
    runs.write_atomic(run_dir / CANCEL_FLAG, "cancel\n")
    pid = status.get("pid")
    if _pid_alive(pid):
        try:
            os.killpg(int(pid), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.time() + wait
        while time.time() < deadline and _pid_alive(pid):
            time.sleep(0.1)
        if _pid_alive(pid):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if runs.read_status(run_dir).get("state") in ACTIVE:
        runs.write_status(run_dir, "cancelled", reason="Cancelled by the user.")


def reconcile(runs_dir: Path) -> list[Path]:
    """Mark runs left 'queued'/'running' by a dead process (server restart, crash) as interrupted."""
    _reap()
    changed = []
    for info in runs.list_runs(Path(runs_dir)):
        status = runs.read_status(info.path)
        if status.get("state") in ACTIVE and not runs.process_alive(status):
            runs.write_status(
                info.path,
                "interrupted",
                reason=(
                    "The training process stopped unexpectedly (the server restarted or the process "
                    "was killed). Its last checkpoint is kept: it can be resumed."
                ),
            )
            changed.append(info.path)
    return changed


def _jobs_dir() -> Path:
    """Slot locks and queue tickets are machine-wide (shared by every visitor's workspace)."""
    path = settings.cache_dir() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ticket_pid(ticket: Path) -> int:
    try:
        return int(ticket.name.split("-")[2])
    except (IndexError, ValueError):
        return 0


def queue_position(run_dir: Path) -> int:
    """1 for the next job to start; 0 when the run is not waiting in the queue."""
    status = runs.read_status(Path(run_dir))
    if status.get("state") != "queued":
        return 0
    waiting = sorted(t for t in _jobs_dir().glob("ticket-*") if runs.process_alive({"pid": _ticket_pid(t)}))
    mine = [i for i, t in enumerate(waiting, 1) if _ticket_pid(t) == status.get("pid")]
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


class _Cancelled(Exception):
    pass


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Cancelled()


def work(run_dir: Path, slots: int, resume: bool = False) -> int:
    """The worker: wait for a slot, train, and leave a final status whatever happens."""
    from lib import training

    run_dir = Path(run_dir)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cancel_flag = run_dir / CANCEL_FLAG
    try:
        # ticket-<ns>-<pid>: the file names order the queue (first come, first served)
        ticket = _jobs_dir() / f"ticket-{time.time_ns():020d}-{os.getpid()}"
        ticket.touch()
        try:
            slot = None
            while slot is None:
                if cancel_flag.exists():
                    raise _Cancelled()
                waiting = sorted(_jobs_dir().glob("ticket-*"))
                ahead = [t for t in waiting if t < ticket and runs.process_alive({"pid": _ticket_pid(t)})]
                slot = _take_slot(slots) if len(ahead) < slots else None
                if slot is None:
                    runs.write_status(run_dir, "queued", pid=os.getpid(), position=len(ahead) + 1)
                    time.sleep(1.0)
        finally:
            ticket.unlink(missing_ok=True)
        runs.write_status(run_dir, "running", pid=os.getpid(), progress={"phase": "starting"})
        config = training.TrainConfig.from_json((run_dir / "config.json").read_text())

        on_progress = runs.progress_writer(run_dir, pid=os.getpid())
        training.train(
            config, run_dir, on_progress=on_progress, should_stop=cancel_flag.exists, resume=resume
        )
        if cancel_flag.exists():
            raise _Cancelled()
        runs.write_status(run_dir, "finished", pid=None)
        return 0
    except (_Cancelled, KeyboardInterrupt):
        runs.write_status(run_dir, "cancelled", reason="Cancelled by the user.", pid=None)
        return 0
    except UserError as exc:
        runs.write_status(run_dir, "failed", reason=str(exc), pid=None)
        return 1
    except MemoryError:
        runs.write_status(
            run_dir,
            "failed",
            reason="Ran out of memory: try a smaller batch size or image size.",
            pid=None,
        )
        return 1
    except Exception as exc:  # the reason goes on the page, the traceback into the log
        with open(run_dir / "worker.log", "a") as log:
            traceback.print_exc(file=log)
        reason = _plain_reason(exc)
        runs.write_status(run_dir, "failed", reason=reason, pid=None)
        return 1


def _plain_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "OOM" in text or "out of memory" in text.lower():
        return "Ran out of memory: try a smaller batch size or image size."
    return f"Training stopped with an error: {text[:300]} (details in the run's worker.log)."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.jobs")
    parser.add_argument("run_dir")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    return work(Path(args.run_dir), args.slots, args.resume)


if __name__ == "__main__":
    sys.exit(main())
