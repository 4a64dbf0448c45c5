"""Warm Python for the fault tests: `python -m MODULE ...` processes without importing TensorFlow
each time.

Importing TensorFlow costs 5-30 s of a shared 2-core machine, and the fault tests start a worker
process some twenty times. So one server process (`python -m tests.train.warm`) imports TensorFlow,
Keras and the worker's modules once, runs no TensorFlow op itself (forking stays safe), and for each
request forks a child that behaves like `python -m MODULE ARGS` started by subprocess.Popen: its own
session (start_new_session), the working folder and environment asked for, stdin from /dev/null,
stdout and stderr appended to a file, an optional RLIMIT_FSIZE, sys.argv set and the module run as
__main__. Everything the child then does (statuses, files, locks, signals, SIGKILL) is real; only
"exec a fresh interpreter" is replaced by "fork a warm one". Like Popen, the server reaps a child only
when asked (poll/wait), so a killed worker stays a zombie until the app's jobs._reap polls it.

`WarmPython.popen` takes Popen's arguments, so `lib.train.jobs._launch` can start its workers
through it unchanged (tests swap `jobs.subprocess` for `WarmPython.subprocess_module()`).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import runpy
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# The server (runs in its own process)
# ----------------------------------------------------------------------------------------------


def _child(request: dict[str, Any], reply_fd: int) -> None:
    """In the forked child: become `python -m MODULE ARGS` as Popen would have started it; never returns."""
    code = 1
    try:
        os.close(reply_fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
        if request.get("new_session"):
            os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's stdout
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        if request.get("fsize"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
        sys.argv = [request["module"], *request["args"]]
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - like an uncaught exception in `python -m`
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _returncode(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve() -> None:
    """Import the heavy modules once, then answer one JSON request per stdin line."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the imports print must not land in the replies
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import lib.cli  # noqa: F401
    import lib.train.jobs  # noqa: F401
    from lib.models import build, loader  # noqa: F401
    from lib.train import detect, finetune, head, recipe  # noqa: F401

    reply.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "spawn":
                pid = os.fork()
                if pid == 0:
                    _child(request, reply.fileno())
                answer: dict[str, Any] = {"pid": pid}
            elif op in ("poll", "wait"):
                flags = os.WNOHANG if op == "poll" else 0
                done, status = os.waitpid(request["pid"], flags)
                answer = {"returncode": _returncode(status) if done else None}
            else:
                answer = {"error": f"unknown op {op!r}"}
        except ChildProcessError:
            answer = {"returncode": -1}  # not our child (any more)
        except Exception as exc:  # noqa: BLE001 - tell the client, keep serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        reply.write(json.dumps(answer) + "\n")


# ----------------------------------------------------------------------------------------------
# The client (in the test process)
# ----------------------------------------------------------------------------------------------


class WarmProcess:
    """What subprocess.Popen returns, for a child of the warm server: pid, poll(), wait()."""

    def __init__(self, server: WarmPython, pid: int, args: list[str]):
        self.server, self.pid, self.args = server, pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.ask(op="poll", pid=self.pid)["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        return self.returncode


class WarmPython:
    """A warm-interpreter server; `popen(args, ...)` starts `python -m MODULE ARGS` as a fork of it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.train.warm"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        self._lock = threading.Lock()
        self._ready = False

    def ask(self, **request: Any) -> dict[str, Any]:
        with self._lock:
            if not self._ready:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError("the warm Python server did not start")
                self._ready = True
            self.proc.stdin.write(json.dumps(request) + "\n")
            answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def popen(
        self,
        args: list[str],
        *,
        stdout: Any,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        start_new_session: bool = False,
        fsize: int | None = None,
        **_: Any,  # stderr=STDOUT, stdin=DEVNULL: what the child does anyway
    ) -> WarmProcess:
        """Popen([python, "-m", MODULE, *ARGS], stdout=FILE, ...) as a fork of the warm server."""
        if len(args) < 3 or args[1] != "-m":
            raise ValueError(f"the warm server only runs `python -m MODULE ...`, not {args}")
        answer = self.ask(
            op="spawn",
            module=args[2],
            args=[str(a) for a in args[3:]],
            cwd=str(cwd or os.getcwd()),
            env=dict(os.environ if env is None else env),
            stdout=getattr(stdout, "name", stdout),
            new_session=start_new_session,
            fsize=fsize,
        )
        return WarmProcess(self, answer["pid"], list(args))

    def run(self, module: str, *args: str, log: Path, timeout: float = 300.0, **kw: Any) -> int:
        """Run `python -m MODULE ARGS` to the end (output appended to `log`); its exit code."""
        proc = self.popen([sys.executable, "-m", module, *args], stdout=str(log), cwd=ROOT, **kw)
        return proc.wait(timeout)

    def subprocess_module(self) -> SimpleNamespace:
        """A stand-in for the `subprocess` module as lib.train.jobs uses it."""
        return SimpleNamespace(Popen=self.popen, STDOUT=subprocess.STDOUT, DEVNULL=subprocess.DEVNULL)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def small_cnn_weights(path: str) -> None:
    """Save an untrained SmallCNN base at 32 px as a weights file: with it SmallCNN is a frozen base
    whose head trains on cached features, the same path as a pretrained MobileNetV2, at a fraction of
    its cost."""
    from lib.models import build

    build.build_base("SmallCNN", 32, "none").save_weights(path)


if __name__ == "__main__":
    if sys.argv[1:2] == [
        "small-cnn-weights"
    ]:  # in a forked child: `python -m tests.train.warm small-cnn-weights FILE`
        small_cnn_weights(sys.argv[2])
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in pytest: the test's teardown stops us
        serve()
