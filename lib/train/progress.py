"""A training run's session: progress reports, the log, history.csv and the stop check.

Progress dicts: {phase: "scan"|"features"|"head"|"train"|"fine-tune"|"saving", epoch, epochs, done,
total (images, features phase), logs, eta_seconds}. A stop request is noticed here and raised once
as Cancelled; lib.runs.recording_status catches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib import runs
from lib.errors import Cancelled

ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]


class Session:
    """What every phase of a run reports to (and where it learns that the user wants it to stop)."""

    def __init__(
        self,
        run_dir: Path,
        on_progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        time_limit: float = 0.0,
    ):
        self.run_dir = Path(run_dir)
        self.on_progress = on_progress
        self._should_stop = should_stop
        self.history: list[dict[str, Any]] = []
        self._last_features = 0.0
        self.started = time.perf_counter()
        self.time_limit = float(time_limit)  # seconds of wall clock (0: none)
        self.timed_out = False

    def out_of_time(self) -> bool:
        """Whether the run has used up its time limit: training phases then stop at the end of the
        current epoch and keep their best weights (the run ends as "stopped")."""
        if self.time_limit and time.perf_counter() - self.started >= self.time_limit:
            self.timed_out = True
        return self.timed_out

    def time_note(self) -> str:
        minutes = self.time_limit / 60
        return f"stopped at the time limit ({minutes:g} min): the best weights so far are kept"

    def report(self, **progress: Any) -> None:
        if self.on_progress is None:
            return
        if progress.get("phase") == "features" and progress.get("done") != progress.get("total"):
            now = time.monotonic()  # a batch takes ~50 ms: report a few times a second, not each one
            if now - self._last_features < 0.25:
                return
            self._last_features = now
        self.on_progress(progress)

    def stop_requested(self) -> bool:
        return self._should_stop is not None and bool(self._should_stop())

    def check_stop(self) -> None:
        """Raise Cancelled when the user asked the run to stop."""
        if self.stop_requested():
            raise Cancelled()

    def log(self, line: str) -> None:
        runs.append_log(self.run_dir, line)

    def epoch_end(self, phase: str, logs: dict[str, float], seconds: float) -> None:
        """Append an epoch to history.csv (rewritten atomically)."""
        self.history.append(
            {
                "epoch": len(self.history) + 1,
                "phase": phase,
                "loss": logs.get("loss"),
                "accuracy": logs.get("accuracy"),
                "val_loss": logs.get("val_loss"),
                "val_accuracy": logs.get("val_accuracy"),
                "seconds": round(seconds, 3),
            }
        )
        runs.write_history(self.run_dir, self.history)

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 2)

    def keras_callback(self, phase: str, epochs: int, target: float, extra_seconds: float = 0.0) -> Any:
        """A Keras callback that reports epochs, stops at the target accuracy and notices a stop
        request (Keras then ends fit() and the caller raises Cancelled)."""
        import keras  # fit() is running, so Keras is loaded already

        session = self

        class _Callback(keras.callbacks.Callback):
            reason = ""
            done = 0

            def on_train_begin(self, logs=None):
                self.start = time.perf_counter()
                self.epoch_start = self.start
                session.report(phase=phase, epoch=0, epochs=epochs, logs={}, eta_seconds=None)

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch_start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                if session.stop_requested():
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                logs = {k: float(v) for k, v in (logs or {}).items()}
                now = time.perf_counter()
                self.done += 1
                session.epoch_end(phase, logs, now - self.epoch_start)
                eta = (now - self.start) / self.done * (epochs - self.done) + extra_seconds
                session.report(
                    phase=phase, epoch=self.done, epochs=epochs, logs=logs, eta_seconds=round(eta, 1)
                )
                if target and logs.get("val_accuracy", 0.0) >= target:
                    self.reason = f"reached the target validation accuracy {target:.2%}"
                    self.model.stop_training = True
                if session.out_of_time():
                    self.reason = session.time_note()
                    self.model.stop_training = True
                if session.stop_requested():
                    self.model.stop_training = True

        return _Callback()
