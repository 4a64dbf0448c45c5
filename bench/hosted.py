"""What the hosted-demo benches share (bench/load_test.py, bench/hostile_upload.py): the app started
in hosted mode on 127.0.0.1 with its runs, caches and a copy of the demo in a temporary folder, its
memory and CPU summed over the server and every process it started, headless Chromium's settings,
and a stranger's worst upload (the pixel-bomb zip).

Import it as `from bench import hosted` (the benches put the repository folder on sys.path).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def chromium() -> str:
    """Debian's chromium (Playwright drives it; no browser download)."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium") or CHROMIUM


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONVERSIONS = ROOT / ".cache" / "bench-tflite"  # the demo's LiteRT model, kept between bench runs


def reuse_conversion(home: Path) -> bool:
    """Put the demo's LiteRT model made by an earlier bench run into `home`'s cache (as a container's
    cache volume keeps it across restarts); False when there is none yet."""
    if not any(CONVERSIONS.glob("*/model.tflite")):
        return False
    shutil.copytree(CONVERSIONS, home / "cache" / "tflite", dirs_exist_ok=True)
    return True


def keep_conversion(home: Path) -> None:
    """Keep the demo's LiteRT model this run made, for `reuse_conversion` next time."""
    made = home / "cache" / "tflite"
    if any(made.glob("*/model.tflite")):
        shutil.copytree(made, CONVERSIONS, dirs_exist_ok=True)


