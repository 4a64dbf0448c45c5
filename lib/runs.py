"""The runs store: one folder per training run, written atomically, readable from anywhere.

models/<run-id>/ holds config.json (everything to reproduce the run, plus classes, image size and
the dataset fingerprint), classes.txt, history.csv, model.keras, metrics.json, status.json, log.txt
and notes.md. Nothing in it is an absolute path the model needs, so a copied run folder opens
elsewhere. Renaming a run changes its display name (config.json "name"), never its folder, so a
job still writing into the folder is never disturbed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib import settings
from lib.errors import UserError

STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
FILES = {
    "config": "config.json",
    "classes": "classes.txt",
    "history": "history.csv",
    "model": "model.keras",
    "metrics": "metrics.json",
    "status": "status.json",
    "log": "log.txt",
    "notes": "notes.md",
}
HISTORY_COLUMNS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
MAX_NAME = 100


def _read_umask() -> int:
    """The process umask without changing it (os.umask would, briefly, for every thread)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_UMASK = _read_umask()


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write a file so readers see the old or the new content, never half of it (temp + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run folder is readable like any file
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, default=_jsonable, allow_nan=False) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file; ValueError when it isn't one (callers turn that into plain words)."""
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def append_log(run_dir: str | Path, line: str) -> None:
    """Append one timestamped line to log.txt (a single O_APPEND write: lines never interleave)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = "".join(f"{stamp} {part}\n" for part in str(line).splitlines() or [""])
    with open(Path(run_dir) / FILES["log"], "a", encoding="utf-8") as fh:
        fh.write(text)


# ----------------------------------------------------------------------------------------------
# Creating and reading runs
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
    write_json_atomic(candidate / FILES["config"], data)
    write_atomic(candidate / FILES["notes"], "")
    write_status(candidate, "queued")
    return candidate


def write_status(
    run_dir: str | Path,
    state: str,
    *,
    reason: str = "",
    pid: int | None = None,
    progress: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Record the run's state (queued, running, finished, failed, cancelled, interrupted) atomically."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    status = {
        "state": state,
        "reason": str(reason or ""),
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "pid": int(pid) if pid else None,
        "host": socket.gethostname(),
        "progress": progress or {},
        **extra,
    }
    write_json_atomic(Path(run_dir) / FILES["status"], status)
    return status


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The status as written; a missing or unreadable file reads as state "unknown" with a reason."""
    path = Path(run_dir) / FILES["status"]
    try:
        status = read_json(path)
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
    """Whether the process a status names is still running (on this machine)."""
    pid = status.get("pid")
    if not pid:
        return False
    if status.get("host") and status.get("host") != socket.gethostname():
        return False  # a run copied from another machine
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def progress_writer(run_dir: str | Path, *, pid: int | None = None, every: float = 0.5):
    """An on_progress callback for train() that writes status "running" (at most every `every` s,
    and always when the phase or epoch changes), so pages polling status.json see live progress."""
    last = {"t": 0.0, "key": None}

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
class RunInfo:
    """One row of the runs list; `damaged` says in plain words why a folder can't be used."""

    run_id: str
    path: Path
    name: str
    base: str = ""
    image_size: int | None = None
    state: str = "unknown"
    reason: str = ""
    created: str = ""
    updated: str = ""
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    classes: list[str] | None = None
    note: str = ""
    has_model: bool = False
    damaged: str | None = None
    progress: dict[str, Any] | None = None


def read_run_info(run_dir: str | Path) -> RunInfo:
    """Everything the runs list shows about one folder; never raises for a broken folder."""
    run_dir = Path(run_dir)
    info = RunInfo(run_id=run_dir.name, path=run_dir, name=run_dir.name)
    problems: list[str] = []
    config: dict[str, Any] = {}
    try:
        config = read_json(run_dir / FILES["config"])
    except FileNotFoundError:
        problems.append("config.json is missing")
    except (OSError, ValueError) as exc:
        problems.append(f"config.json cannot be read ({exc})")
    info.name = str(config.get("name") or run_dir.name)
    info.base = str(config.get("base") or "")
    info.created = str(config.get("created") or "")
    try:
        info.image_size = int(config["image_size"]) if config.get("image_size") else None
    except (TypeError, ValueError):
        problems.append("config.json has an invalid image size")
    classes = config.get("classes")
    info.classes = [str(c) for c in classes] if isinstance(classes, list) else None

    status = read_status(run_dir)
    info.state = str(status.get("state") or "unknown")
    info.reason = str(status.get("reason") or "")
    info.updated = str(status.get("updated") or "")
    info.progress = status.get("progress") if isinstance(status.get("progress"), dict) else {}
    if info.state in ACTIVE_STATES and not process_alive(status):
        info.state = "interrupted"
        info.reason = info.reason or "The training process stopped unexpectedly (it is no longer running)."

    info.has_model = (run_dir / FILES["model"]).is_file()
    if (run_dir / FILES["metrics"]).exists():
        try:
            metrics = read_json(run_dir / FILES["metrics"])
            info.val_accuracy = _maybe_float(metrics.get("val_accuracy"))
            info.test_accuracy = _maybe_float(metrics.get("test_accuracy"))
        except (OSError, ValueError) as exc:
            problems.append(f"metrics.json cannot be read ({exc})")
    if info.state == "finished" and not info.has_model:
        problems.append("the run finished but model.keras is missing")
    try:
        info.note = (run_dir / FILES["notes"]).read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"notes.md cannot be read ({exc})")
    if problems:
        info.damaged = "; ".join(problems) + "."
    return info


