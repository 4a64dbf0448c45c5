"""The run store: one folder per training run, and the one `Run` record everything reads.

models/<run-id>/ holds config.json (everything to reproduce the run, plus classes, image size and
the dataset fingerprint), classes.txt, history.csv, model.keras, metrics.json, status.json, log.txt
and notes.md. Nothing in it is an absolute path the model needs, so a copied run folder opens
elsewhere. Renaming a run changes its display name (config.json "name"), never its folder, so a
job still writing into the folder is never disturbed.

`read_run` never raises (a broken folder comes back with `damaged` set, for lists); `open_run`
raises a UserError in plain words when a run can't be used for evaluation, prediction or export.
`recording_status` is the one place where the outcome of a training run becomes its status.
"""

from __future__ import annotations

import contextlib
import hashlib
import numbers
import os
import re
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from lib import files, settings
from lib.errors import Cancelled, UserError
from lib.text import csv_safe, first_line
from lib.vocab import ACTIVE_STATES, DONE_STATES, HISTORY_COLUMNS, RUN_FILES, RUN_STATES

MAX_NAME = 100
OUT_OF_MEMORY = "Ran out of memory: try a smaller batch size or image size."
DISK_FULL = "The disk is full: free some space (or delete old runs) and train again."


# ----------------------------------------------------------------------------------------------
# The Run record
# ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run folder as everything in the app sees it (read once; cheap: a few small JSON files)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    status: dict[str, Any] = field(default_factory=dict, repr=False)
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)
    note: str = ""
    damaged: str | None = None  # why the folder can't be used, in plain words

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.id)

    @property
    def base(self) -> str:
        return str(self.config.get("base") or "")

    @property
    def classes(self) -> list[str]:
        classes = self.config.get("classes")
        return [str(c) for c in classes] if isinstance(classes, list) else []

    @property
    def image_size(self) -> int | None:
        try:
            size = int(self.config["image_size"])
        except (KeyError, TypeError, ValueError):
            return None
        return size if 8 <= size <= 2048 else None

    @property
    def created(self) -> str:
        return str(self.config.get("created") or "")

    @property
    def state(self) -> str:
        """The recorded state, except that a queued/running run whose process died is "interrupted"."""
        state = str(self.status.get("state") or "unknown")
        if state in ACTIVE_STATES and not process_alive(self.status):
            return "interrupted"
        return state

    @property
    def reason(self) -> str:
        reason = str(self.status.get("reason") or "")
        if not reason and self.state == "interrupted":
            return "The training process stopped unexpectedly (it is no longer running)."
        return reason

    @property
    def updated(self) -> str:
        return str(self.status.get("updated") or "")

    @property
    def progress(self) -> dict[str, Any]:
        progress = self.status.get("progress")
        return progress if isinstance(progress, dict) else {}

    @property
    def val_accuracy(self) -> float | None:
        return _maybe_float(self.metrics.get("val_accuracy"))

    @property
    def test_accuracy(self) -> float | None:
        return _maybe_float(self.metrics.get("test_accuracy"))

    @property
    def model_path(self) -> Path:
        return self.path / RUN_FILES["model"]

    @property
    def unknown_path(self) -> Path:
        """The unknown-photo detector and temperature (runs trained before it have none)."""
        return self.path / RUN_FILES["unknown"]

    @property
    def has_model(self) -> bool:
        return self.model_path.is_file()

    @property
    def usable(self) -> bool:
        """Finished with a model and nothing damaged: can be evaluated, predicted and exported."""
        return self.state in DONE_STATES and self.has_model and not self.damaged

    @property
    def data_dir(self) -> str | None:
        """The dataset folder it was trained on, as an absolute path (see resolve_data_dir)."""
        return resolve_data_dir(self.config.get("data_dir"))

    @property
    def shipped(self) -> bool:
        return is_shipped(self.path)

    def model_identity(self) -> dict[str, int]:
        """What changes when the model file is replaced (cache keys of predictions and exports)."""
        st = self.model_path.stat()
        identity = {"mtime_ns": st.st_mtime_ns, "size": st.st_size}
        with contextlib.suppress(OSError):
            identity["unknown_mtime_ns"] = self.unknown_path.stat().st_mtime_ns
        return identity

    @property
    def writable(self) -> bool:
        """Whether derived files may be written into the run folder (never into the shipped demo)."""
        return not self.shipped and os.access(self.path, os.W_OK)

    def output_dir(self, kind: str) -> Path:
        """Where this run's derived files of `kind` (predictions, exports, reports) go: inside the
        run folder when it is writable, else a folder of the cache keyed by the run and its model
        (the shipped demo and read-only copies)."""
        if self.writable:
            inside = self.path if kind == "reports" else self.path / kind
            if files.writable_dir(inside):
                return inside
        ident = self.model_identity() if self.has_model else {}
        key = f"{self.path.resolve()}\0{ident.get('mtime_ns')}\0{ident.get('size')}"
        return settings.cache_dir() / kind / hashlib.sha1(key.encode()).hexdigest()[:16]

    def label(self) -> str:
        """How the run appears in pickers: name · base · date · validation accuracy."""
        acc = f" · val {self.val_accuracy:.1%}" if self.val_accuracy is not None else ""
        when = self.created[:16].replace("T", " ")
        return f"{self.name} · {self.base} · {when}{acc}"


