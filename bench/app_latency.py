"""The app as a person meets it, in headless Chromium: the Predict page's first verdict after the
server starts and each further photo, and the Evaluate page's first open on a ~1,000-image split;
engine litert against keras (and, with --app, the code before the engine) in the same run.

    python bench/app_latency.py --beans ../shared/datasets/beans        # both parts, 3 repetitions
    python bench/app_latency.py --part predict --reps 5 --batch 20
    python bench/app_latency.py --part evaluate --beans DIR --app /tmp/before-engine  # + the old code
    python bench/app_latency.py --json out.json                         # also write the JSON there

Every measurement starts `streamlit run streamlit_app.py` afresh (headless, 127.0.0.1, runs and
caches in a new temporary folder, STUDIO_ENGINE set) and stops it afterwards; the variants are
interleaved (their order rotates each repetition). One Chromium (Debian's, driven by Playwright),
a new browser context per page visit.

Predict (the shipped demo model, copied into the temporary STUDIO_DEMO_DIR; photos of data/sample):
- variants: `litert` (the demo's LiteRT model made already, as after the app's first start),
  `keras`, and with --cold `litert-cold` (a fresh install: the cache is empty, so the demo's
  .tflite is made on first use, by the page and by the app's background child at once).
- server: Popen -> /_stcore/health answers.
- open: navigation to /Predict -> the page is idle ("This model knows ..." drawn, the script done).
- first verdict: the file chooser is given one photo -> its verdict (an stAlert with "% sure",
  "Not sure" or "doesn't look like") is in the page; from start: Popen -> that verdict, the three
  above back to back (the bench doesn't pause). Heat map: the same upload -> the photo's Grad-CAM.
- further photos, in new sessions of the warm server with the heat map switched off (Options):
  one photo -> its verdict (t1), then BATCH other photos -> all BATCH verdicts (tN); per further
  photo = (tN - t1) / (BATCH - 1). With the heat map on (the default): BATCH photos -> all
  verdicts, divided by BATCH (the page draws up to 12 heat maps, one after each verdict).
  Each measurement uses photos the server hasn't seen (it remembers verdicts by content).
- decode: one sample JPEG to the model's size in this process (lib.data.images.decode), the
  "plus decoding" of the target.
- TensorFlow loaded: whether the server process has libtensorflow mapped when the page is open
  and when the first verdict is in (/proc/PID/maps).

Evaluate (a run trained here on the beans photos cut into quadrants, bench/unknown.py's crop set
with 22% of the photos in the test split: 1,016 test images; made once in --work and reused):
- variants: `litert`, `keras` and `litert-cold`, and with --app `before` and `before-cold` (that
  checkout's app on the same run folder; it has no engine setting: Keras). Plain variants start
  with the cache training left (a copy of --work/cache: the stored scan, the converted base, the
  run's cached features), as in the app right after training a run; `-cold` ones with an empty
  cache (a server that never saw the dataset: the scan reads every image and, without cached
  features, every test image goes through the model).
- the run's stored predictions (RUN/predictions/) are deleted before each measurement, so every
  open predicts the whole test split; the dataset's files are read once first so the OS caches
  them for every variant alike.
- first open: navigation to /Evaluate -> the confusion matrix's plot is drawn (plotly's SVG in the
  page). It includes the server's first script run (imports of the page's modules), loading the
  model (TensorFlow for keras), the scan (read from the cache, or all 4,564 images when cold),
  predicting the 1,016 test images (from the cached features through the run's head.npz with 4
  of them checked against the model, or decoding and running all of them) and the browser drawing.

All times are wall clock through the browser: HTTP upload, the websocket round trip, Streamlit's
script rerun and React drawing, on a machine that may be busy with other work. Next to them, the
CPU seconds (user + system) the server's processes and the browser used meanwhile: a busy
machine stretches wall time far more than CPU time (though spinning thread pools inflate it
too). Medians are printed with the min-max range, then one JSON line. Exit code 0 when every
measurement finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.hosted import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    cpu_seconds,
    stop_server,
    streamlit_command,
    tree,
    wait_healthy,
)
from bench.hosted import free_port as _free_port  # noqa: E402

VERDICTS = r"""n => [...document.querySelectorAll('[data-testid="stAlert"]')]
    .filter(e => /% sure|Not sure|doesn.t look like/.test(e.innerText)).length >= n"""
IDLE = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
MATRIX = ".st-key-confusion_matrix .main-svg"
ERRORS = '[data-testid="stException"], [data-testid="stAlert"]:has-text("cannot")'
TEST_SHARE = (0.64, 0.78)  # crop set: train below 64% of the photos, validation to 78%, test the rest
POLL_MS = 20


# ----------------------------------------------------------------------------------------------
# Servers
# ----------------------------------------------------------------------------------------------


def start(app: Path, home: Path, env_extra: dict[str, str], timeout: float = 120) -> tuple[object, float]:
    """`streamlit run streamlit_app.py` of checkout `app`, runs and caches under `home`; returns
    (process, seconds from Popen to a healthy answer). The process has .started (perf_counter)."""
    env = dict(os.environ)
    env.update(
        STUDIO_RUNS_DIR=str(home / "models"),
        STUDIO_CACHE_DIR=str(home / "cache"),
        STUDIO_DEMO_DIR=str(home / "demo"),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        **env_extra,
    )
    env.pop("STUDIO_HOSTED", None)
    for sub in ("models", "cache", "demo"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = open(home / "streamlit.log", "w")  # noqa: SIM115 - closed by stop_server
    started = time.perf_counter()
    proc = subprocess.Popen(streamlit_command(port), cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log, proc.started, proc.url = log, started, f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    wait_healthy(proc, proc.url, home, timeout, poll=0.05)  # type: ignore[attr-defined]
    return proc, time.perf_counter() - started


def tensorflow_loaded(pid: int) -> bool:
    """Whether the process has TensorFlow's shared library mapped (it was imported)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "libtensorflow" in maps or "_pywrap_tensorflow" in maps


