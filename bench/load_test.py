"""Load test of the hosted demo: 10 visitors at once in one headless Chromium, on loopback only.

Starts `streamlit run streamlit_app.py` in hosted mode (STUDIO_HOSTED=1) on 127.0.0.1 with its
runs, caches and a copy of the demo model in a temporary folder, then drives N browser contexts concurrently (Playwright's
async API, one browser). Each visitor opens the Predict page with its own workspace token
(`/Predict?ws=<token>`), uploads 3 sample photos and waits for the 3 verdicts; the first two also
pick the sample on the Dataset page and train with the bundled backbone on the Train page. At the
end every visitor reads the model pickers (Predict and Evaluate): it must see the demo model and
its own runs only, after loading each page afresh from its `?ws=` address (as a bookmark would).

    python bench/load_test.py                    # 10 visitors, 2 of them train, at most 600 s
    python bench/load_test.py --visitors 4 --trainers 1 --timeout 300 --json out.json
    python bench/load_test.py --cold             # the 10 arrive before TensorFlow and the model are loaded

By default one visitor predicts alone first (the cold start: TensorFlow and the demo model load),
then the 10 arrive together at the warm server.

Reports: visitors served without error, upload-to-verdict times (median, 95th percentile), peak
server memory (RSS summed over the server and its child processes, sampled every 0.5 s) and the
cross-visitor leakage check. Exit code 0 when every check passed, 1 otherwise.

What it assumes of the pages (hosted mode):
- `?ws=<token>` selects the visitor's workspace; after sidebar navigation the page puts the same
  `ws` back into the URL (Streamlit clears query params on page switches).
- Predict: model picker `.st-key-p_run`, the demo model always listed with "Demo" in its label,
  uploader `[data-testid="stFileUploaderDropzoneInput"]`, verdicts in `[data-testid="stAlert"]`
  matching "% sure" or "Not sure: could be".
- Dataset: button "Use the sample". Train: weights picker `.st-key-t_weights` with the option
  "Bundled offline backbone", button "Start training", the live job shows "Run <run-id> · <state>"
  and "Finished in" when done. Evaluate: model picker `.st-key-eval_run`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
VERDICT = re.compile(r"(% sure|Not sure: could be)")
RUN_LINE = re.compile(r"Run\s+(\S+)\s+·\s+(\w+)")
DEMO = re.compile(r"demo", re.I)


@dataclass
class Visitor:
    n: int
    token: str
    trainer: bool
    photos: list[str]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verdict_seconds: list[float] = field(default_factory=list)  # upload -> 1st, 2nd, 3rd verdict
    train_seconds: float | None = None
    run_id: str | None = None
    pickers: dict[str, list[str]] = field(default_factory=dict)
    leak: list[str] = field(default_factory=list)
    done: bool = False


# ----------------------------------------------------------------------------------------------
# The server and its memory
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int) -> subprocess.Popen:
    """The app in hosted mode with runs, caches and a copy of the demo in `home` (the repo stays untouched)."""
    from lib import settings

    demo = settings.demo_run_dir()
    if demo is None:
        raise SystemExit("no demo run: run python scripts/make_demo_model.py first")
    shutil.copytree(demo, home / "demo" / demo.name)
    env = dict(os.environ)
    env.update(
        STUDIO_HOSTED="1",
        STUDIO_RUNS_DIR=str(home / "models"),
        STUDIO_CACHE_DIR=str(home / "cache"),
        STUDIO_DEMO_DIR=str(home / "demo"),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    (home / "models").mkdir(parents=True, exist_ok=True)
    log = open(home / "streamlit.log", "w")  # noqa: SIM115 - closed with the server
    cmd = [
        sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the app exited at start:\n" + (home / "streamlit.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise SystemExit("the app did not become healthy within 90 s")


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
    proc.log.close()  # type: ignore[attr-defined]


class MemorySampler(threading.Thread):
    """RSS of the server plus all its descendants, every `every` seconds; keeps the peak. Also the
    CPU seconds used by the server's processes and by the browser (this script's other children),
    which share the same cores."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_mb = 0.0
        self.peak_processes = 0
        self.peak_server_only_mb = 0.0  # the Streamlit process alone (loaded models, sessions)
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
            total, count = 0, 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    cpu = p.cpu_times()
                except psutil.Error:
                    continue
                self.cpu_server[p.pid] = cpu.user + cpu.system
                total += rss
                count += 1
                if p is root:
                    self.peak_server_only_mb = max(self.peak_server_only_mb, rss / 2**20)
            self._sample_browser(psutil, {p.pid for p in procs})
            mb = total / 2**20
            self.samples.append((round(time.monotonic() - start, 1), round(mb, 1), count))
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
# One visitor
# ----------------------------------------------------------------------------------------------