def _maybe_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def read_run(run_dir: str | Path) -> Run:
    """Everything about one run folder; never raises: problems are listed in `damaged`."""
    run = Run(path=Path(run_dir))
    problems: list[str] = []
    try:
        run.config = files.read_json(run.path / RUN_FILES["config"])
    except FileNotFoundError:
        problems.append("config.json is missing")
    except (OSError, ValueError) as exc:
        problems.append(f"config.json cannot be read ({exc})")
    if run.config and not run.classes and (run.path / RUN_FILES["classes"]).is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = (run.path / RUN_FILES["classes"]).read_text(encoding="utf-8")
            run.config["classes"] = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if run.config.get("image_size") is not None and run.image_size is None:
        problems.append("config.json has an invalid image size")
    run.status = read_status(run.path)
    if (run.path / RUN_FILES["metrics"]).exists():
        try:
            run.metrics = files.read_json(run.path / RUN_FILES["metrics"])
        except (OSError, ValueError) as exc:
            problems.append(f"metrics.json cannot be read ({exc})")
    if run.state in DONE_STATES and not run.has_model:
        problems.append("the run finished but model.keras is missing")
    try:
        run.note = (run.path / RUN_FILES["notes"]).read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"notes.md cannot be read ({exc})")
    if problems:
        run.damaged = "; ".join(problems) + "."
    return run


def open_run(run_dir: str | Path, *, need_model: bool = True) -> Run:
    """A run that can be used (evaluated, predicted, exported), or a UserError saying why not."""
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise UserError(f"The run folder {path} does not exist.")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run folder.")
    if not (path / RUN_FILES["config"]).is_file():
        raise UserError(f"{path} is not a run folder: it has no config.json.")
    run = read_run(path)
    if not run.config:
        raise UserError(f"The run's config.json cannot be read ({run.damaged}).")
    if not run.classes:
        raise UserError(f"The run in {path} does not list its classes (config.json 'classes').")
    if run.image_size is None:
        raise UserError(f"The run in {path} has no valid image size (config.json 'image_size').")
    if need_model and not run.has_model:
        state = run.state
        detail = f" (its state is {state})" if state not in (*DONE_STATES, "unknown") else ""
        raise UserError(f"The run in {path} has no saved model (model.keras){detail}.")
    return run