class Cpu:
    """CPU seconds (user + system) used from start to stop by the server's process tree and by
    the browser (this script's other descendants); processes that end in between are missed."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid

    def _now(self) -> tuple[float, float]:
        import psutil

        server = tree(self.server_pid)
        ids = {p.pid for p in server}
        mine = [p for p in psutil.Process(os.getpid()).children(recursive=True) if p.pid not in ids]
        return cpu_seconds(server), cpu_seconds(mine)

    def __enter__(self) -> Cpu:
        self._start = self._now()
        return self

    def __exit__(self, *_) -> None:
        end = self._now()
        self.server, self.browser = end[0] - self._start[0], end[1] - self._start[1]


def new_page(browser, timeout: float):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(timeout * 1000)
    return context, page


def idle(page) -> None:
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function(IDLE, polling=POLL_MS)


# ----------------------------------------------------------------------------------------------
# Predict
# ----------------------------------------------------------------------------------------------


def sample_photos(n: int) -> list[Path]:
    """n distinct sample photos, classes interleaved."""
    from lib import settings

    by_class = [
        sorted(d.glob("*.jpg")) for d in sorted((settings.sample_dir() / "test").iterdir()) if d.is_dir()
    ]
    by_class += [
        sorted(d.glob("*.jpg")) for d in sorted((settings.sample_dir() / "train").iterdir()) if d.is_dir()
    ]
    mixed = [p for group in zip(*by_class, strict=False) for p in group]
    if len(mixed) < n:
        raise SystemExit(f"data/sample has {len(mixed)} photos of each class in turn; {n} are needed")
    return mixed[:n]


def demo_lite_cache(work: Path) -> Path:
    """The cache a first start leaves (the demo loaded with LiteRT once, in a child process as the
    app would; the demo ships its .tflite, so it may hold nothing): copied into each `litert`
    server's fresh cache."""
    from lib import settings

    demo = settings.demo_run_dir()
    if demo is None:
        raise SystemExit("no demo run: run python scripts/make_demo_model.py first")
    where = work / "demo-lite"
    if (where / "done").is_file():
        return where / "cache"
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(demo, where / "demo" / demo.name)
    env = {**os.environ, "STUDIO_CACHE_DIR": str(where / "cache"), "STUDIO_DEMO_DIR": str(where / "demo"),
           "STUDIO_RUNS_DIR": str(where / "models"), "STUDIO_ENGINE": "litert", "TF_CPP_MIN_LOG_LEVEL": "2"}  # fmt: skip
    code = "import sys\nfrom lib.models import loader\nm = loader.load(sys.argv[1])\nassert m.engine == 'litert', m.note"
    subprocess.run(
        [sys.executable, "-c", code, str(where / "demo" / demo.name)], cwd=ROOT, env=env, check=True
    )
    (where / "cache").mkdir(parents=True, exist_ok=True)  # the demo ships its .tflite: may stay empty
    (where / "done").write_text("ok")
    return where / "cache"