async def wait_for_app(page, timeout_ms: float = 120_000) -> None:
    """Wait until Streamlit has finished running the script (no 'Running...' status widget)."""
    await page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    await page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms
    )


async def check_page(page, v: Visitor, where: str) -> None:
    """Record exceptions shown on the page, and whether the URL still carries the visitor's token."""
    exceptions = page.locator('[data-testid="stException"]')
    if await exceptions.count():
        text = (await exceptions.first.inner_text())[:300].replace("\n", " ")
        v.errors.append(f"{where}: exception on the page: {text}")
    for _ in range(100):  # the page puts the token back when its script runs: give it 10 s
        if f"ws={v.token}" in page.url:
            break
        await asyncio.sleep(0.1)
    else:
        v.warnings.append(f"{where}: the URL lost the workspace token ({page.url})")


async def goto_page(page, v: Visitor, name: str) -> None:
    """Navigate with the sidebar (keeps the session), like a person would."""
    await page.locator('[data-testid="stSidebar"] a', has_text=name).first.click()
    await page.wait_for_url(re.compile(rf"/{name}"), timeout=60_000)
    await wait_for_app(page)


async def picker_options(page, key: str) -> list[str] | None:
    """The labels of a selectbox's options (None when the page has no such picker)."""
    box = page.locator(f".st-key-{key}")
    try:
        await box.first.wait_for(timeout=60_000)
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError: the page has no such picker
        return None
    options = page.locator('[role="option"]')
    for attempt in range(4):  # a rerun that redraws the picker can swallow a click: try again
        await wait_for_app(page)
        await box.first.click()
        try:
            await options.first.wait_for(timeout=10_000 * (attempt + 1))
            break
        except Exception:  # noqa: BLE001
            await page.keyboard.press("Escape")
    labels = [t.strip() for t in await options.all_inner_texts()]
    await page.keyboard.press("Escape")
    return labels


async def predict(page, v: Visitor, url: str, deadline: float) -> None:
    await page.goto(f"{url}/Predict?ws={v.token}")
    await wait_for_app(page)
    await check_page(page, v, "Predict (open)")
    uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    await uploader.wait_for(state="attached", timeout=60_000)
    verdicts = page.locator('[data-testid="stAlert"]').filter(has_text=VERDICT)
    start = time.monotonic()
    await uploader.set_input_files(v.photos)
    seen = 0
    while seen < len(v.photos):
        if time.monotonic() > deadline:
            v.errors.append(f"Predict: only {seen} of {len(v.photos)} verdicts before the time limit")
            return
        count = await verdicts.count()
        while seen < min(count, len(v.photos)):
            seen += 1
            v.verdict_seconds.append(round(time.monotonic() - start, 2))
        if await page.locator('[data-testid="stException"]').count():
            break
        await asyncio.sleep(0.1)
    await wait_for_app(page)
    await check_page(page, v, "Predict (verdicts)")


async def train(page, v: Visitor, deadline: float) -> None:
    await goto_page(page, v, "Dataset")
    await check_page(page, v, "Dataset")
    await page.get_by_role("button", name="Use the sample").click()
    await page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    await goto_page(page, v, "Train")
    await page.get_by_role("button", name="Start training").wait_for(timeout=120_000)
    await check_page(page, v, "Train (open)")
    await page.locator(".st-key-t_weights").click()
    await page.get_by_role("option", name=re.compile("Bundled offline backbone")).click()
    await wait_for_app(page)
    start = time.monotonic()
    await page.get_by_role("button", name="Start training").click()
    run_line = page.get_by_text(RUN_LINE).first
    await run_line.wait_for(timeout=60_000)
    match = RUN_LINE.search(await run_line.inner_text())
    v.run_id = match.group(1) if match else None
    finished = page.get_by_text("Finished in").first
    while True:
        if time.monotonic() > deadline:
            v.errors.append("Train: the run did not finish before the time limit")
            return
        if await finished.count():
            break
        failed = page.locator('[data-testid="stAlert"]').filter(
            has_text=re.compile(r"^(Failed|Interrupted):")
        )
        if await failed.count():
            v.errors.append("Train: " + (await failed.first.inner_text())[:300])
            return
        await asyncio.sleep(0.5)
    v.train_seconds = round(time.monotonic() - start, 1)
    await wait_for_app(page)
    await check_page(page, v, "Train (finished)")