def list_runs(runs_dir: str | Path) -> list[Run]:
    """All run folders under runs_dir, newest first; broken ones are listed with `damaged` set."""
    try:
        entries = [p for p in Path(runs_dir).iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    found = []
    for path in entries:
        try:
            found.append(read_run(path))
        except Exception as exc:  # noqa: BLE001 - e.g. a folder we may not read: list it as damaged
            found.append(Run(path=path, damaged=f"the folder cannot be read ({exc})."))
    found.sort(key=lambda r: (r.created, r.id), reverse=True)
    return found


def usable_runs(runs_dir: str | Path, *, demo: Path | None = None) -> list[Run]:
    """Finished runs with a model, newest first, then the shipped demo (read-only) when there is one."""
    done = [r for r in list_runs(runs_dir) if r.usable]
    if demo is not None:
        run = read_run(demo)
        if run.has_model and not run.damaged:
            run.config["name"] = "Demo: bean leaves"
            done.append(run)
    return done


def best_run(candidates: list[Run]) -> Run | None:
    """The newest best of the user's own runs (highest validation accuracy); the demo only when
    there is nothing else."""
    own = [r for r in candidates if not r.shipped]
    if not own:
        return candidates[0] if candidates else None
    return max(own, key=lambda r: (r.val_accuracy if r.val_accuracy is not None else -1.0, r.created))


SERVER_PATH_KEYS = ("data_dir", "dataset")


def public_config(run: Run, *, hosted: bool) -> dict[str, Any]:
    """The run's settings to show or hand out; on a hosted demo without the server's folders."""
    config = dict(run.config)
    if hosted:
        for key in SERVER_PATH_KEYS:
            config.pop(key, None)
        if registry_file := config.get("weights"):
            if str(registry_file).startswith("/"):
                config["weights"] = Path(str(registry_file)).name
    return config


def runs_table(found: list[Run]) -> list[dict[str, Any]]:
    """Rows of the runs table on the Train page and of `python -m lib runs`."""
    return [
        {
            "run": r.name,
            "id": r.id,
            "base": r.base,
            "state": f"damaged: {r.damaged}" if r.damaged else r.state,
            "val accuracy": r.val_accuracy,
            "test accuracy": r.test_accuracy,
            "created": r.created[:19].replace("T", " "),
            "note": r.note,
        }
        for r in found
    ]


# ----------------------------------------------------------------------------------------------
# Creating runs
# ----------------------------------------------------------------------------------------------


def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if is_dataclass(config) and not isinstance(config, type):
        return asdict(config)
    return dict(config)


def new_run_id(base: str, now: datetime | None = None) -> str:
    """UTC timestamp plus base name, e.g. 20261124-013000-MobileNetV2 (made unique by create_run)."""
    now = now or datetime.now(UTC)
    safe = re.sub(r"[^A-Za-z0-9]+", "", str(base)) or "run"
    return f"{now.strftime('%Y%m%d-%H%M%S')}-{safe}"


def create_run(runs_dir: str | Path, config: Any) -> Path:
    """Make a new run folder with config.json, status "queued" and an empty notes.md; returns it.

    A TrainConfig is checked and resolved first (UserError before any folder exists), so
    config.json already names the image size and canonical base.
    """
    if hasattr(config, "resolved"):
        config = config.resolved()
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"The runs folder {runs_dir} cannot be created ({exc.strerror or exc}).") from exc
    data = _config_dict(config)
    run_id = new_run_id(data.get("base", "run"))
    for n in range(1, 1000):
        candidate = runs_dir / (run_id if n == 1 else f"{run_id}-{n}")
        try:
            candidate.mkdir()  # atomic: two jobs started in the same second get different folders
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"The runs folder {runs_dir} is not writable ({exc.strerror or exc}).") from exc
    else:  # pragma: no cover - a thousand runs in one second
        raise UserError("Too many runs started at the same moment; try again.")
    data.setdefault("name", candidate.name)
    data.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    files.write_json(candidate / RUN_FILES["config"], data)
    files.write_atomic(candidate / RUN_FILES["notes"], "")
    write_status(candidate, "queued")
    return candidate


# ----------------------------------------------------------------------------------------------
# Status and process identity
# ----------------------------------------------------------------------------------------------


def process_started(pid: int | None) -> float | None:
    """When process `pid` started (psutil create_time), or None when there is no such process."""
    if not pid:
        return None
    try:
        return psutil.Process(int(pid)).create_time()
    except (psutil.Error, ValueError, OverflowError):
        return None