def predict_variant(
    variant: str, browser, work: Path, photos: list[Path], batch: int, timeout: float
) -> dict:
    """One fresh server of `variant`: server start, Predict open, first verdict, further photos."""
    from lib import settings

    demo = settings.demo_run_dir()
    home = Path(tempfile.mkdtemp(prefix="app-latency-", dir=work))
    shutil.copytree(demo, home / "demo" / demo.name)
    if variant == "litert":
        shutil.copytree(demo_lite_cache(work), home / "cache")
    engine = "keras" if variant == "keras" else "litert"
    first, one, many, many_heat = (
        photos[0],
        photos[1:2],
        photos[2 : 2 + batch],
        photos[2 + batch : 2 + 2 * batch],
    )
    out: dict = {"variant": variant}
    proc, out["server_s"] = start(ROOT, home, {"STUDIO_ENGINE": engine})
    try:
        context, page = new_page(browser, timeout)
        t = time.perf_counter()
        with Cpu(proc.pid) as cpu:
            page.goto(proc.url + "/Predict")
            page.get_by_text("This model knows").first.wait_for()
            idle(page)
        out["open_s"] = time.perf_counter() - t
        out["open_cpu_server_s"] = cpu.server
        out["tf_loaded_at_open"] = tensorflow_loaded(proc.pid)
        t = time.perf_counter()
        with Cpu(proc.pid) as cpu:
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(first))
            page.wait_for_function(VERDICTS, arg=1, polling=POLL_MS)
        now = time.perf_counter()
        out["first_verdict_cpu_server_s"], out["first_verdict_cpu_browser_s"] = cpu.server, cpu.browser
        out["first_verdict_s"] = now - t
        out["from_start_s"] = now - proc.started
        out["tf_loaded_at_verdict"] = tensorflow_loaded(proc.pid)
        page.get_by_text("Red: where the model looked most").first.wait_for()
        out["first_heat_map_s"] = time.perf_counter() - t
        idle(page)
        context.close()
        out["t1_s"], cpu1 = upload_in_new_session(browser, proc, one, heat=False, timeout=timeout)
        out["tn_s"], cpun = upload_in_new_session(browser, proc, many, heat=False, timeout=timeout)
        out["per_further_photo_ms"] = (out["tn_s"] - out["t1_s"]) / (batch - 1) * 1000
        out["per_further_photo_cpu_server_ms"] = (cpun.server - cpu1.server) / (batch - 1) * 1000
        out["per_further_photo_cpu_browser_ms"] = (cpun.browser - cpu1.browser) / (batch - 1) * 1000
        out["tn_heat_s"], _ = upload_in_new_session(browser, proc, many_heat, heat=True, timeout=timeout)
        out["per_photo_with_heat_maps_ms"] = out["tn_heat_s"] / batch * 1000
    finally:
        stop_server(proc)
        shutil.rmtree(home, ignore_errors=True)
    return out


def upload_in_new_session(
    browser, proc, photos: list[Path], *, heat: bool, timeout: float
) -> tuple[float, Cpu]:
    """Seconds from giving the file chooser `photos` to all their verdicts, in a new session, and
    the CPU the server and the browser used meanwhile."""
    context, page = new_page(browser, timeout)
    try:
        page.goto(proc.url + "/Predict")
        page.get_by_text("This model knows").first.wait_for()
        idle(page)
        if not heat:
            page.get_by_text("Options").first.click()
            page.get_by_text("Show where the model looked (heat map)").click()
            idle(page)
        t = time.perf_counter()
        with Cpu(proc.pid) as cpu:
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                [str(p) for p in photos]
            )
            page.wait_for_function(VERDICTS, arg=len(photos), polling=POLL_MS)
        seconds = time.perf_counter() - t
        idle(page)
        return seconds, cpu
    finally:
        context.close()