async def leakage_check(page, v: Visitor, url: str) -> None:
    """Predict and Evaluate pickers: the demo plus this visitor's own runs, nothing else.

    Each page is loaded afresh from its bookmarked address (a new session: the workspace must come
    from the token in the URL alone, and the lists can't be stale widgets from earlier).
    """
    for name, key in (("Predict", "p_run"), ("Evaluate", "eval_run")):
        await page.goto(f"{url}/{name}?ws={v.token}")
        await wait_for_app(page)
        await check_page(page, v, f"{name} (pickers)")
        labels = await picker_options(page, key)
        if labels is None:
            v.errors.append(f"{name}: no model picker (.st-key-{key}) within 60 s: runs can't be checked")
            continue
        v.pickers[name] = labels
        if not any(DEMO.search(label) for label in labels):
            v.errors.append(f"{name}: the demo model is not listed ({labels})")
        own = [label for label in labels if not DEMO.search(label)]
        expected = 1 if v.trainer and v.run_id else 0
        if len(own) != expected:
            v.leak.append(f"{name}: expected {expected} run(s) of its own besides the demo, saw {own}")
        elif expected and v.run_id not in own[0]:
            v.leak.append(f"{name}: the listed run {own[0]!r} is not this visitor's run {v.run_id}")


async def visitor(
    browser, v: Visitor, url: str, deadline: float, barrier: asyncio.Event, ready: list
) -> None:
    context = await browser.new_context(viewport={"width": 1300, "height": 950})
    page = await context.new_page()
    page.set_default_timeout(90_000)
    try:
        await predict(page, v, url, deadline)
        if v.trainer and not v.errors:
            await train(page, v, deadline)
    except Exception as exc:  # noqa: BLE001 - any failure of a visitor is a finding, not a crash
        v.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    ready.append(v.n)
    try:  # the leakage check runs once every visitor has its runs, so a late run can't be missed
        await asyncio.wait_for(barrier.wait(), max(1.0, deadline - time.monotonic()))
        await leakage_check(page, v, url)
    except Exception as exc:  # noqa: BLE001
        v.errors.append(f"leakage check: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    v.done = True
    await context.close()


async def warm_up(browser, v: Visitor, url: str, deadline: float) -> None:
    """One visitor alone first, so TensorFlow and the demo model are loaded (its time is the cold start)."""
    context = await browser.new_context(viewport={"width": 1300, "height": 950})
    page = await context.new_page()
    page.set_default_timeout(90_000)
    try:
        await predict(page, v, url, deadline)
    except Exception as exc:  # noqa: BLE001
        v.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    v.done = True
    await context.close()


async def drive(url: str, visitors: list[Visitor], timeout: float, warm: Visitor | None = None) -> None:
    from playwright.async_api import async_playwright

    deadline = time.monotonic() + timeout
    barrier = asyncio.Event()
    ready: list[int] = []

    async def release() -> None:
        while len(ready) < len(visitors):
            await asyncio.sleep(0.5)
        barrier.set()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            if warm is not None:
                await warm_up(browser, warm, url, deadline)
            await asyncio.gather(
                release(), *(visitor(browser, v, url, deadline, barrier, ready) for v in visitors)
            )
        finally:
            await browser.close()


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(values, q)), 2)


