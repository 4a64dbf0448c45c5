"""Faults a training worker meets in real life, with real worker processes and real files.

- SIGKILL at 20 seeded random moments spread over the worker's phases: after each, the runs list
  loads, no run is left "running", nothing half-written is left where a reader would take it for
  real, the queue is free, and the run resumes; in the end it finishes and its model predicts.
- A disk that really fills up (a small tmpfs, filled by "another program" while the worker writes
  its feature cache entry, then model.keras), and a file-size limit (RLIMIT_FSIZE) on
  `python -m lib train`: the run fails as "disk full" in plain words, nothing half-written is left,
  earlier runs are untouched, and with room again a new run works.

The runs are cheap on purpose: the tiny colour set, 32 px, 3 head epochs, and SmallCNN with a
weights file (a frozen base: features cached, head checkpointed, the same path as a pretrained
MobileNetV2, but cheap to build); the Keras engine (no LiteRT conversion). Workers are forked from a
warm interpreter that imported TensorFlow once (tests/train/warm.py), except the "starting" kills,
which hit fresh `python -m lib.train.jobs` processes while they start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import resource
import signal
import subprocess
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from lib import files, runs, settings, storage
from lib.train import features, jobs
from lib.train.config import TrainConfig
from lib.vocab import ACTIVE_STATES, RUN_FILES

SEED = 20261207
POLL = 0.01  # seconds between looks at a worker's status.json
# Where the kills land, in the order a run goes through them, and how many each gets.
KILLS = {
    "queued": 2,  # waiting for a slot
    "starting": 3,  # a fresh `python -m lib.train.jobs` in its first second: scanning, importing TensorFlow
    "scan": 3,  # scanning, building the base, starting to decode
    "features": 3,  # the feature pass, into a temporary cache entry renamed at its end
    "head": 3,  # head epochs on cached features, a checkpoint after each
    "saving": 3,  # writing model.keras (through a temporary file)
    "finishing": 3,  # the unknown-photo detector, summary, metrics.json, the final status
}
PHASES = tuple(KILLS)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STUDIO_ENGINE", "keras")  # no LiteRT conversion (30 s here): not what is tested
    monkeypatch.setenv("STUDIO_MAX_JOBS", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


class Launcher:
    """Stands in for the `subprocess` module in lib.train.jobs: workers start as forks of the warm
    interpreter, or (warm = False) as real `python -m lib.train.jobs` processes."""

    STDOUT, DEVNULL = subprocess.STDOUT, subprocess.DEVNULL

    def __init__(self, warm_python):
        self.warm_python = warm_python
        self.warm = True
        self.last = None

    def Popen(self, args, **kw):  # noqa: N802 - the name lib.train.jobs calls
        self.last = self.warm_python.popen(args, **kw) if self.warm else subprocess.Popen(args, **kw)
        return self.last


def _config(data: Path, weights: Path) -> TrainConfig:
    return TrainConfig(
        data_dir=str(data),
        base="SmallCNN",
        weights=str(weights),
        image_size=32,
        epochs=3,
        early_stopping=0,
        seed=1,
    )


def _cpu_seconds(warm_python) -> float:
    """CPU time used so far by this process, its reaped children and the warm server with its reaped
    children (wall time says little on a machine others load too)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    server = psutil.Process(warm_python.proc.pid).cpu_times()
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + sum(server[:4])