def streamlit_command(port: int) -> list[str]:
    """`streamlit run streamlit_app.py`, headless on 127.0.0.1:port, no usage stats, no file watcher."""
    return [
        sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip


def wait_healthy(proc: subprocess.Popen, url: str, home: Path, timeout: float, poll: float) -> float:
    """Seconds (from now) until `url`/_stcore/health answers 200; SystemExit with the log's end when
    the app exits first, or (the server stopped) after `timeout` seconds."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit("the app exited at start:\n" + (home / "streamlit.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(poll)
    stop_server(proc)
    raise SystemExit(f"the app did not become healthy within {timeout:.0f} s")


def start_server(
    home: Path, port: int, app: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.Popen:
    """`streamlit run streamlit_app.py` of the checkout `app` in hosted mode on 127.0.0.1, with runs,
    caches and a copy of its demo in `home` (the checkout stays untouched: the demo's LiteRT model
    is made in the copy). Returns once /_stcore/health answers; its output goes to home/streamlit.log."""
    app = Path(app)
    demo = app / "demo"
    for run in demo.iterdir() if demo.is_dir() else ():
        if run.is_dir() and (run / "model.keras").is_file():
            shutil.copytree(
                run, home / "demo" / run.name, ignore=shutil.ignore_patterns("predictions", "exports")
            )
    if not (home / "demo").is_dir():
        raise SystemExit(f"no demo run in {demo}: run python scripts/make_demo_model.py first")
    (home / "models").mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        "STUDIO_HOSTED": "1",
        "STUDIO_RUNS_DIR": str(home / "models"),
        "STUDIO_CACHE_DIR": str(home / "cache"),
        "STUDIO_DEMO_DIR": str(home / "demo"),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **(env or {}),
    }
    log = open(home / "streamlit.log", "w")  # noqa: SIM115 - closed with the server
    proc = subprocess.Popen(
        streamlit_command(port), cwd=app, env=full_env, stdout=log, stderr=subprocess.STDOUT
    )
    proc.log = log  # type: ignore[attr-defined]
    wait_healthy(proc, f"http://127.0.0.1:{port}", home, timeout, poll=0.3)
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and every process it started (training workers run in their own sessions)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for child in children:
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    log = getattr(proc, "log", None)
    if log is not None:
        log.close()


# ----------------------------------------------------------------------------------------------
# Its memory and CPU
# ----------------------------------------------------------------------------------------------


def tree(pid: int) -> list:
    """The process `pid` and its living descendants (psutil.Process objects; [] when it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    """Bytes resident in the process `pid` and all its descendants."""
    import psutil

    total = 0
    for p in tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def cpu_seconds(procs) -> float:
    """CPU seconds (user + system) used so far by these processes (one that ended counts 0)."""
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its living descendants."""
    return cpu_seconds(tree(pid))


class MemorySampler(threading.Thread):
    """Memory of the server plus all its descendants, every `every` seconds, as PSS (proportional
    set size: a page shared by several processes, such as TensorFlow's libraries in the server and
    a training worker, or a freshly forked child's copy-on-write pages, is counted once, split
    between them; what the box really holds); the RSS sum (which counts shared pages once per
    process) is kept beside it. Keeps the peaks and a timeline. Also the CPU seconds used by the server's processes and by the browser (this script's
    other children), which share the same cores."""

    def __init__(self, pid: int, every: float = 0.5, timeline: bool = True):
        super().__init__(daemon=True)
        self.pid, self.every, self.timeline = pid, every, timeline
        self.peak_mb = 0.0  # PSS summed
        self.peak_rss_mb = 0.0  # RSS summed (shared pages counted once per process)
        self.peak_processes = 0
        self.peak_server_only_mb = 0.0  # the Streamlit process alone (loaded models, sessions)
        self.peak_workers = 0  # most processes besides the server seen at once (training workers)
        self.samples: list[tuple[float, float, int]] = []
        self.cpu_server: dict[int, float] = {}  # pid -> last seen user+system seconds
        self.cpu_browser: dict[int, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        start = time.monotonic()
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop_event.is_set():
            total, total_rss, count = 0, 0, 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    full = p.memory_full_info()
                    rss = full.rss
                    pss = getattr(full, "pss", rss)
                    cpu = p.cpu_times()
                except psutil.Error:
                    continue
                self.cpu_server[p.pid] = cpu.user + cpu.system
                total += pss
                total_rss += rss
                count += 1
                if p is root:
                    self.peak_server_only_mb = max(self.peak_server_only_mb, rss / 2**20)
            self.peak_workers = max(self.peak_workers, count - 1)
            self._sample_browser(psutil, {p.pid for p in procs})
            mb = total / 2**20
            if self.timeline:
                self.samples.append((round(time.monotonic() - start, 1), round(mb, 1), count))
            self.peak_rss_mb = max(self.peak_rss_mb, total_rss / 2**20)
            if mb > self.peak_mb:
                self.peak_mb, self.peak_processes = mb, count
            self._stop_event.wait(self.every)

    def _sample_browser(self, psutil, server_pids: set[int]) -> None:
        try:
            mine = psutil.Process(os.getpid()).children(recursive=True)
        except psutil.Error:
            return
        for p in mine:
            if p.pid in server_pids or p.pid == self.pid:
                continue
            try:
                cpu = p.cpu_times()
            except psutil.Error:
                continue
            self.cpu_browser[p.pid] = cpu.user + cpu.system

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


# ----------------------------------------------------------------------------------------------
# A stranger's worst upload
# ----------------------------------------------------------------------------------------------


def pixel_bomb_zip(folder: Path) -> Path:
    """A ~1 MB zip of 16 PNGs of 7000 x 7000 pixels, each under the 50-megapixel limit: 8 of them
    16-bit grey, 8 16-bit RGBA (tests/data/test_decode_memory.py makes the PNGs)."""
    from tests.data.test_decode_memory import png16_grey, png16_rgba

    folder = Path(folder)
    grey, rgba = png16_grey(folder / "g.png"), png16_rgba(folder / "r.png")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(8):
            zf.writestr(f"photos/grey16_{i}.png", grey.read_bytes())
            zf.writestr(f"photos/rgba16_{i}.png", rgba.read_bytes())
    grey.unlink()
    rgba.unlink()
    path = folder / "hostile.zip"
    path.write_bytes(buf.getvalue())
    return path