def _maybe_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _safe_run_info(run_dir: Path) -> RunInfo:
    try:
        return read_run_info(run_dir)
    except Exception as exc:  # noqa: BLE001 - e.g. a folder we may not read: list it as damaged
        return RunInfo(
            run_id=run_dir.name,
            path=run_dir,
            name=run_dir.name,
            damaged=f"the folder cannot be read ({exc}).",
        )


def list_runs(runs_dir: str | Path) -> list[RunInfo]:
    """All run folders under runs_dir, newest first; broken ones are listed with `damaged` set."""
    runs_dir = Path(runs_dir)
    try:
        entries = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    infos = [_safe_run_info(p) for p in entries]
    infos.sort(key=lambda i: (i.created or "", i.run_id), reverse=True)
    return infos


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """config.json as a dict; UserError in plain words when it's missing or broken."""
    path = Path(run_dir) / FILES["config"]
    try:
        return read_json(path)
    except FileNotFoundError as exc:
        raise UserError(f"{Path(run_dir)} is not a run folder: it has no config.json.") from exc
    except (OSError, ValueError) as exc:
        raise UserError(f"The run's config.json cannot be read ({exc}).") from exc


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """metrics.json as a dict ({} while the run has none yet)."""
    try:
        return read_json(Path(run_dir) / FILES["metrics"])
    except (OSError, ValueError):
        return {}


def read_run_config(run_dir: str | Path) -> tuple[dict[str, Any], list[str], int]:
    """A run's config, classes (the model's output order) and input size, checked; UserError in
    plain words for a missing folder, a missing or broken config.json, no classes or a bad size."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.exists():
        raise UserError(f"The run folder {run_dir} does not exist.")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run folder.")
    config_path = run_dir / FILES["config"]
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run folder: it has no config.json.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        raise UserError(f"The run's config.json cannot be read ({exc}).") from exc
    classes = config.get("classes")
    if not classes and (run_dir / FILES["classes"]).is_file():
        text = (run_dir / FILES["classes"]).read_text(encoding="utf-8")
        classes = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not isinstance(classes, list) or len(classes) < 1:
        raise UserError(f"The run in {run_dir} does not list its classes (config.json 'classes').")
    try:
        size = int(config.get("image_size"))
        if not 8 <= size <= 2048:
            raise ValueError(size)
    except (TypeError, ValueError) as exc:
        raise UserError(f"The run in {run_dir} has no valid image size (config.json 'image_size').") from exc
    return config, [str(c) for c in classes], size


def read_classes(run_dir: str | Path) -> list[str]:
    """The class ids in the model's output order (config.json, else classes.txt)."""
    classes = read_config(run_dir).get("classes")
    if isinstance(classes, list) and classes:
        return [str(c) for c in classes]
    path = Path(run_dir) / FILES["classes"]
    if path.is_file():
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    raise UserError(f"The run in {run_dir} does not list its classes.")


def read_history(run_dir: str | Path):
    """history.csv as a DataFrame (empty, with the usual columns, while there is none)."""
    import pandas as pd

    path = Path(run_dir) / FILES["history"]
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))


def write_history(run_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite history.csv with all epochs so far (small; atomic, so a reader never sees half a line)."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in rows:
        cells = []
        for col in HISTORY_COLUMNS:
            value = row.get(col)
            if value is None or (isinstance(value, float) and value != value):
                cells.append("")
            elif isinstance(value, float):
                cells.append(f"{value:.6g}")
            else:
                cells.append(str(value))
        lines.append(",".join(cells))
    write_atomic(Path(run_dir) / FILES["history"], "\n".join(lines) + "\n")


def load_model(run_dir: str | Path) -> Any:
    """The run's Keras model, checked first (lib.safety: only Keras and lib.layers classes, no Lambda),
    so a run copied or uploaded from elsewhere can't run code when it is opened."""
    from lib import safety

    path = Path(run_dir) / FILES["model"]
    if not path.is_file():
        state = read_status(run_dir).get("state")
        detail = f" (its state is {state})" if state and state not in ("finished", "unknown") else ""
        raise UserError(f"The run in {Path(run_dir)} has no saved model{detail}.")
    try:
        return safety.safe_load_model(path)
    except UserError as exc:
        raise UserError(f"The model of run {Path(run_dir).name} cannot be used: {exc}") from exc


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
    config = read_config(run_dir)
    config["name"] = clean
    write_json_atomic(Path(run_dir) / FILES["config"], config)
    return clean


def set_note(run_dir: str | Path, text: str) -> None:
    """Replace the run's notes.md (free text the user writes about the run)."""
    if not Path(run_dir).is_dir():
        raise UserError(f"The run folder {run_dir} does not exist.")
    write_atomic(Path(run_dir) / FILES["notes"], str(text))


def delete_run(run_dir: str | Path) -> None:
    """Delete a run folder (the caller has asked the user to confirm). Refuses a running job and
    anything that doesn't look like a run folder; the folder is first renamed away, so a half-deleted
    run never shows up in the list."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"The run folder {run_dir} does not exist.")
    if not any((run_dir / FILES[k]).exists() for k in ("config", "status")):
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
# Shipped runs
# ----------------------------------------------------------------------------------------------


def resolve_data_dir(value: str | Path | None) -> str | None:
    """A run's recorded dataset folder as an absolute path; a relative one (the shipped demo records
    "data/sample" so it works from any clone) is relative to the repository root."""
    if not value:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else settings.ROOT / path)


def writable_dir(path: str | Path) -> bool:
    """Whether files can be created in `path` (creating it if needed), tested by really writing."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
        return True
    except OSError:
        return False


def is_shipped(run_dir: str | Path) -> bool:
    """Runs shipped with the app (the demo) are read-only: caches and reports go elsewhere."""
    try:
        Path(run_dir).resolve().relative_to(settings.demo_dir().resolve())
    except ValueError:
        return False
    return True