def write_status(
    run_dir: str | Path,
    state: str,
    *,
    reason: str = "",
    pid: int | None = None,
    progress: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Record the run's state atomically, with the worker's PID and its start time (so a PID reused
    after a restart is never mistaken for the worker)."""
    if state not in RUN_STATES:
        raise ValueError(f"unknown run state {state!r}")
    status = {
        "state": state,
        "reason": str(reason or ""),
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "pid": int(pid) if pid else None,
        "pid_started": process_started(pid),
        "host": socket.gethostname(),
        "progress": progress or {},
        **extra,
    }
    files.write_json(Path(run_dir) / RUN_FILES["status"], status)
    return status


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The status as written; a missing or unreadable file reads as state "unknown" with a reason."""
    path = Path(run_dir) / RUN_FILES["status"]
    try:
        status = files.read_json(path)
    except FileNotFoundError:
        return {"state": "unknown", "reason": "The run has no status file.", "progress": {}, "pid": None}
    except (OSError, ValueError) as exc:
        return {
            "state": "unknown",
            "reason": f"The status file cannot be read ({exc}).",
            "progress": {},
            "pid": None,
        }
    status.setdefault("progress", {})
    status.setdefault("reason", "")
    status.setdefault("pid", None)
    return status


def process_alive(status: dict[str, Any]) -> bool:
    """Whether the worker a status names is still running on this machine: same PID *and* the same
    start time, so another process that got the PID later never counts."""
    pid = status.get("pid")
    if not pid:
        return False
    if status.get("host") and status.get("host") != socket.gethostname():
        return False  # a run copied from another machine
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = status.get("pid_started")
        return started is None or abs(proc.create_time() - float(started)) < 0.01
    except (psutil.Error, ValueError, OverflowError, TypeError):
        return False


def progress_writer(run_dir: str | Path, *, pid: int | None = None, every: float = 0.5):
    """An on_progress callback for train() that writes status "running" (at most every `every` s,
    and always when the phase or epoch changes), so pages polling status.json see live progress."""
    last: dict[str, Any] = {"t": 0.0, "key": None}

    def on_progress(progress: dict[str, Any]) -> None:
        key = (progress.get("phase"), progress.get("epoch"))
        now = time.monotonic()
        if key != last["key"] or now - last["t"] >= every:
            last.update(t=now, key=key)
            write_status(run_dir, "running", pid=pid or os.getpid(), progress=_plain(progress))

    return on_progress


def _plain(value: Any) -> Any:
    """Progress dicts may hold numpy floats; JSON wants plain values (and no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


@dataclass
class Outcome:
    """How a training run ended, as recording_status saw it."""

    state: str = "finished"  # a caller may set "stopped" (time limit) before the block ends
    reason: str = ""
    kind: str = ""  # what kind of failure (errors' `kind`, "memory", "disk", "error")
    error: BaseException | None = None

    def finished(self, metrics: dict[str, Any]) -> None:
        """Note how a run that returned normally ended (the time limit makes it "stopped")."""
        if metrics.get("time_limited"):
            self.state, self.kind = "stopped", "time_limit"
            self.reason = str(
                metrics.get("stopped") or "Stopped at the time limit; the best weights are kept."
            )


def _looks_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or "OOM" in text or "out of memory" in text.lower()


@contextlib.contextmanager
def recording_status(run_dir: str | Path) -> Iterator[Outcome]:
    """The one place a training run's outcome becomes its status: finished, cancelled (Cancelled,
    Ctrl-C, SIGTERM), or failed with a plain reason (UserError's own words, out of memory, disk
    full, anything else with its traceback in worker.log). Swallows the exception; the caller reads
    `outcome.error` to decide its exit code."""
    run_dir = Path(run_dir)
    outcome = Outcome()
    try:
        yield outcome
    except (Cancelled, KeyboardInterrupt) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        outcome.state, outcome.kind = "cancelled", "cancelled"
        outcome.reason = "Interrupted from the keyboard." if interrupted else "Cancelled by the user."
        append_log(run_dir, outcome.reason)
    except UserError as exc:
        outcome.state, outcome.reason, outcome.kind, outcome.error = "failed", str(exc), exc.kind, exc
    except Exception as exc:  # the reason goes on the page, the traceback into the log
        outcome.state, outcome.error = "failed", exc
        if _looks_out_of_memory(exc):
            outcome.reason, outcome.kind = OUT_OF_MEMORY, "memory"
        elif files.is_disk_full(exc):  # no space left, over a quota or over a file-size limit
            outcome.reason, outcome.kind = DISK_FULL, "disk"
        else:
            outcome.kind = "error"
            outcome.reason = (
                f"Training stopped with an error: {first_line(exc)} (details in the run's worker.log)."
            )
            with contextlib.suppress(OSError), open(run_dir / RUN_FILES["worker_log"], "a") as log:
                traceback.print_exception(exc, file=log)
    write_status(run_dir, outcome.state, reason=outcome.reason, kind=outcome.kind)


# ----------------------------------------------------------------------------------------------
# Logs and history
# ----------------------------------------------------------------------------------------------


def append_log(run_dir: str | Path, line: str) -> None:
    """Append timestamped lines to log.txt (one O_APPEND write: lines never interleave)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = "".join(f"{stamp} {part}\n" for part in str(line).splitlines() or [""])
    with contextlib.suppress(OSError):
        files.append_line(Path(run_dir) / RUN_FILES["log"], text)


