"""Load test of the hosted demo: 10 visitors and 2 hostile ones at once in one headless Chromium, on loopback only.

Starts `streamlit run streamlit_app.py` in hosted mode (STUDIO_HOSTED=1) on 127.0.0.1 with its
runs, caches and a copy of the demo model in a temporary folder (bench/hosted.py), then drives
browser contexts concurrently (Playwright's async API, one browser):

- N normal visitors. Each opens the Predict page without a token, so the server issues its
  workspace (`?ws=<token>` in the address), uploads 3 sample photos and waits for the 3 verdicts;
  the first two (--trainers) also pick the sample on the Dataset page and train with the bundled
  backbone on the Train page. A trainer that is refused (the server's queue is full) tries again
  every 15 s, as the refusal asks. At the end every visitor reads the model pickers (Predict and
  Evaluate) after loading each page afresh from its `?ws=` address (as a bookmark would): it must
  see the demo model and its own runs only.
- Hostile visitor A (the pixel bomb): its own workspace, drops the pixel-bomb zip of
  bench/hostile_upload.py (16 PNGs of 7000 x 7000 16-bit pixels, ~1 MB) on Predict; records what
  the page said (verdicts, refusals and caps) and how long it took to answer.
- Hostile visitor B (the queue filler): as fast as it can, --attempts times, opens a fresh
  workspace (a new browser context: no token, or a forged token the server never issued), picks
  the sample, chooses the bundled backbone and presses Start training, then presses it again in the
  same workspace; records the jobs queued and the refusals (the server's queue cap
  STUDIO_MAX_QUEUED_JOBS, one job per workspace) with their sentences. Its jobs stay queued: it
  never comes back for them.

    python bench/load_test.py                    # 10 visitors (2 train) + the 2 hostile ones
    python bench/load_test.py --visitors 3 --trainers 1 --attempts 4 --timeout 900 --json out.json
    python bench/load_test.py --no-hostile       # the 10 normal visitors only
    python bench/load_test.py --cold             # everyone arrives before TensorFlow and the model are loaded

By default one visitor predicts alone first (the cold start: TensorFlow loads and the demo model is
converted to LiteRT), then everyone arrives together at the warm server.

Reports (text, then one JSON line; --json writes the details too): every normal visitor served
(yes/no, with the errors), upload-to-verdict times of the normal visitors (median, 95th percentile),
what happened to the trainers (refusals, time to train), the hostile visitors' outcomes, peak server
memory (RSS summed over the server and its child processes, the training workers, sampled every
0.5 s) against --memory-target-mb, and the cross-visitor leakage check. Exit code 0 only when every
normal visitor was served without leakage, both hostile visitors were refused or bounded and the
memory peak stayed under the target; 1 otherwise (the report says which).

What it assumes of the pages (hosted mode):
- A page opened without `?ws=` gets a fresh workspace and puts its token in the URL; a token the
  server never issued is not adopted. After sidebar navigation the page puts the same `ws` back.
- Predict: model picker `.st-key-p_run`, the demo model always listed with "Demo" in its label,
  uploader `[data-testid="stFileUploaderDropzoneInput"]`, verdicts in `[data-testid="stAlert"]`
  matching "% sure", "Not sure: could be" or "doesn't look like any", a batch summary
  "N photos judged[, M files could not be used]." and per-file refusals in error alerts.
- Dataset: button "Use the sample". Train: weights picker `.st-key-cfg_weights` with the option
  "Bundled offline backbone", button "Start training", the live job shows "Run <run-id> · <state>"
  and "Finished in" when done; a refused start shows an error alert. Evaluate: model picker
  `.st-key-eval_run`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import hosted  # noqa: E402

VERDICT = re.compile(r"(% sure|Not sure: could be|doesn't look like any)")
RUN_LINE = re.compile(r"Run\s+(\S+)\s+·\s+(\w+)")
DEMO = re.compile(r"demo", re.I)
TOKEN = re.compile(r"[?&]ws=([A-Za-z0-9_-]+)")
SUMMARY = re.compile(r"\d+ photos? judged[^.\n]*\.")
ERROR_ALERT = '[data-testid="stAlertContentError"]'
EXCEPTION = '[data-testid="stException"]'
PAGE_TIMEOUT_MS = 180_000  # one click or page on a busy 2-core machine (each step; the run has --timeout)
RETRY_SECONDS = 15.0
SHOWN_ON_PREDICT = 24  # Predict draws the first 24 photos of a batch (the table holds them all)  # a refused trainer tries again this often ("try again in a few minutes")


@dataclass
class Visitor:
    n: int
    trainer: bool
    photos: list[str]
    token: str | None = None  # issued by the server on the first page
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verdict_seconds: list[float] = field(default_factory=list)  # upload -> 1st, 2nd, 3rd verdict
    arrival_seconds: float | None = (
        None  # page opened -> first verdict (the cold start includes the model load)
    )
    train_seconds: float | None = None  # first press of Start -> "Finished in" (refusals included)
    train_refusals: list[str] = field(default_factory=list)  # "<seconds after the first press>: <sentence>"
    run_id: str | None = None
    pickers: dict[str, list[str]] = field(default_factory=dict)
    leak: list[str] = field(default_factory=list)
    done: bool = False


@dataclass
class PixelBomb:
    """Hostile visitor A: one zip of 16 huge 16-bit PNGs on Predict."""

    zip_path: str
    zip_kb: int = 0
    token: str | None = None
    summary_seconds: float | None = None  # upload -> the batch summary (or a refusal)
    answer_seconds: float | None = None  # upload -> every shown photo has its verdict or refusal
    summary: str = ""  # "16 photos judged." or "…, 3 files could not be used."
    verdicts: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # per-file refusal sentence -> files
    page_errors: list[str] = field(default_factory=list)  # other error alerts
    exceptions: list[str] = field(default_factory=list)  # tracebacks shown on the page
    errors: list[str] = field(default_factory=list)  # what went wrong driving it (time limit …)


@dataclass
class Attempt:
    n: int
    forged: bool  # arrived with a token the server never issued
    adopted: bool = False  # the server took the forged token as a workspace (it must not)
    outcome: str = ""  # "queued", "running", "refused" or "error"
    sentence: str = ""  # the refusal, or the error
    second_outcome: str = ""  # pressing Start again in the same workspace: "refused" (one job each) …
    second_press: str = ""  # … and what the page said
    seconds: float = 0.0  # fresh context -> outcome of the first press


@dataclass
class QueueFiller:
    """Hostile visitor B: fresh workspaces, one training job each, as fast as it can."""

    attempts: list[Attempt] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Page helpers
# ----------------------------------------------------------------------------------------------


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"


async def new_page(browser):
    context = await browser.new_context(viewport={"width": 1300, "height": 950})
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    return context, page


async def wait_for_app(page, timeout_ms: float = PAGE_TIMEOUT_MS) -> None:
    """Wait until Streamlit has drawn the frame (the sidebar's page links) and finished running the
    script (no 'Running...' status widget)."""
    await page.wait_for_selector('[data-testid="stSidebar"] a', timeout=timeout_ms)
    await page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms
    )


async def issued_token(page, seconds: float = 30) -> str | None:
    """The workspace token the page put in its URL (None if none within `seconds`)."""
    for _ in range(int(seconds * 10)):
        if m := TOKEN.search(page.url):
            return m.group(1)
        await asyncio.sleep(0.1)
    return None


async def exception_text(page) -> str | None:
    exceptions = page.locator(EXCEPTION)
    if await exceptions.count():
        return (await exceptions.first.inner_text())[:300].replace("\n", " ")
    return None


async def check_page(page, v: Visitor, where: str) -> None:
    """Record exceptions shown on the page, and whether the URL still carries the visitor's token."""
    if text := await exception_text(page):
        v.errors.append(f"{where}: exception on the page: {text}")
    for _ in range(100):  # the page puts the token back when its script runs: give it 10 s
        if f"ws={v.token}" in page.url:
            break
        await asyncio.sleep(0.1)
    else:
        v.warnings.append(f"{where}: the URL lost the workspace token ({page.url})")


async def goto_page(page, name: str) -> None:
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


async def open_train_with_sample(page) -> None:
    """Dataset: the sample; Train: the bundled offline backbone (the page is then ready to start)."""
    await page.get_by_role("button", name="Use the sample").click()
    await page.locator(".js-plotly-plot").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    await goto_page(page, "Train")
    await page.get_by_role("button", name="Start training").wait_for(timeout=PAGE_TIMEOUT_MS)
    await page.locator(".st-key-cfg_weights").click()
    await page.get_by_role("option", name=re.compile("Bundled offline backbone")).click()
    await wait_for_app(page)


async def press_start(
    page, deadline: float, known_error: str | None = None, known_run: str | None = None
) -> tuple[str, str]:
    """Press Start training: (state, run id) once the live job shows a new run ("queued" or
    "running"), ("refused", sentence) when an error alert answers instead, ("error", what) for a
    traceback or no answer within 120 s. `known_error`, `known_run`: an alert or a live job already on
    the page before the press, not to be taken for its answer."""
    pressed = time.monotonic()
    await page.get_by_role("button", name="Start training").click()
    run_line = page.get_by_text(RUN_LINE).first
    errors = page.locator(ERROR_ALERT)
    while time.monotonic() < min(deadline, pressed + 120):
        if await run_line.count():
            m = RUN_LINE.search(await run_line.inner_text())
            if m and m.group(1) != known_run:
                return m.group(2), m.group(1)
        if text := await exception_text(page):
            return "error", f"exception on the page: {text}"
        if await errors.count() and time.monotonic() - pressed > 2:
            text = " ".join((await errors.first.inner_text()).split())
            idle = not await page.locator('[data-testid="stStatusWidget"]').count()
            if idle and (text != known_error or time.monotonic() - pressed > 6):
                return "refused", text
        await asyncio.sleep(0.2)
    return "error", "no answer to Start training within 120 s"


# ----------------------------------------------------------------------------------------------
# A normal visitor
# ----------------------------------------------------------------------------------------------


async def arrive(page, v: Visitor, url: str, deadline: float) -> float:
    """Open Predict without a token: the server issues the workspace. Returns when it was opened."""
    opened = time.monotonic()
    await page.goto(f"{url}/Predict")
    v.token = await issued_token(page, PAGE_TIMEOUT_MS / 1000)  # a busy server answers late
    if v.token is None:
        raise RuntimeError(f"the server put no workspace token in the URL ({page.url})")
    return opened


async def predict(page, v: Visitor, url: str, deadline: float, opened: float) -> None:
    await wait_for_app(page, max(1.0, deadline - time.monotonic()) * 1000)
    await check_page(page, v, "Predict (open)")
    uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    # On a cold server the first visitor waits for TensorFlow and the demo's conversion to LiteRT.
    await uploader.wait_for(state="attached", timeout=max(1.0, deadline - time.monotonic()) * 1000)
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
            if v.arrival_seconds is None:
                v.arrival_seconds = round(time.monotonic() - opened, 2)
        if await page.locator(EXCEPTION).count():
            break
        await asyncio.sleep(0.1)
    await wait_for_app(page)
    await check_page(page, v, "Predict (verdicts)")


async def train(page, v: Visitor, deadline: float) -> None:
    await goto_page(page, "Dataset")
    await check_page(page, v, "Dataset")
    await open_train_with_sample(page)
    await check_page(page, v, "Train (open)")
    start = time.monotonic()
    refusal = None
    while True:  # refused while the server's queue is full: try again, as the refusal says
        state, what = await press_start(page, deadline, refusal)
        if state == "refused":
            refusal = what
            v.train_refusals.append(f"{time.monotonic() - start:.0f} s: {what}")
            if time.monotonic() + RETRY_SECONDS > deadline:
                v.errors.append(f"Train: refused until the time limit ({len(v.train_refusals)} times)")
                return
            await asyncio.sleep(RETRY_SECONDS)
            continue
        if state == "error":
            v.errors.append(f"Train: {what}")
            return
        v.run_id = what
        break
    finished = page.get_by_text("Finished in").first
    failed = page.locator('[data-testid="stAlert"]').filter(
        has_text=re.compile(r"^(Failed|Interrupted|Stopped|Cancelled):")
    )
    while True:
        if time.monotonic() > deadline:
            v.errors.append("Train: the run did not finish before the time limit")
            return
        if await finished.count():
            break
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
    context, page = await new_page(browser)
    try:
        opened = await arrive(page, v, url, deadline)
        await predict(page, v, url, deadline, opened)
        if v.trainer and not v.errors:
            await train(page, v, deadline)
    except Exception as exc:  # noqa: BLE001 - any failure of a visitor is a finding, not a crash
        v.errors.append(first_line(exc))
    ready.append(v.n)
    try:  # the leakage check runs once every visitor has its runs, so a late run can't be missed
        await asyncio.wait_for(barrier.wait(), max(1.0, deadline - time.monotonic()))
        if v.token:
            await leakage_check(page, v, url)
    except Exception as exc:  # noqa: BLE001
        v.errors.append(f"leakage check: {first_line(exc)}")
    v.done = True
    await context.close()


async def warm_up(browser, v: Visitor, url: str, deadline: float) -> None:
    """One visitor alone first, so TensorFlow and the demo model are loaded (its time is the cold start)."""
    context, page = await new_page(browser)
    try:
        opened = await arrive(page, v, url, deadline)
        await predict(page, v, url, deadline, opened)
    except Exception as exc:  # noqa: BLE001
        v.errors.append(first_line(exc))
    v.done = True
    await context.close()


# ----------------------------------------------------------------------------------------------
# The hostile visitors
# ----------------------------------------------------------------------------------------------


async def pixel_bomb(browser, h: PixelBomb, url: str, deadline: float) -> None:
    """Hostile visitor A: the pixel-bomb zip on Predict, in its own workspace."""
    context, page = await new_page(browser)
    try:
        await page.goto(f"{url}/Predict")
        h.token = await issued_token(page, PAGE_TIMEOUT_MS / 1000)
        await wait_for_app(page)
        uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
        await uploader.wait_for(state="attached", timeout=max(1.0, deadline - time.monotonic()) * 1000)
        start = time.monotonic()
        await uploader.set_input_files(h.zip_path)
        answered = page.get_by_text(SUMMARY).or_(page.locator(EXCEPTION)).or_(page.locator(ERROR_ALERT))
        await answered.first.wait_for(timeout=max(1.0, deadline - time.monotonic()) * 1000)
        h.summary_seconds = round(time.monotonic() - start, 1)
        body = await page.inner_text("body")
        h.summary = m.group(0) if (m := SUMMARY.search(body)) else ""
        files = sum(int(n) for n in re.findall(r"(\d+) (?:photos?|files?)", h.summary))
        shown = min(files, SHOWN_ON_PREDICT)
        verdicts = page.locator('[data-testid="stAlert"]').filter(has_text=VERDICT)
        while time.monotonic() < deadline:  # each photo's verdict follows the summary (heat maps)
            if await verdicts.count() + await page.locator(ERROR_ALERT).count() >= shown:
                break
            if await page.locator(EXCEPTION).count():
                break
            await asyncio.sleep(0.2)
        await wait_for_app(page, max(1.0, deadline - time.monotonic()) * 1000)
        h.answer_seconds = round(time.monotonic() - start, 1)
        h.verdicts = await verdicts.count()
        for text in await page.locator(ERROR_ALERT).all_inner_texts():
            text = " ".join(text.split())
            name, sep, reason = text.partition(": ")  # "<file name>: <why it was refused>"
            if sep and name.endswith(".png"):
                h.refusals[reason] = h.refusals.get(reason, 0) + 1
            else:
                h.page_errors.append(text[:300])
        if text := await exception_text(page):
            h.exceptions.append(text)
    except Exception as exc:  # noqa: BLE001
        h.errors.append(first_line(exc))
        try:
            if text := await exception_text(page):
                h.exceptions.append(text)
        except Exception:  # noqa: BLE001 - the page is gone
            pass
    await context.close()


async def queue_filler(browser, h: QueueFiller, url: str, deadline: float, attempts: int) -> None:
    """Hostile visitor B: a fresh workspace per attempt (no token, or a forged one), Start training
    twice in each, never coming back."""
    from lib import workspace

    for n in range(attempts):
        if time.monotonic() > deadline - 30:
            h.errors.append(f"stopped after {n} attempts: the time limit is near")
            break
        forged = workspace.new_token() if n % 2 else None  # looks like a token; never issued
        a = Attempt(n=n, forged=forged is not None)
        h.attempts.append(a)
        started = time.monotonic()
        context, page = await new_page(browser)
        try:
            await page.goto(f"{url}/Dataset" + (f"?ws={forged}" if forged else ""))
            await wait_for_app(page)
            token = await issued_token(page)
            for _ in range(50):  # the page replaces a forged token when its script runs
                if token != forged:
                    break
                await asyncio.sleep(0.1)
                token = await issued_token(page)
            a.adopted = forged is not None and token == forged
            await open_train_with_sample(page)
            a.outcome, a.sentence = await press_start(page, deadline)
            a.seconds = round(time.monotonic() - started, 1)
            if a.outcome not in ("refused", "error"):
                run_id, a.sentence = a.sentence, f"run {a.sentence}"
                await wait_for_app(page)
                a.second_outcome, what = await press_start(page, deadline, known_run=run_id)
                a.second_press = what if a.second_outcome in ("refused", "error") else f"run {what}"
            if text := await exception_text(page):
                h.exceptions.append(f"attempt {n}: {text}")
        except Exception as exc:  # noqa: BLE001
            a.outcome, a.sentence = "error", first_line(exc)
            a.seconds = round(time.monotonic() - started, 1)
        await context.close()


# ----------------------------------------------------------------------------------------------
# Driving them all
# ----------------------------------------------------------------------------------------------


async def drive(
    url: str,
    visitors: list[Visitor],
    timeout: float,
    warm: Visitor | None = None,
    bomb: PixelBomb | None = None,
    filler: QueueFiller | None = None,
    attempts: int = 10,
) -> None:
    from playwright.async_api import async_playwright

    deadline = time.monotonic() + timeout
    barrier = asyncio.Event()
    ready: list[int] = []

    async def release() -> None:
        while len(ready) < len(visitors):
            await asyncio.sleep(0.5)
        barrier.set()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=hosted.chromium(), args=hosted.CHROMIUM_ARGS)
        try:
            if warm is not None:
                await warm_up(browser, warm, url, deadline)
            tasks = [release(), *(visitor(browser, v, url, deadline, barrier, ready) for v in visitors)]
            if bomb is not None:
                tasks.append(pixel_bomb(browser, bomb, url, deadline))
            if filler is not None:
                tasks.append(queue_filler(browser, filler, url, deadline, attempts))
            await asyncio.gather(*tasks)
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


