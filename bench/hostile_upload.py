"""A stranger's worst upload, end to end: a ~1 MB zip of 16 PNGs of 7000 x 7000 pixels (8 of them
16-bit grey, 8 16-bit RGBA; each under the 50-megapixel limit) dropped on the Predict page of the app
running in hosted mode. Prints the server's memory peak (summed over its processes) over its level
just before the upload, its CPU seconds, and how many photos were answered.

    .venv/bin/python bench/hostile_upload.py                    # this checkout
    .venv/bin/python bench/hostile_upload.py --app /path/other  # another checkout, for a before/after

The app runs on 127.0.0.1 with its runs, caches and a copy of its demo in a temporary folder
(bench/hosted.py, shared with bench/load_test.py, which sends the same zip beside 10 visitors).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import hosted  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=str(hosted.ROOT), help="the checkout to run (default: this one)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    server = None
    try:
        upload = hosted.pixel_bomb_zip(work)
        port = hosted.free_port()
        server = hosted.start_server(work, port, app=Path(args.app))
        url = f"http://127.0.0.1:{port}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=hosted.chromium(), args=hosted.CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(args.timeout * 1000)
            page.goto(url + "/Predict")
            page.get_by_text("This model knows").first.wait_for()
            page.wait_for_timeout(3000)  # the demo model is loaded and warm
            base_rss, base_cpu = hosted.tree_rss(server.pid), hosted.tree_cpu(server.pid)
            sampler = hosted.MemorySampler(server.pid, every=0.02, timeline=False)
            sampler.start()
            start = time.perf_counter()
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(upload))
            answered = page.get_by_text("photos judged").or_(page.get_by_text("could not be used"))
            answered.first.wait_for()
            page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
            seconds = time.perf_counter() - start
            sampler.stop()
            text = page.inner_text("body")
            browser.close()
        result = {
            "app": args.app,
            "upload_kb": round(upload.stat().st_size / 1024),
            "peak_mb_over_before": round(max(0.0, sampler.peak_rss_mb - base_rss / 2**20)),
            "cpu_seconds": round(hosted.tree_cpu(server.pid) - base_cpu, 1),
            "wall_seconds": round(seconds, 1),
            "answered": next((line for line in text.splitlines() if "judged" in line), ""),
        }
        print(json.dumps(result))
    finally:
        if server is not None:
            hosted.stop_server(server)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
