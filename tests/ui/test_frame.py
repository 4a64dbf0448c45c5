"""lib.ui.frame: an unexpected error on a page shows a stranger no traceback when hosted (it is
logged on the server in full), and everything when the app runs locally."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lib.ui import frame

ROOT = Path(__file__).resolve().parents[2]
SECRET = "boom in /srv/studio/secret_path.py"


@pytest.fixture
def failing_home(tmp_path, monkeypatch):
    """The home page fails at its last line (frame.hosted_note) with SECRET; restores the option."""
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STUDIO_RUNS_DIR", str(tmp_path / "models"))

    def fail() -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(frame, "hosted_note", fail)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(frame.__name__).addHandler(handler)
    yield records
    logging.getLogger(frame.__name__).removeHandler(handler)
    monkeypatch.delenv("STUDIO_HOSTED", raising=False)
    frame.error_details()  # back to the configured value for the tests that follow


def _open_home() -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert len(at.exception) == 1
    return at


def test_hosted_an_error_shows_no_traceback_but_is_logged(failing_home, monkeypatch):
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    shown = _open_home().exception[0]
    assert not shown.stack_trace
    assert SECRET not in shown.value and "secret_path" not in str(shown.proto)
    assert not shown.proto.type  # not even the exception's class
    logged = [r for r in failing_home if r.exc_info and SECRET in str(r.exc_info[1])]
    assert logged, "the server log still has the error"


def test_locally_an_error_shows_its_message_and_traceback(failing_home, monkeypatch):
    monkeypatch.delenv("STUDIO_HOSTED", raising=False)
    shown = _open_home().exception[0]
    assert SECRET in shown.value
    assert any("hosted_note" in line or "fail" in line for line in shown.stack_trace)


FREEZE_CHECK = """
import gc
from lib.ui import frame

assert not frame.freeze_old_objects(now=0.0)  # no TensorFlow yet: nothing to do
import tensorflow  # noqa: F401
assert gc.get_freeze_count() == 0
scanned_before = len(gc.get_objects())
assert frame.freeze_old_objects(now=1.0)
print(scanned_before, gc.get_freeze_count(), len(gc.get_objects()))
assert not frame.freeze_old_objects(now=1.0 + frame.REFREEZE_SECONDS - 1)  # frozen recently
assert frame.freeze_old_objects(now=1.0 + frame.REFREEZE_SECONDS)  # unfrozen, collected, frozen again
"""


def test_tensorflow_objects_leave_the_garbage_collectors_sight():
    """Streamlit collects garbage after every rerun (and Keras's clear_session collects again):
    once TensorFlow is loaded its objects are frozen, so a click doesn't pay for scanning them."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_CHECK],
        cwd=root,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, frozen, scanned = (int(x) for x in done.stdout.split()[-3:])
    assert before > 100_000 and frozen > 100_000  # TensorFlow's objects, out of the collector's sight
    assert scanned < before // 20  # what a collection still walks through