def bomb_report(h: PixelBomb, limit: float) -> dict:
    """Bounded: the page answered (a summary of the batch, verdicts or refusals) within `limit`
    seconds, with no traceback."""
    bounded = (
        h.answer_seconds is not None
        and h.answer_seconds <= limit
        and bool(h.summary)
        and not h.exceptions
        and not h.errors
    )
    return {**asdict(h), "bounded": bounded}


def filler_report(h: QueueFiller, max_queued: int, peak_workers: int) -> dict:
    """Bounded: no forged token adopted, no traceback, no second job in one workspace, and never
    more training processes at once than the queue cap (the cap is on jobs at once: a queue that
    drains as jobs finish takes new ones, so jobs queued over the whole test may exceed it)."""
    outcomes = Counter(a.outcome for a in h.attempts)
    sentences = Counter(a.sentence for a in h.attempts if a.outcome == "refused")
    seconds = Counter(f"{a.second_outcome}: {a.second_press}" for a in h.attempts if a.second_outcome)
    two_jobs = [a.n for a in h.attempts if a.second_outcome in ("queued", "running")]
    queued = sum(outcomes[s] for s in ("queued", "running"))
    bounded = (
        not any(a.adopted for a in h.attempts)
        and not h.exceptions
        and not two_jobs
        and peak_workers <= max_queued
    )
    return {
        "attempts": len(h.attempts),
        "jobs_queued": queued,
        "refused": outcomes["refused"],
        "errors": outcomes["error"],
        "refusal_sentences": dict(sentences),
        "second_press_in_the_same_workspace": dict(seconds),
        "workspaces_with_two_jobs": two_jobs,
        "forged_tokens": sum(a.forged for a in h.attempts),
        "forged_tokens_adopted": sum(a.adopted for a in h.attempts),
        "max_queued_jobs": max_queued,
        "most_training_processes_at_once": peak_workers,
        "exceptions": h.exceptions,
        "driver_errors": h.errors,
        "attempt_details": [asdict(a) for a in h.attempts],
        "bounded": bounded,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=10)
    parser.add_argument("--trainers", type=int, default=2, help="how many of the visitors also train")
    parser.add_argument("--images", type=int, default=3, help="photos each visitor uploads")
    parser.add_argument(
        "--attempts", type=int, default=10, help="fresh workspaces the queue filler tries to train in"
    )
    parser.add_argument("--no-hostile", action="store_true", help="the normal visitors only")
    parser.add_argument(
        "--bomb-limit", type=float, default=300, help="seconds the pixel bomb may take to be answered"
    )
    parser.add_argument(
        "--memory-target-mb", type=float, default=2048, help="peak server memory target (MiB)"
    )
    parser.add_argument("--timeout", type=float, default=1500, help="hard limit for the whole test, seconds")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="no warm-up visitor: everyone arrives at a server that has not loaded TensorFlow or the model yet",
    )
    parser.add_argument(
        "--json", help="also write the report (with details and the memory timeline) to this file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary app folder (logs, runs)")
    parser.add_argument(
        "--fresh-conversion",
        action="store_true",
        help="convert the demo to LiteRT at the cold start even when an earlier run's conversion is kept "
        "(.cache/bench-tflite/; reused by default, as a container's cache volume keeps it)",
    )
    args = parser.parse_args(argv)

    os.environ["STUDIO_HOSTED"] = "1"  # this process reads the hosted limits the server runs with
    from lib import settings

    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="studio-load-"))
    port = hosted.free_port()
    visitors = [
        Visitor(n=i, trainer=i < args.trainers, photos=photos)
        for i, photos in enumerate(sample_photos(args.visitors, args.images))
    ]
    warm = None if args.cold else Visitor(n=-1, trainer=False, photos=visitors[-1].photos[:1])
    bomb = filler = None
    if not args.no_hostile:
        bomb_zip = hosted.pixel_bomb_zip(home)
        bomb = PixelBomb(zip_path=str(bomb_zip), zip_kb=round(bomb_zip.stat().st_size / 1024))
        filler = QueueFiller()
    reused = False if args.fresh_conversion else hosted.reuse_conversion(home)
    proc = hosted.start_server(home, port)
    sampler = hosted.MemorySampler(proc.pid)
    sampler.start()
    timed_out = False
    try:
        budget = max(30.0, args.timeout - (time.monotonic() - started) - 20)
        try:
            asyncio.run(
                asyncio.wait_for(
                    drive(
                        f"http://127.0.0.1:{port}", visitors, budget - 10, warm, bomb, filler, args.attempts
                    ),
                    budget,
                )
            )
        except TimeoutError:
            timed_out = True
    finally:
        sampler.stop()
        server_alive = proc.poll() is None
        hosted.stop_server(proc)
        hosted.keep_conversion(home)

    all_times = [t for v in visitors for t in v.verdict_seconds]
    batch_times = [v.verdict_seconds[-1] for v in visitors if len(v.verdict_seconds) == args.images]
    served = [v for v in visitors if v.done and not v.errors and len(v.verdict_seconds) == args.images]
    leaks = [f"visitor {v.n}: {msg}" for v in visitors for msg in v.leak]
    memory_ok = sampler.peak_mb < args.memory_target_mb
    hostile: dict = {}
    if bomb is not None and filler is not None:
        hostile = {
            "pixel_bomb": bomb_report(bomb, args.bomb_limit),
            "queue_filler": filler_report(filler, settings.max_queued_jobs(), sampler.peak_workers),
        }
    hostile_ok = all(h["bounded"] for h in hostile.values())
    all_served = len(served) == args.visitors and not leaks
    report = {
        "visitors": args.visitors,
        "trainers": args.trainers,
        "all_normal_visitors_served": all_served,
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
        "cold_start_verdict_seconds": warm.arrival_seconds if warm else None,
        "cold_start_reused_conversion": reused,
        "cold_start_errors": warm.errors if warm else [],
        "trainers_detail": [
            {"visitor": v.n, "train_seconds": v.train_seconds, "refusals": v.train_refusals, "run": v.run_id}
            for v in visitors
            if v.trainer
        ],
        "hostile": hostile,
        "hostile_refused_or_bounded": hostile_ok if hostile else None,
        "peak_server_memory_mb": round(sampler.peak_mb, 1),
        "peak_server_memory_rss_sum_mb": round(sampler.peak_rss_mb, 1),
        "memory_target_mb": args.memory_target_mb,
        "memory_under_target": memory_ok,
        "processes_at_peak": sampler.peak_processes,
        "peak_streamlit_process_mb": round(sampler.peak_server_only_mb, 1),
        "cpu_seconds": {
            "server_and_workers": round(sum(sampler.cpu_server.values()), 1),
            "browser": round(sum(sampler.cpu_browser.values()), 1),
        },
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "leakage": leaks,
        "errors": [f"visitor {v.n}: {e}" for v in visitors for e in v.errors],
        "warnings": [f"visitor {v.n}: {w}" for v in visitors for w in v.warnings],
        "wall_seconds": round(time.monotonic() - started, 1),
        "app_folder": str(home) if args.keep else None,
        "memory_timeline": [{"t": t, "mb": mb, "processes": n} for t, mb, n in sampler.samples],
        "visitor_details": [
            {k: val for k, val in asdict(v).items() if k not in ("photos",)} for v in visitors
        ],
    }
    ok = all_served and not timed_out and server_alive and memory_ok and (hostile_ok or not hostile)
    ok = ok and not (warm is not None and warm.errors)
    report["passed"] = ok

    print_report(report, args, warm is not None)
    brief = {k: v for k, v in report.items() if k not in ("visitor_details", "memory_timeline")}
    if hostile:
        brief["hostile"] = {
            "pixel_bomb": {k: v for k, v in hostile["pixel_bomb"].items() if k != "zip_path"},
            "queue_filler": {k: v for k, v in hostile["queue_filler"].items() if k != "attempt_details"},
        }
    print(json.dumps(brief))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    else:
        print(f"app folder kept: {home}")
    return 0 if ok else 1


