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
