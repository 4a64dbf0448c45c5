"""A stranger's worst upload, end to end: a ~1 MB zip of 16 PNGs of 7000 x 7000 pixels (8 of them
16-bit grey, 8 16-bit RGBA; each under the 50-megapixel limit) dropped on the Predict page of the app
running in hosted mode. Prints the server process's memory peak over its level just before the
upload, its CPU seconds, and how many photos were answered.

    .venv/bin/python bench/hostile_upload.py                    # this checkout
    .venv/bin/python bench/hostile_upload.py --app /path/other  # another checkout, for a before/after

The app runs on 127.0.0.1 with its runs and caches in a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.data.test_decode_memory import png16_grey, png16_rgba  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def make_zip(folder: Path) -> Path:
    grey, rgba = png16_grey(folder / "g.png"), png16_rgba(folder / "r.png")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(8):
            zf.writestr(f"photos/grey16_{i}.png", grey.read_bytes())
            zf.writestr(f"photos/rgba16_{i}.png", rgba.read_bytes())
    path = folder / "hostile.zip"
    path.write_bytes(buf.getvalue())
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=str(ROOT), help="the checkout to run (default: this one)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        upload = make_zip(work)
        port = free_port()
        env = {**os.environ, "STUDIO_HOSTED": "1", "STUDIO_CACHE_DIR": str(work / "cache"),
               "STUDIO_RUNS_DIR": str(work / "models"), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=args.app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        proc = psutil.Process(server.pid)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            page = browser.new_page()
            page.set_default_timeout(args.timeout * 1000)
            page.goto(url + "/Predict")
            page.get_by_text("This model knows").first.wait_for()
            page.wait_for_timeout(3000)  # the demo model is loaded and warm
            base_rss, base_cpu = tree_rss(proc), tree_cpu(proc)
            peak = [base_rss]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], tree_rss(proc))
                    time.sleep(0.02)

            threading.Thread(target=sample, daemon=True).start()
            start = time.perf_counter()
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(upload))
            answered = page.get_by_text("photos judged").or_(page.get_by_text("could not be used"))
            answered.first.wait_for()
            page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
            seconds = time.perf_counter() - start
            done.set()
            text = page.inner_text("body")
            browser.close()
        result = {
            "app": args.app,
            "upload_kb": round(upload.stat().st_size / 1024),
            "peak_mb_over_before": round((peak[0] - base_rss) / 2**20),
            "cpu_seconds": round(tree_cpu(proc) - base_cpu, 1),
            "wall_seconds": round(seconds, 1),
            "answered": next((line for line in text.splitlines() if "judged" in line), ""),
        }
        server.terminate()
        server.wait(10)
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