def read_history(run_dir: str | Path):
    """history.csv as a DataFrame (empty, with the usual columns, while there is none)."""
    import pandas as pd

    try:
        return pd.read_csv(Path(run_dir) / RUN_FILES["history"])
    except (OSError, ValueError):
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))


def _csv_text(value: object) -> str:
    """A text cell of history.csv: formula-safe, and quoted when it holds a comma, quote or line break."""
    text = str(csv_safe(str(value)))
    if any(ch in text for ch in ',"\r\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def write_history(run_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite history.csv with all epochs so far (small; atomic, so a reader never sees half a line)."""
    lines = [",".join(_csv_text(c) for c in HISTORY_COLUMNS)]
    for row in rows:
        cells = []
        for col in HISTORY_COLUMNS:
            value = row.get(col)
            if value is None or (isinstance(value, float) and value != value):
                cells.append("")
            elif isinstance(value, float):
                cells.append(f"{value:.6g}")
            elif isinstance(value, numbers.Real):  # ints, numpy numbers
                cells.append(str(value))
            else:  # text (the phase): never a spreadsheet formula, never a broken row
                cells.append(_csv_text(value))
        lines.append(",".join(cells))
    files.write_atomic(Path(run_dir) / RUN_FILES["history"], "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# Changing runs
# ----------------------------------------------------------------------------------------------


def rename_run(run_dir: str | Path, name: str) -> str:
    """Set the run's display name (config.json "name"); the folder and run id stay as they are."""
    clean = re.sub(r"\s+", " ", str(name)).strip()
    if not clean:
        raise UserError("A run name can't be empty.")
    if len(clean) > MAX_NAME:
        raise UserError(f"A run name can be at most {MAX_NAME} characters long.")
    run = open_run(run_dir, need_model=False)
    config = dict(run.config)
    config["name"] = clean
    files.write_json(run.path / RUN_FILES["config"], config)
    return clean


def set_note(run_dir: str | Path, text: str) -> None:
    """Replace the run's notes.md (free text the user writes about the run)."""
    if not Path(run_dir).is_dir():
        raise UserError(f"The run folder {run_dir} does not exist.")
    files.write_atomic(Path(run_dir) / RUN_FILES["notes"], str(text))


def delete_run(run_dir: str | Path) -> None:
    """Delete a run folder (the caller has asked the user to confirm). Refuses a running job and
    anything that doesn't look like a run folder; the folder is first renamed away, so a half-deleted
    run never shows up in the list."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"The run folder {run_dir} does not exist.")
    if not any((run_dir / RUN_FILES[k]).exists() for k in ("config", "status")):
        raise UserError(
            f"{run_dir} does not look like a run folder (no config.json or status.json); not deleted."
        )
    status = read_status(run_dir)
    if status.get("state") in ACTIVE_STATES and process_alive(status):
        raise UserError("This run is still training: cancel it before deleting it.")
    trash = run_dir.parent / f".deleting-{run_dir.name}-{uuid.uuid4().hex[:8]}"
    os.rename(run_dir, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Where runs live
# ----------------------------------------------------------------------------------------------


def resolve_data_dir(value: str | Path | None) -> str | None:
    """A run's recorded dataset folder as an absolute path; a relative one (the shipped demo records
    "data/sample" so it works from any clone) is relative to the repository root."""
    if not value:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else settings.ROOT / path)


def is_shipped(run_dir: str | Path) -> bool:
    """Runs shipped with the app (the demo) are read-only: caches and reports go elsewhere."""
    try:
        Path(run_dir).resolve().relative_to(settings.demo_dir().resolve())
    except ValueError:
        return False
    return True