def _took(began: float, cpu: float, warm_python) -> str:
    return (
        f"{time.monotonic() - began:.0f} s ({_cpu_seconds(warm_python) - cpu:.0f} s of CPU; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )


# ----------------------------------------------------------------------------------------------
# Watching a worker
# ----------------------------------------------------------------------------------------------


def _written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def _writing(run_dir: Path) -> str:
    """Which big atomic write is under way, seen from its temporary file: "features" (the cache
    entry), "model" (model.keras) or ""."""
    if any(features.features_dir().glob(f"{files.TEMP_PREFIX}*")):
        return "features"
    if any(run_dir.glob(f"{files.TEMP_PREFIX}{RUN_FILES['model']}*")):
        return "model"
    return ""


def _phase(run_dir: Path, since: float) -> str | None:
    """Where the run's worker is, in KILLS' terms (None: not started yet; "ended": it has ended)."""
    status = runs.read_status(run_dir)
    state = status["state"]
    if state == "queued":
        return "queued" if status.get("position") else None  # written by the waiting worker itself
    if state != "running":
        return "ended"
    phase = status["progress"].get("phase") or "starting"
    if phase in ("starting", "scan"):
        return "features" if _writing(run_dir) == "features" else "scan"
    if phase == "saving" and _written_since(run_dir / RUN_FILES["model"], since):
        return "finishing"
    return phase


ORDER = {"queued": 0, "starting": 1, "scan": 1, "features": 2, "head": 3, "fine-tune": 4}
ORDER |= {"saving": 5, "finishing": 6, "ended": 7}


def _reached(run_dir: Path, since: float, target: str) -> str | None:
    """The phase the worker is in once it has reached `target`'s moment (the feature pass and the
    model write from their temporary files' first sight), else None."""
    phase = _phase(run_dir, since)
    if phase is None:
        return None
    if target == "saving" and phase == "saving":
        return phase if _writing(run_dir) == "model" else None
    return phase if ORDER[phase] >= ORDER[target] else None


def _follow(run_dir: Path, since: float, timeout: float = 600.0) -> dict[str, float]:
    """Seconds from `since` to the first sight of each phase (and of model.keras being written),
    until the run ends."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = _phase(run_dir, since)
        for name in (phase, "writing model" if _writing(run_dir) == "model" else None):
            if name is not None and name not in seen:
                seen[name] = time.time() - since
        if phase == "ended":
            return seen
        time.sleep(POLL)
    raise AssertionError(f"the run did not end: {runs.read_status(run_dir)}")


def _durations(seen: dict[str, float]) -> dict[str, float]:
    """How long each moment of the measured run lasted (the scale of its kills' random delays)."""
    spans = {
        "scan": ("scan", "features"),
        "features": ("features", "head"),  # the pass, writing the entry, building the head's trainer
        "head": ("head", "saving"),
        "saving": ("writing model", "finishing"),  # writing model.keras
        "finishing": ("finishing", "ended"),
    }
    lasted = {k: max(seen.get(b, 0.0) - seen.get(a, seen.get(b, 0.0)), 0.05) for k, (a, b) in spans.items()}
    return {"queued": 1.5, "starting": 1.0, **lasted}  # the queue is polled every second


@contextlib.contextmanager
def _slot_taken():
    """Another job holds the only slot: a worker started now waits in the queue."""
    with open(jobs._jobs_dir() / "slot-0.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------
# What must hold after a kill
# ----------------------------------------------------------------------------------------------


def _predicts_and_nothing_else_changed(warm_python, run_dir: Path, image: Path, log: Path, untouched) -> None:
    """The finished run predicts `image` (the CLI, JSON ok) and the folders in `untouched` are as
    they were snapshotted."""
    code = warm_python.run("lib", "predict", "--run", str(run_dir), "--json", str(image), log=log)
    assert code == 0 and '"ok": true' in log.read_text(), log.read_text()[-3000:]
    for folder, before in untouched.items():
        assert _snapshot(folder) == before


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder with a digest of its bytes (to show a run was left untouched)."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _temporaries(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob(f"{files.TEMP_PREFIX}*")]


def _assert_whole(run_dir: Path) -> None:
    """Every file a reader opens is complete: JSON parses, CSV reads, archives open."""
    for path in run_dir.glob("*.json"):
        files.read_json(path)  # raises on half a file
    assert files.read_json(run_dir / RUN_FILES["config"]).get("base") == "SmallCNN"
    if (run_dir / RUN_FILES["history"]).exists():
        history = runs.read_history(run_dir)
        assert list(history["epoch"]) == list(range(1, len(history) + 1)), history
    for name in (RUN_FILES["checkpoint"], RUN_FILES["unknown"]):
        if (run_dir / name).exists():
            with np.load(run_dir / name) as archive:
                assert archive.files
    if (run_dir / RUN_FILES["model"]).exists():
        with zipfile.ZipFile(run_dir / RUN_FILES["model"]) as archive:
            assert archive.testzip() is None


def _assert_recovered(runs_dir: Path, run_dir: Path, untouched: dict[Path, dict[str, str]]) -> None:
    """What the app sees after the kill: reconciled, listable, resumable, nothing half-written."""
    jobs.reconcile(runs_dir)  # the Train page does this on every visit...
    assert not _temporaries(run_dir)  # ...and clears what the dead worker was writing there
    storage.clean_temp_files(runs_dir)  # the app does this when it starts (the cache's too)
    listed = runs.list_runs(runs_dir)
    assert {r.path for r in listed} == {run_dir, *untouched}
    for run in listed:
        assert not run.damaged, (run.id, run.damaged)
        assert run.state not in ACTIVE_STATES and runs.read_status(run.path)["state"] not in ACTIVE_STATES
    assert runs.runs_table(listed)
    run = runs.read_run(run_dir)
    assert run.state == "interrupted" and "stopped unexpectedly" in run.reason
    assert jobs.view(run).can_resume, "the app must offer Resume"
    _assert_whole(run_dir)
    assert not _temporaries(runs_dir, settings.cache_dir())
    for entry in features._entries():  # a feature entry under its real name is a whole one
        assert features._open(entry) is not None, entry
    assert jobs.jobs_in_flight() == 0, f"a killed worker must not block the queue: {_queue_state()}"
    for folder, files_before in untouched.items():
        assert _snapshot(folder) == files_before, f"{folder.name} was touched"


def _gone(pid: int) -> bool:
    """Dead, every thread exited (so the kernel has released its files and locks), maybe a zombie
    until the app reaps it (jobs.reconcile does)."""
    try:
        return (
            psutil.Process(pid).status() == psutil.STATUS_ZOMBIE and len(os.listdir(f"/proc/{pid}/task")) <= 1
        )
    except (psutil.NoSuchProcess, FileNotFoundError):
        return True


def _queue_state() -> dict[str, str]:
    found = {}
    for path in sorted(jobs._jobs_dir().iterdir()):
        text = path.read_text()[:200] if path.name.startswith("ticket-") else ""
        if path.name.startswith("slot-"):
            with open(path, "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fh, fcntl.LOCK_UN)
                    text = "free"
                except OSError:
                    text = "held"
        found[path.name] = text
    return found


def _kill(launcher: Launcher, run_dir: Path, phase: str, delay: float) -> SimpleNamespace:
    """Start the worker, wait for `phase` (or a later one), wait `delay` s, SIGKILL its process group."""
    since = time.time()
    started = time.monotonic()
    while (trigger := _reached(run_dir, since, phase)) is None:
        if time.monotonic() - started > 600:
            raise AssertionError(f"never reached {phase}: {runs.read_status(run_dir)}")
        time.sleep(POLL)
    time.sleep(delay)
    at = _phase(run_dir, since)
    at += " (writing model.keras)" if at == "saving" and _writing(run_dir) == "model" else ""
    proc = launcher.last
    if at != "ended":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own process group
    deadline = time.monotonic() + 60
    while not _gone(proc.pid) and time.monotonic() < deadline:
        time.sleep(POLL)
    return SimpleNamespace(trigger=trigger, at=at, seconds=time.monotonic() - started)


@pytest.mark.timeout(1800)  # twenty worker lifetimes: minutes when others load the machine too
def test_sigkill_at_random_moments_leaves_runs_listable_resumable_and_whole(
    tiny_dataset, small_cnn_weights, tmp_path, monkeypatch, warm_python
):
    began, cpu = time.monotonic(), _cpu_seconds(warm_python)
    runs_dir = tmp_path / "models"
    launcher = Launcher(warm_python)
    monkeypatch.setattr(jobs, "subprocess", launcher)
    config = _config(tiny_dataset, small_cnn_weights)

    # One whole run, its phases timed: the scale of the random delays (and a run later kills must
    # leave untouched).
    first = jobs.start(config, runs_dir)
    seen = _follow(first, time.time() - 0.01)
    assert runs.read_status(first)["state"] == "finished", (first / "worker.log").read_text()[-3000:]
    durations = _durations(seen)
    untouched = {first: _snapshot(first)}
    features.clear_feature_cache()  # the next run computes its features again (and can be killed doing so)

    # In phase order, like a run that keeps being killed a little later: the head's epochs get their
    # kills before a checkpoint holds them all (a resumed head has nothing left to do).
    rng = np.random.default_rng(SEED)
    plan = [(phase, float(rng.random())) for phase in PHASES for _ in range(KILLS[phase])]
    run_dir: Path | None = None
    report = []
    for n, (phase, u) in enumerate(plan, 1):
        if phase in ("scan", "features"):
            features.clear_feature_cache()  # evicted meanwhile: the pass runs again
        launcher.warm = phase != "starting"
        with _slot_taken() if phase == "queued" else contextlib.nullcontext():
            run_dir = jobs.resume(run_dir) if run_dir else jobs.start(config, runs_dir)
            kill = _kill(launcher, run_dir, phase, u * durations[phase])
        if kill.at == "ended":  # it finished before the kill: a new run takes the next kills
            assert runs.read_status(run_dir)["state"] == "finished"
            untouched[run_dir] = _snapshot(run_dir)
            run_dir = None
        else:
            _assert_recovered(runs_dir, run_dir, untouched)
        report.append(
            f"{n:2d}. {phase:9s} +{u * durations[phase]:5.2f} s: killed in {kill.at} ({kill.seconds:.1f} s)"
        )
        print(report[-1], flush=True)

    # The last resume runs to the end: epochs continue from the checkpoint, the model predicts.
    launcher.warm = True
    run_dir = jobs.resume(run_dir) if run_dir else jobs.start(config, runs_dir)
    _follow(run_dir, time.time())
    run = runs.read_run(run_dir)
    assert run.state == "finished" and run.usable, (run_dir / "worker.log").read_text()[-3000:]
    history = runs.read_history(run_dir)
    assert list(history["phase"]) == ["head"] * 3 and run.metrics["epochs_run"] == 3
    assert not (run_dir / RUN_FILES["checkpoint"]).exists()
    assert not _temporaries(runs_dir, settings.cache_dir())
    _predicts_and_nothing_else_changed(
        warm_python, run_dir, next((tiny_dataset / "red").iterdir()), tmp_path / "predict.log", untouched
    )
    jobs.reconcile(runs_dir)  # reaps the last workers (their CPU time counts then)
    print(
        f"\n{len(plan)} kills; measured run: "
        + ", ".join(f"{p} {s:.1f} s" for p, s in seen.items())
        + "\n"
        + "\n".join(report)
        + f"\nfault injection took {_took(began, cpu, warm_python)}"
    )


# ----------------------------------------------------------------------------------------------
# A disk that really fills up
# ----------------------------------------------------------------------------------------------

PAGE = 4096


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A real 8 MB file system (tmpfs) holding the runs and the cache, unmounted afterwards. Skipped
    where mounting isn't allowed (not root); the file-size-limit test below runs everywhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True
        )
    except OSError as exc:
        pytest.skip(f"no mount command here ({exc})")
    if done.returncode:
        pytest.skip(f"a tmpfs can't be mounted here: {done.stderr.strip()}")
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(disk / "cache"))
    monkeypatch.setenv("STUDIO_MIN_FREE_MB", "0")  # the disk fills up during the writes, not before
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk: Path, leave: int = PAGE) -> Path:
    """Fill the disk as another program would, to all but `leave` bytes; returns its file."""
    filler = disk / "someone-elses-file"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, PAGE, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
        os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
    finally:
        os.close(fd)
    return filler


def _pause_when_written(pid: int, folder: Path, pattern: str, run_dir: Path) -> bool:
    """Stop the worker (SIGSTOP) as soon as a file matching `pattern` appears in `folder`; False when
    the run ended or went past it first."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if any(folder.glob(pattern)):
            os.killpg(pid, signal.SIGSTOP)
            if any(folder.glob(pattern)):
                return True
            os.killpg(pid, signal.SIGCONT)  # it had just finished that file
            return False
        if runs.read_status(run_dir)["state"] not in ACTIVE_STATES:
            return False
        time.sleep(0.002)
    raise AssertionError(f"{pattern} never appeared in {folder}")


def _wait_end(run_dir: Path, timeout: float = 600.0) -> dict:
    """The status once the worker has ended (one that died without a last word reads "running")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runs.read_run(run_dir).state not in ACTIVE_STATES:
            return runs.read_status(run_dir)
        time.sleep(0.05)
    raise AssertionError(f"the run did not end: {runs.read_status(run_dir)}")


def _fill_while_writing(launcher: Launcher, config: TrainConfig, runs_dir: Path, disk: Path, where: str):
    """Start a run and fill the disk when it starts writing `where` ("features" or "model"); retried
    when the write was over before the test saw it. Returns (run folder, final status, filler)."""
    for _attempt in range(3):
        run_dir = jobs.start(config, runs_dir)
        folder, pattern = (
            (features.features_dir(), f"{files.TEMP_PREFIX}*")
            if where == "features"
            else (run_dir, f"{files.TEMP_PREFIX}{RUN_FILES['model']}*")
        )
        folder.mkdir(parents=True, exist_ok=True)
        pid = launcher.last.pid
        caught = _pause_when_written(pid, folder, pattern, run_dir)
        filler = _fill(disk) if caught else None
        if caught:
            os.killpg(pid, signal.SIGCONT)
        status = _wait_end(run_dir)
        if caught:
            return run_dir, status, filler
        jobs.delete(run_dir)
        features.clear_feature_cache()
    raise AssertionError(f"the {where} write was never caught in the act")


def _fake_earlier_run(runs_dir: Path, config: TrainConfig) -> tuple[Path, Path]:
    """A finished run and a feature cache entry from before the disk filled up."""
    earlier = runs.create_run(runs_dir, config)
    (earlier / RUN_FILES["model"]).write_bytes(os.urandom(200_000))
    files.write_json(earlier / RUN_FILES["metrics"], {"val_accuracy": 0.9})
    runs.write_status(earlier, "finished")
    entry = features.features_dir() / ("0" * 32)
    entry.mkdir(parents=True)
    np.save(entry / "features.npy", np.ones((10, 256), np.float16))
    np.save(entry / "train_items.npy", np.arange(6))
    files.write_json(entry / "meta.json", {"n_items": 10, "views": 0})
    return earlier, entry


def test_a_disk_filling_up_while_features_or_the_model_are_written_fails_the_run_as_disk_full(
    small_disk, tiny_dataset, small_cnn_weights, monkeypatch, warm_python
):
    began, cpu = time.monotonic(), _cpu_seconds(warm_python)
    launcher = Launcher(warm_python)
    monkeypatch.setattr(jobs, "subprocess", launcher)
    runs_dir = small_disk / "models"
    config = _config(tiny_dataset, small_cnn_weights)
    earlier, entry = _fake_earlier_run(runs_dir, config)
    untouched = {earlier: _snapshot(earlier), entry: _snapshot(entry)}

    def assert_failed_cleanly(run_dir: Path, status: dict) -> None:
        assert status["state"] == "failed" and status["kind"] == "disk", status
        assert status["reason"].startswith("The disk is full"), status  # plain words, no errno
        assert not (run_dir / RUN_FILES["model"]).exists()
        assert not _temporaries(runs_dir, settings.cache_dir())  # nothing half-written left behind
        assert jobs.view(runs.read_run(run_dir)).can_resume
        for entry_dir in features._entries():  # every entry under a real name is a whole one
            assert features._open(entry_dir) is not None, entry_dir
        for folder, before in untouched.items():
            assert _snapshot(folder) == before, f"{folder.name} was touched"
        assert all(r.state not in ACTIVE_STATES and not r.damaged for r in runs.list_runs(runs_dir))

    # 1. The disk fills up while the feature pass writes its cache entry.
    run_dir, status, filler = _fill_while_writing(launcher, config, runs_dir, small_disk, "features")
    assert_failed_cleanly(run_dir, status)
    reasons = [status["reason"]]
    assert features._entries() == [entry]  # no entry of the failed pass
    filler.unlink()

    # 2. The disk fills up while model.keras is written (the features were written before).
    run_dir, status, filler = _fill_while_writing(launcher, config, runs_dir, small_disk, "model")
    assert_failed_cleanly(run_dir, status)
    reasons.append(status["reason"])
    assert "Computed features" in (run_dir / RUN_FILES["log"]).read_text()  # nothing half-made was used
    assert len(features._entries()) == 2
    filler.unlink()

    # 3. With room again, a new run works (on the features run 2 wrote) and its model predicts.
    run_dir = jobs.start(config, runs_dir)
    status = _wait_end(run_dir)
    run = runs.read_run(run_dir)
    assert status["state"] == "finished" and run.usable, (run_dir / "worker.log").read_text()[-3000:]
    assert run.metrics["feature_cache"] == "hit"
    _predicts_and_nothing_else_changed(
        warm_python, run_dir, next((tiny_dataset / "blue").iterdir()), small_disk / "predict.log", untouched
    )
    jobs.reconcile(runs_dir)  # reaps the workers (their CPU time counts then)
    print(
        f"\nfeature write: {reasons[0]}\nmodel saving: {reasons[1]}\n"
        f"full-disk test took {_took(began, cpu, warm_python)}"
    )


def test_a_file_size_limit_fails_a_cli_run_as_disk_full(
    tiny_dataset, small_cnn_weights, tmp_path, warm_python
):
    """`python -m lib train` under RLIMIT_FSIZE: model.keras (1.6 MB) can't be written, the feature
    cache (50 KB) can; writes past the limit fail with EFBIG (SIGXFSZ is ignored)."""
    began, cpu = time.monotonic(), _cpu_seconds(warm_python)
    runs_dir, log = tmp_path / "models", tmp_path / "train.log"
    args = ["--data", str(tiny_dataset), "--base", "SmallCNN", "--weights", str(small_cnn_weights)]
    args += ["--image-size", "32", "--epochs", "2", "--runs-dir", str(runs_dir), "--quiet"]
    code = warm_python.run("lib", "train", *args, log=log, fsize=512 * 1024)
    (run_dir,) = runs_dir.iterdir()
    status = runs.read_status(run_dir)
    assert code == 1 and f"error: {runs.DISK_FULL}" in log.read_text(), log.read_text()[-3000:]
    assert status["state"] == "failed" and status["kind"] == "disk" and status["reason"] == runs.DISK_FULL
    assert not (run_dir / RUN_FILES["model"]).exists()
    assert not _temporaries(runs_dir, settings.cache_dir())
    (entry,) = features._entries()
    assert features._open(entry) is not None  # written below the limit: whole, and kept
    print(f"\nfile-size-limit test took {_took(began, cpu, warm_python)}")