def sample_photos(n_visitors: int, per_visitor: int) -> list[list[str]]:
    from lib import settings

    photos = sorted(str(p) for p in (settings.sample_dir() / "test").rglob("*.jpg"))
    return [
        [photos[(i * per_visitor + k * 7) % len(photos)] for k in range(per_visitor)]
        for i in range(n_visitors)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=10)
    parser.add_argument("--trainers", type=int, default=2, help="how many of the visitors also train")
    parser.add_argument("--images", type=int, default=3, help="photos each visitor uploads")
    parser.add_argument("--timeout", type=float, default=600, help="hard limit for the whole test, seconds")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="no warm-up visitor: the 10 arrive at a server that has not loaded TensorFlow or the model yet",
    )
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary app folder (logs, runs)")
    args = parser.parse_args(argv)

    from lib import workspace

    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="studio-load-"))
    port = _free_port()
    visitors = [
        Visitor(n=i, token=workspace.new_token(), trainer=i < args.trainers, photos=photos)
        for i, photos in enumerate(sample_photos(args.visitors, args.images))
    ]
    warm = (
        None
        if args.cold
        else Visitor(n=-1, token=workspace.new_token(), trainer=False, photos=visitors[-1].photos[:1])
    )
    proc = start_server(home, port)
    sampler = MemorySampler(proc.pid)
    sampler.start()
    timed_out = False
    try:
        budget = max(30.0, args.timeout - (time.monotonic() - started) - 20)
        try:
            asyncio.run(
                asyncio.wait_for(drive(f"http://127.0.0.1:{port}", visitors, budget - 10, warm), budget)
            )
        except TimeoutError:
            timed_out = True
    finally:
        sampler.stop()
        server_alive = proc.poll() is None
        stop_server(proc)

    all_times = [t for v in visitors for t in v.verdict_seconds]
    batch_times = [v.verdict_seconds[-1] for v in visitors if len(v.verdict_seconds) == args.images]
    served = [v for v in visitors if v.done and not v.errors and len(v.verdict_seconds) == args.images]
    leaks = [f"visitor {v.n}: {msg}" for v in visitors for msg in v.leak]
    report = {
        "visitors": args.visitors,
        "trainers": args.trainers,
        "served_without_error": len(served),
        "timed_out": timed_out,
        "server_alive_at_end": server_alive,
        "verdict_seconds": {
            "per_photo_median": percentile(all_times, 50),
            "per_photo_p95": percentile(all_times, 95),
            "all_photos_of_a_visitor_median": percentile(batch_times, 50),
            "all_photos_of_a_visitor_p95": percentile(batch_times, 95),
            "max": max(all_times) if all_times else None,
        },
        "cold_start_verdict_seconds": (warm.verdict_seconds or [None])[0] if warm else None,
        "cold_start_errors": warm.errors if warm else [],
        "train_seconds": [v.train_seconds for v in visitors if v.trainer],
        "peak_server_memory_mb": round(sampler.peak_mb, 1),
        "processes_at_peak": sampler.peak_processes,
        "peak_streamlit_process_mb": round(sampler.peak_server_only_mb, 1),
        "cpu_seconds": {
            "server_and_workers": round(sum(sampler.cpu_server.values()), 1),
            "browser": round(sum(sampler.cpu_browser.values()), 1),
        },
        "leakage": leaks,
        "errors": [f"visitor {v.n}: {e}" for v in visitors for e in v.errors],
        "warnings": [f"visitor {v.n}: {w}" for v in visitors for w in v.warnings],
        "wall_seconds": round(time.monotonic() - started, 1),
        "app_folder": str(home) if args.keep else None,
        "memory_timeline": [{"t": t, "mb": mb, "processes": n} for t, mb, n in sampler.samples],
        "visitor_details": [
            {k: val for k, val in asdict(v).items() if k not in ("photos", "token")} for v in visitors
        ],
    }
    ok = len(served) == args.visitors and not leaks and not timed_out and server_alive
    ok = ok and not (warm is not None and warm.errors)
    report["passed"] = ok

    vs = report["verdict_seconds"]
    print(
        f"visitors served without error: {len(served)}/{args.visitors}"
        + (" (timed out)" if timed_out else "")
    )
    print(f"upload -> verdict: per photo median {vs['per_photo_median']} s, p95 {vs['per_photo_p95']} s; "
          f"all {args.images} photos of a visitor p95 {vs['all_photos_of_a_visitor_p95']} s")  # fmt: skip
    if warm is not None:
        print(
            f"cold start (first visitor alone, loads TensorFlow and the model): {report['cold_start_verdict_seconds']} s"
        )
    print(f"training (bundled backbone, sample): {report['train_seconds']} s")
    print(
        f"peak server memory: {report['peak_server_memory_mb']:.0f} MB over {sampler.peak_processes} processes "
        f"(the Streamlit process alone peaked at {report['peak_streamlit_process_mb']:.0f} MB)"
    )
    print(
        f"CPU used: server and training workers {report['cpu_seconds']['server_and_workers']} s, "
        f"the browser {report['cpu_seconds']['browser']} s (same cores), over {report['wall_seconds']} s"
    )
    print("cross-visitor leakage: " + ("none" if not leaks else "; ".join(leaks)))
    for line in report["errors"] + report["warnings"]:
        print("  " + line)
    print(json.dumps({k: v for k, v in report.items() if k not in ("visitor_details", "memory_timeline")}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    else:
        print(f"app folder kept: {home}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