def print_report(report: dict, args: argparse.Namespace, warm: bool) -> None:
    yes = {True: "yes", False: "NO"}
    vs = report["verdict_seconds"]
    print(
        f"every normal visitor served: {yes[report['all_normal_visitors_served']]} "
        f"({report['served_without_error']}/{args.visitors} without error"
        + (", timed out" if report["timed_out"] else "")
        + ("" if report["server_alive_at_end"] else ", THE SERVER DIED")
        + ")"
    )
    print(f"upload -> verdict (normal visitors): per photo median {vs['per_photo_median']} s, p95 {vs['per_photo_p95']} s; "
          f"all {args.images} photos of a visitor median {vs['all_photos_of_a_visitor_median']} s, "
          f"p95 {vs['all_photos_of_a_visitor_p95']} s")  # fmt: skip
    if warm:
        print(
            "cold start (first visitor alone, page opened -> verdict: TensorFlow loads, "
            + (
                "the demo's LiteRT model kept from an earlier run"
                if report["cold_start_reused_conversion"]
                else "the demo is converted to LiteRT"
            )
            + f"): {report['cold_start_verdict_seconds']} s"
        )
    for t in report["trainers_detail"]:
        print(
            f"trainer {t['visitor']}: "
            + (f"trained in {t['train_seconds']} s from the first press of Start" if t["train_seconds"] else "did not train")
            + (f", refused {len(t['refusals'])} times first ({t['refusals'][0]})" if t["refusals"] else ", never refused")
        )  # fmt: skip
    if report["hostile"]:
        a, b = report["hostile"]["pixel_bomb"], report["hostile"]["queue_filler"]
        print(
            f"hostile A (pixel-bomb zip, {a['zip_kb']} KB, on Predict): bounded {yes[a['bounded']]}; "
            f"{a['summary'] or 'no summary'} after {a['summary_seconds']} s, every photo answered after "
            f"{a['answer_seconds']} s ({a['verdicts']} verdicts shown)"
            + "".join(f"; {n} refused: {reason}" for reason, n in a["refusals"].items())
            + "".join(f"; error: {e}" for e in a["page_errors"] + a["exceptions"] + a["errors"])
        )
        print(
            f"hostile B (queue filler, fresh workspaces): bounded {yes[b['bounded']]}; {b['attempts']} attempts, "
            f"{b['jobs_queued']} jobs queued, {b['refused']} refused, {b['errors']} errors; "
            f"{b['forged_tokens_adopted']}/{b['forged_tokens']} forged tokens adopted; "
            f"at most {b['most_training_processes_at_once']} training processes at once (cap {b['max_queued_jobs']})"
        )
        for sentence, n in b["refusal_sentences"].items():
            print(f"  refused {n}x: {sentence}")
        for sentence, n in b["second_press_in_the_same_workspace"].items():
            print(f"  Start again in the same workspace {n}x: {sentence}")
        for e in b["exceptions"] + b["driver_errors"]:
            print(f"  {e}")
        for a_ in b["attempt_details"]:
            if a_["outcome"] == "error":
                print(f"  attempt {a_['n']}: {a_['sentence']}")
    verdict = "under" if report["memory_under_target"] else "OVER"
    print(
        f"peak server memory (PSS: shared pages counted once): {report['peak_server_memory_mb']:.0f} MB over "
        f"{report['processes_at_peak']} processes, {verdict} the {args.memory_target_mb:.0f} MB target (RSS summed "
        f"over processes, shared pages once per process: {report['peak_server_memory_rss_sum_mb']:.0f} MB; "
        f"the Streamlit process alone peaked at {report['peak_streamlit_process_mb']:.0f} MB RSS)"
    )
    print(
        f"CPU used: server and training workers {report['cpu_seconds']['server_and_workers']} s, "
        f"the browser {report['cpu_seconds']['browser']} s (same cores), over {report['wall_seconds']} s; "
        f"load average at the end {report['load_average_at_end']} (other work shares this machine)"
    )
    print("cross-visitor leakage: " + ("none" if not report["leakage"] else "; ".join(report["leakage"])))
    for line in report["errors"] + report["warnings"]:
        print("  " + line)
    print("PASSED" if report["passed"] else "FAILED")


if __name__ == "__main__":
    sys.exit(main())