def decode_ms(photos: list[Path]) -> float:
    """Median ms to decode one sample JPEG to the demo model's input size (this process)."""
    from lib import runs, settings
    from lib.data import images

    size = int(runs.read_run(settings.demo_run_dir()).image_size or 160)
    times = []
    for p in photos * 3:
        t = time.perf_counter()
        images.decode(p, size)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------
# Evaluate
# ----------------------------------------------------------------------------------------------


def eval_run(work: Path, beans: Path) -> Path:
    """A finished run on the beans quadrant set whose test split holds >= 1,000 images (made once)."""
    from bench.unknown import make_crop_set
    from lib import runs

    data = make_crop_set(beans, work / "beans-quadrants", photos=10**6, shares=TEST_SHARE)
    models = work / "models"
    found = (  # a run of this code: it has head.npz (scored from cached features)
        [
            r
            for r in runs.list_runs(models)
            if r.has_model and r.state == "finished" and (r.path / "head.npz").is_file()
        ]
        if models.is_dir()
        else []
    )
    if found:
        return found[-1].path
    print("training the evaluation run (once; kept in --work)…", flush=True)
    env = {**os.environ, "STUDIO_CACHE_DIR": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "lib", "train", "--data", str(data), "--weights", "bundled",
           "--runs-dir", str(models), "--seed", "1", "--quiet"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    found = [r for r in runs.list_runs(models) if r.has_model and r.state == "finished"]
    if not found:
        raise SystemExit(f"training left no finished run in {models}")
    return found[-1].path


def evaluate_variant(variant: str, browser, work: Path, run: Path, app: Path, timeout: float) -> dict:
    """One fresh server of `variant` (its checkout, its engine, the cache training left or an
    empty one) on the run folder: /Evaluate's first open, the run's stored predictions deleted first."""
    shutil.rmtree(run / "predictions", ignore_errors=True)
    home = Path(tempfile.mkdtemp(prefix="app-latency-", dir=work))
    (home / "models").symlink_to(run.parent, target_is_directory=True)
    if not variant.endswith("-cold"):
        shutil.copytree(work / "cache", home / "cache", symlinks=True)
    engine = "litert" if variant.startswith("litert") else "keras"
    out: dict = {"variant": variant}
    proc, out["server_s"] = start(app, home, {"STUDIO_ENGINE": engine})
    try:
        context, page = new_page(browser, timeout)
        t = time.perf_counter()
        with Cpu(proc.pid) as cpu:
            page.goto(proc.url + "/Evaluate")
            page.locator(MATRIX).or_(page.locator(ERRORS)).first.wait_for()
        out["first_open_s"] = time.perf_counter() - t
        out["first_open_cpu_server_s"] = cpu.server
        if not page.locator(MATRIX).count():
            raise SystemExit(
                f"{variant}: no confusion matrix: {page.locator(ERRORS).first.inner_text()[:500]}"
            )
        out["images"] = page.locator('[data-testid="stMetricValue"]').first.inner_text()
        out["tf_loaded"] = tensorflow_loaded(proc.pid)
        context.close()
    finally:
        stop_server(proc)
        shutil.rmtree(home, ignore_errors=True)
    stored = list((run / "predictions").glob("*.parquet"))
    out["stored_predictions"] = len(stored)
    return out


def read_files(folder: Path) -> None:
    """Read every file once, so the OS caches the dataset for every variant alike."""
    for p in folder.rglob("*"):
        if p.is_file():
            p.read_bytes()


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def attempt(variant: str, measure, *args) -> dict:
    """measure(*args), its numbers rounded; a failure is recorded (and counted) instead of ending
    the whole bench."""
    try:
        row = measure(*args)
    except Exception as exc:  # noqa: BLE001 - a timeout or a page that broke: keep the others
        return {"variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def summary(rows: list[dict], keys: list[str]) -> dict:
    """{variant: {key: {median, min, max, n}}} over the repetitions."""
    out: dict = {}
    for row in rows:
        out.setdefault(row["variant"], {k: [] for k in keys})
        for k in keys:
            if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool):
                out[row["variant"]][k].append(row[k])
    return {
        v: {
            k: {
                "median": round(statistics.median(xs), 3),
                "min": round(min(xs), 3),
                "max": round(max(xs), 3),
                "n": len(xs),
            }
            for k, xs in ks.items()
            if xs
        }
        for v, ks in out.items()
    }


def num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def table(stats: dict, keys: list[tuple[str, str]], variants: list[str]) -> None:
    width = max(len(label) for _, label in keys) + 2
    print("".ljust(width) + "".join(v.rjust(24) for v in variants))
    for key, label in keys:
        cells = []
        for v in variants:
            s = stats.get(v, {}).get(key)
            cells.append((f"{num(s['median'])} ({num(s['min'])}-{num(s['max'])})" if s else "-").rjust(24))
        print(label.ljust(width) + "".join(cells))


def ratio(stats: dict, key: str, slow: str, fast: str) -> float | None:
    try:
        return round(stats[slow][key]["median"] / stats[fast][key]["median"], 2)
    except (KeyError, ZeroDivisionError):
        return None


PREDICT_KEYS = [
    ("server_s", "server start -> healthy (s)"),
    ("open_s", "open /Predict -> idle (s)"),
    ("open_cpu_server_s", "  server CPU (s)"),
    ("first_verdict_s", "upload -> first verdict (s)"),
    ("first_verdict_cpu_server_s", "  server CPU (s)"),
    ("first_verdict_cpu_browser_s", "  browser CPU (s)"),
    ("from_start_s", "server start -> first verdict (s)"),
    ("first_heat_map_s", "upload -> first heat map (s)"),
    ("t1_s", "warm, no heat map: 1 photo (s)"),
    ("tn_s", "warm, no heat map: batch (s)"),
    ("per_further_photo_ms", "per further photo (ms)"),
    ("per_further_photo_cpu_server_ms", "  server CPU (ms)"),
    ("per_further_photo_cpu_browser_ms", "  browser CPU (ms)"),
    ("tn_heat_s", "warm, heat maps: batch (s)"),
    ("per_photo_with_heat_maps_ms", "per photo with heat maps (ms)"),
]
EVALUATE_KEYS = [
    ("server_s", "server start -> healthy (s)"),
    ("first_open_s", "open /Evaluate -> matrix (s)"),
    ("first_open_cpu_server_s", "  server CPU (s)"),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--part", choices=["predict", "evaluate", "both"], default="both")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each variant (default 3)")
    parser.add_argument(
        "--batch", type=int, default=20, help="photos in the further-photos batch (default 20)"
    )
    parser.add_argument(
        "--cold", action="store_true", help="add Predict's litert-cold variant (a fresh install)"
    )
    parser.add_argument("--variants", help="Predict's variants, comma-separated (e.g. litert-cold)")
    parser.add_argument("--beans", type=Path, default=ROOT.parent / "shared" / "datasets" / "beans",
                        help="the beans photos (train/ and test/ class folders) for Evaluate's run")  # fmt: skip
    parser.add_argument(
        "--app", type=Path, help="another checkout to time on Evaluate too (variant 'before')"
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "app_latency",
                        help="where the quadrant set, its run and the demo's LiteRT model are kept")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any one wait may take")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args()
    if args.batch < 2:
        parser.error("--batch must be at least 2")
    from playwright.sync_api import sync_playwright

    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "reps": args.reps,
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start",
    }
    predict_rows: list[dict] = []
    evaluate_rows: list[dict] = []
    predict_variants = (
        args.variants.split(",")
        if args.variants
        else ["litert", "keras"] + (["litert-cold"] if args.cold else [])
    )
    evaluate_variants = ["litert", "keras", "litert-cold"] + (["before", "before-cold"] if args.app else [])
    run = None
    if args.part in ("evaluate", "both"):
        if not args.beans.is_dir():
            raise SystemExit(f"no beans photos at {args.beans}: give --beans DIR (or --part predict)")
        run = eval_run(args.work, args.beans)
        read_files(Path(json.loads((run / "config.json").read_text())["data_dir"]))
        result["evaluate_run"] = str(run)
    photos = sample_photos(2 + 2 * args.batch)
    if args.part in ("predict", "both"):
        demo_lite_cache(args.work)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for rep in range(args.reps):
                if args.part in ("predict", "both"):
                    for v in (
                        predict_variants[rep % len(predict_variants) :]
                        + predict_variants[: rep % len(predict_variants)]
                    ):
                        row = attempt(
                            v, predict_variant, v, browser, args.work, photos, args.batch, args.timeout
                        )
                        print(f"rep {rep + 1} predict {json.dumps(row)}", flush=True)
                        predict_rows.append(row)
                if args.part in ("evaluate", "both"):
                    for v in (
                        evaluate_variants[rep % len(evaluate_variants) :]
                        + evaluate_variants[: rep % len(evaluate_variants)]
                    ):
                        app = args.app if v.startswith("before") else ROOT
                        row = attempt(v, evaluate_variant, v, browser, args.work, run, app, args.timeout)
                        print(f"rep {rep + 1} evaluate {json.dumps(row)}", flush=True)
                        evaluate_rows.append(row)
        finally:
            browser.close()
    print()
    if predict_rows:
        stats = summary(predict_rows, [k for k, _ in PREDICT_KEYS])
        print(
            f"Predict (demo model; median (min-max) of {args.reps} fresh servers per variant; batch {args.batch})"
        )
        table(stats, PREDICT_KEYS, predict_variants)
        decode = decode_ms(photos[:10])
        print(f"decoding one sample JPEG to the model's size (this process): {decode:.1f} ms")
        tf = {
            v: sorted(
                {
                    (r["tf_loaded_at_open"], r["tf_loaded_at_verdict"])
                    for r in predict_rows
                    if r["variant"] == v and "error" not in r
                }
            )
            for v in predict_variants
        }
        tf = {v: [list(pair) for pair in pairs] for v, pairs in tf.items()}
        print(
            "TensorFlow in the server (at open, at first verdict): "
            + "; ".join(f"{v} {t}" for v, t in tf.items())
        )
        ratios = {
            "first_verdict_keras_over_litert": ratio(stats, "first_verdict_s", "keras", "litert"),
            "from_start_keras_over_litert": ratio(stats, "from_start_s", "keras", "litert"),
            "per_further_photo_keras_over_litert": ratio(stats, "per_further_photo_ms", "keras", "litert"),
            "first_verdict_server_cpu_keras_over_litert": ratio(
                stats, "first_verdict_cpu_server_s", "keras", "litert"
            ),
        }
        print("ratios keras / litert (medians): " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
        result["predict"] = {
            "stats": stats,
            "ratios": ratios,
            "decode_ms": round(decode, 2),
            "tensorflow": tf,
            "rows": predict_rows,
        }
    if evaluate_rows:
        stats = summary(evaluate_rows, [k for k, _ in EVALUATE_KEYS])
        print()
        print(
            f"Evaluate first open, {evaluate_rows[0].get('images')} test images (median (min-max) of {args.reps} fresh servers)"
        )
        table(stats, EVALUATE_KEYS, evaluate_variants)
        ratios = {
            "keras_over_litert": ratio(stats, "first_open_s", "keras", "litert"),
            "keras_over_litert_server_cpu": ratio(stats, "first_open_cpu_server_s", "keras", "litert"),
        }
        if args.app:
            for slow, fast in (("before", "litert"), ("before-cold", "litert-cold")):
                name = f"{slow}_over_{fast}".replace("-", "_")
                ratios[name] = ratio(stats, "first_open_s", slow, fast)
                ratios[f"{name}_server_cpu"] = ratio(stats, "first_open_cpu_server_s", slow, fast)
        print(
            "ratios (medians): "
            + ", ".join(f"{k} {v}" for k, v in ratios.items())
            + "  (target: before / litert >= 3)"
        )
        result["evaluate"] = {"stats": stats, "ratios": ratios, "rows": evaluate_rows}
    result["machine"] += f", {os.getloadavg()[0]:.1f} at the end (other work shares the cores)"
    print(f"machine: {result['machine']}")
    failed = [r for r in predict_rows + evaluate_rows if "error" in r]
    for r in failed:
        print(f"FAILED {r['variant']}: {r['error']}")
    result["failed"] = len(failed)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
