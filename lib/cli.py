"""`python -m lib ...`: the shell interface, mirroring the app (scan, doctor, train, evaluate,
predict, runs, cache).

`train`'s flags are generated from TrainConfig's fields (names, help, defaults), so the CLI, the
Train page and config.json can never drift apart; `--config RUN/config.json` reproduces a run and
flags override it. Every UserError becomes one line on stderr and exit code 2; the last stdout line
of scan, train, evaluate, runs and cache is JSON. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

from lib import runs, settings, storage
from lib.data import curation
from lib.data.layouts import check_folder
from lib.data.scan import health_report, load_scan, scan
from lib.doctor.examine import examine
from lib.errors import UserError
from lib.evaluate.other_photos import check_other_photos
from lib.evaluate.predictions import data_root, evaluate, normalize_split
from lib.evaluate.report import write_report
from lib.models import engine, loader
from lib.models.registry import BASES
from lib.serve.predict import percent, predict_images
from lib.text import clock, one_line, size_text
from lib.train import features
from lib.train.config import TrainConfig, default_of, options
from lib.train.recipe import train
from lib.vocab import EPOCH_PHASES, EVAL_SPLITS, SPLITS, WEIGHTS

# ----------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def _flag_type(f: Any) -> Any:
    """The Python type of a config field (int for `int | None`)."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _acceptance(text: str) -> float:
    """--acceptance: a share between 0.5 and 0.9999 (99 and 99% mean 0.99 too)."""
    try:
        value = float(str(text).strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (try 0.99)") from None
    if value > 1:
        value /= 100
    if not 0.5 <= value <= 0.9999:
        raise argparse.ArgumentTypeError("the acceptance must be between 0.5 and 0.9999 (e.g. 0.99)")
    return value


def _engine_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=engine.ENGINES,
        default=None,
        help="what runs the models: auto (LiteRT on a CPU, Keras with a GPU), litert or keras "
        "(default: the STUDIO_ENGINE setting, else auto)",
    )


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, from its Option (see lib.train.config)."""
    for f, opt in options():
        if not opt.cli:
            continue
        flag = opt.flag or "--" + f.name.replace("_", "-")
        kind = _flag_type(f)
        default = default_of(f)
        choices = opt.labels or {}
        if f.name == "base":
            choices = {name: spec.summary for name, spec in BASES.items()}
        extra = f" Choices: {', '.join(map(str, choices))}." if choices else ""
        shown = "the base's own size" if f.name == "image_size" else default
        text = f"{opt.label}. {opt.help}{extra} (default: {shown})".replace("..", ".").replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(), help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m lib",
        description="Image-classifier studio from the shell: check a dataset, train, evaluate, predict.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("scan", help="check an image dataset folder and print its health report")
    p.add_argument("data", metavar="DIR", help="dataset folder (DIR/<class>/* or DIR/<split>/<class>/*)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        metavar="X",
        help="validation share when the app splits (0.15)",
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.15, metavar="X", help="test share when the app splits (0.15)"
    )

    p = sub.add_parser("train", help="train a classifier and save it as a run (every setting is a flag)")
    p.add_argument(
        "--config", metavar="FILE", help="a run's config.json (or run folder) to reproduce; flags override it"
    )
    add_config_flags(p)
    p.add_argument("--runs-dir", default=None, metavar="DIR", help="where runs are saved (default: models/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _engine_flag(p)

    p = sub.add_parser("evaluate", help="evaluate a run on a split and write its report")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the run's)")
    p.add_argument(
        "--split", default="test", help="train, validation, test, all, or a folder of class folders"
    )
    p.add_argument(
        "--unknown",
        metavar="DIR",
        help="photos of other things (a folder or zip): how many are caught as unknown, how many real "
        "images of the split are wrongly refused, the AUROC",
    )
    p.add_argument(
        "--acceptance",
        type=_acceptance,
        default=None,
        metavar="A",
        help="with --unknown: the acceptance level",
    )
    _engine_flag(p)

    p = sub.add_parser("predict", help="predict photos (files, folders or zips) with a run")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders of images, or zips")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument(
        "--threshold", type=float, default=0.6, metavar="P", help="unsure below this top probability (0.6)"
    )
    p.add_argument("--top-k", type=int, default=3, metavar="N", help="probabilities listed in JSON (3)")
    p.add_argument(
        "--acceptance",
        type=_acceptance,
        default=None,
        metavar="A",
        help="share of real photos accepted as known; above it a photo is 'unknown' (default: the run's, 0.99)",
    )
    _engine_flag(p)

    p = sub.add_parser("runs", help="list the trained runs (state, accuracy, note)")
    p.add_argument("--runs-dir", default=None, metavar="DIR", help="runs folder (default: models/)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")

    p = sub.add_parser(
        "doctor", help="find suspect labels, near-duplicates and outliers; apply or undo decisions"
    )
    p.add_argument("data", metavar="DIR", help="dataset folder (as for scan)")
    p.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    p.add_argument(
        "--apply",
        metavar="FILE",
        help="record decisions from a CSV or JSON file (path, action relabel/exclude/keep, label)",
    )
    p.add_argument("--undo", action="store_true", help="take back the last batch of decisions")
    p.add_argument("--base", default="MobileNetV2", help="base network for the features (MobileNetV2)")
    p.add_argument("--weights", default="auto", help="auto, imagenet, bundled, none or a file (auto)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX", help="feature image size")
    p.add_argument(
        "--limit", type=int, default=20, metavar="N", help="rows listed per kind in the text output"
    )

    p = sub.add_parser("cache", help="show what the cache folder holds (features, scans, predictions …)")
    p.add_argument(
        "--clear", action="store_true", help="clear the cached image features (rebuilt when needed)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


# ----------------------------------------------------------------------------------------------
# scan
# ----------------------------------------------------------------------------------------------


def _format_report(report: dict[str, Any], max_files: int = 20) -> str:
    lines = [
        f"Dataset: {report['root']}",
        f"Layout: {report['layout_text']}",
        f"{report['usable']:,} usable images of {report['files']:,} files, "
        f"{len(report['classes'])} classes, scanned in {report['seconds']:.1f} s",
        "",
    ]
    cols = [*SPLITS, "total"]
    width = max([len("class"), *(len(c) for c in report["classes"])])
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{c:>10}" for c in cols))
    for cls in report["classes"]:
        lines.append(f"{cls:<{width}}  " + "  ".join(f"{report['counts'][c][cls]:>10,}" for c in cols))
    lines.append(f"{'all':<{width}}  " + "  ".join(f"{report['totals'][c]:>10,}" for c in cols))
    if report["baseline"]:
        b = report["baseline"]
        lines.append(
            f"\nMajority-class baseline: always answering '{b['class']}' scores {b['accuracy']:.1%} on {b['split']}."
        )
    if not report["problems"]:
        lines.append("\nNo problems found.")
    for p in report["problems"]:
        lines.append(f"\nProblem [{p['kind']}]: {p['message']}")
        items = [" = ".join(g) for g in p["groups"]] if "groups" in p else p["files"]
        for item in items[:max_files]:
            lines.append(f"  {item}")
        if len(items) > max_files:
            lines.append(f"  ... and {len(items) - max_files:,} more (use --json to list all)")
    return "\n".join(lines)


def scan_command(args: argparse.Namespace) -> int:
    """Print the health report; exit 0 even when problems are found (last line JSON)."""
    result = scan(
        args.data,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        max_pixels=settings.max_pixels(),
    )
    report = health_report(result)
    if args.json:
        print(json.dumps(report))
        return 0
    print(_format_report(report))
    summary = {
        "root": report["root"],
        "usable": report["usable"],
        "files": report["files"],
        "classes": report["classes"],
        "totals": report["totals"],
        "problems": {p["kind"]: p["count"] for p in report["problems"]},
    }
    print(json.dumps(summary))
    return 0


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------


class ProgressBar:
    """A plain-text progress line on stderr: redrawn in place on a terminal, one line per step otherwise."""

    def __init__(self, stream: Any = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_key: Any = None
        self.last_time = 0.0
        self.width = 0

    def __call__(self, progress: dict[str, Any]) -> None:
        if self.quiet:
            return
        phase = progress.get("phase", "")
        if phase == "features":
            done, total = int(progress.get("done") or 0), int(progress.get("total") or 1)
            frac, what = done / max(total, 1), f"{done}/{total} images"
        elif phase in EPOCH_PHASES:
            done, total = int(progress.get("epoch") or 0), int(progress.get("epochs") or 1)
            logs = progress.get("logs") or {}
            frac = done / max(total, 1)
            what = f"epoch {done}/{total}"
            if "val_accuracy" in logs:
                what += (
                    f"  loss {logs.get('loss', 0):.3f}  acc {logs.get('accuracy', 0):.3f}"
                    f"  val_acc {logs['val_accuracy']:.3f}"
                )
        else:
            frac, what = 0.0, ""
        bar = "#" * int(frac * 20) + "." * (20 - int(frac * 20))
        line = f"{phase:<9} [{bar}] {what}  ETA {clock(progress.get('eta_seconds'))}"
        key = (phase, progress.get("epoch"), int(frac * 10) if phase == "features" else None)
        now = time.monotonic()
        if self.tty:
            if now - self.last_time < 0.1 and key == self.last_key:
                return
            self.stream.write("\r" + line + " " * max(0, self.width - len(line)))
            self.width = len(line)
        else:
            if key == self.last_key:
                return
            self.stream.write(line + "\n")
        self.last_key, self.last_time = key, now
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.width and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from `--config` (when given) with every flag that was set applied on top."""
    cfg = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    for f, opt in options():
        value = getattr(args, f.name, None)
        if opt.cli and value is not None:
            if isinstance(value, str) and opt.choices and all(isinstance(c, str) for c in opt.choices):
                value = value.strip().lower() if f.name != "base" else value.strip()
            setattr(cfg, f.name, value)
    if not cfg.data_dir:
        raise UserError("No dataset given: use --data DIR (or --config with a run's config.json).")
    # --data is relative to where you are; a folder recorded in a config (the demo's "data/sample")
    # is relative to the repository.
    given = args.data_dir is not None
    cfg.data_dir = str(check_folder(cfg.data_dir if given else runs.resolve_data_dir(cfg.data_dir)))
    weights = str(cfg.weights)
    if weights.lower() not in WEIGHTS:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"The weights file {weights} does not exist.")
        cfg.weights = str(path.resolve())
    return cfg.resolved()


def train_command(args: argparse.Namespace) -> int:
    """Train one run with a progress bar; the last stdout line is JSON (exit 1 if training failed)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    runs_dir = Path(args.runs_dir) if args.runs_dir else settings.runs_dir()
    storage.clean_temp_files(runs_dir)  # what killed runs left half-written
    config = config_from_args(args)
    run_dir = runs.create_run(runs_dir, config)
    bar = ProgressBar(quiet=args.quiet)
    write = runs.progress_writer(run_dir)

    def on_progress(progress: dict[str, Any]) -> None:
        write(progress)
        bar(progress)

    runs.write_status(run_dir, "running", pid=os.getpid(), progress={"phase": "starting"})
    metrics: dict[str, Any] = {}
    with runs.recording_status(run_dir) as outcome:
        metrics = train(config, run_dir, on_progress=on_progress)
        outcome.finished(metrics)
    bar.close()
    if outcome.state == "cancelled":
        raise KeyboardInterrupt
    if outcome.state == "failed":
        if isinstance(outcome.error, UserError):
            raise outcome.error
        print(f"error: {outcome.reason}", file=sys.stderr)
        return 1
    summary = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir.resolve()),
        "base": config.base,
        "image_size": config.image_size,
        "weights_used": metrics.get("weights_used"),
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "epochs_run": metrics.get("epochs_run"),
        "train_seconds": metrics.get("train_seconds"),
        "feature_seconds": metrics.get("feature_seconds"),
        "feature_cache": metrics.get("feature_cache"),
    }
    print(json.dumps(summary), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def evaluate_command(args: argparse.Namespace) -> int:
    """Evaluate a run on a split, write report.html/.md; the last stdout line is JSON metrics."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    split = normalize_split(args.split or "test")
    run = runs.open_run(args.run)
    data_root(run, args.data, split)  # fail fast, before loading TensorFlow
    if args.unknown and not Path(args.unknown).expanduser().exists():
        raise UserError(f"The folder of other photos {args.unknown} does not exist.")
    result = evaluate(run, args.data, split)
    paths = write_report(result)
    m = result.metrics
    base = m["majority_baseline"]
    label = split if split in EVAL_SPLITS else f"folder {split}"
    print(
        f"{label}: {m['n_images']} images, {m['correct']} correct, {m['incorrect']} incorrect; "
        f"accuracy {m['accuracy']:.1%} (majority-class baseline {base['accuracy']:.1%})"
    )
    for pair in m["most_missed"][:5]:
        print(f"  {pair['text']}")
    print(f"report: {paths['html']}")
    summary = {
        "run_dir": str(run.path),
        "split": split,
        "data_dir": str(result.data_dir) if result.data_dir else None,
        **{k: m[k] for k in ("n_images", "correct", "incorrect", "accuracy")},
        "majority_baseline": base,
        **{k: m[k] for k in ("classes", "per_class", "macro_avg", "weighted_avg", "top_k_accuracy")},
        "confusion_matrix": m["confusion_matrix"],
        "most_missed": m["most_missed"],
        "report": {k: str(v) for k, v in paths.items()},
        "predictions_file": str(result.predictions_file) if result.predictions_file else None,
    }
    calibration = result.metrics.get("calibration")
    if calibration:
        summary["calibration"] = calibration
    if args.unknown:
        other = Path(args.unknown).expanduser()
        check = check_other_photos(
            run, [(str(other), other)], acceptance=args.acceptance, split=split, data_dir=args.data
        )
        print(check.sentence())
        summary["unknown"] = check.summary()
    print(json.dumps(summary, ensure_ascii=False))
    return 0


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------


def predict_command(args: argparse.Namespace) -> int:
    """One line per photo (or JSON); exit 0 when it ran (even if some files failed), 2 for a bad run."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    model = loader.load(args.run)
    detector = model.detector
    acceptance = args.acceptance or (detector.acceptance if detector is not None else None)
    results = predict_images(
        model,
        [(str(p), Path(p)) for p in args.images],
        top_k=args.top_k,
        unsure_threshold=args.threshold,
        keep_images=False,
        **({"acceptance": acceptance} if acceptance is not None else {}),
    )
    if args.json:
        payload = {
            "run": str(model.run.path),
            "classes": model.classes,
            "detector": detector is not None,
            "acceptance": acceptance,
            "temperature": detector.temperature if detector is not None else None,
            "results": [r.to_dict() for r in results],
        }
        print(json.dumps(payload, ensure_ascii=False))
        return 0
    for r in results:
        if r.ok:
            extra = (
                f" (top guess {percent(r.confidence or 0.0)}%)" if r.unsure and r.known is not False else ""
            )
            print(f"{one_line(r.name)}: {one_line(r.verdict)}{extra}")
        elif r.skipped:
            print(f"{one_line(r.name)}: skipped ({one_line(r.error)})")
        else:
            print(f"{one_line(r.name)}: error: {one_line(r.error)}")
    return 0


# ----------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------


def runs_command(args: argparse.Namespace) -> int:
    """The runs table (newest first); with --json one JSON list."""
    found = runs.list_runs(Path(args.runs_dir) if args.runs_dir else settings.runs_dir())
    rows = runs.runs_table(found)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("No runs yet.")
    for row in rows:
        acc = "" if row["val accuracy"] is None else f"  val {row['val accuracy']:.1%}"
        note = f"  {row['note'].strip().splitlines()[0]}" if row["note"].strip() else ""
        print(one_line(f"{row['id']}  {row['state']}  {row['base']}{acc}{note}"))
    print(json.dumps({"runs": len(rows)}))
    return 0


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------


def cache_command(args: argparse.Namespace) -> int:
    """What each cache folder holds and its size; --clear empties the feature cache (exit 0)."""
    freed = features.clear_feature_cache() if args.clear else None
    report = storage.cache_report()
    summary: dict[str, Any] = {
        "cache_dir": str(settings.cache_dir()),
        "folders": {u.name: u.bytes for u in report},
        "total_bytes": sum(u.bytes for u in report),
        "feature_cache_limit_bytes": features.cache_limit(),
    }
    if freed is not None:
        summary["freed_bytes"] = freed
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"Cache: {settings.cache_dir()}")
    if not report:
        print("The cache is empty.")
    width = max([len(u.name) for u in report] or [0])
    for u in report:
        print(f"  {u.name:<{width}}  {size_text(u.bytes):>12}  {u.what}")
    print(
        f"Total {size_text(summary['total_bytes'])}; cached features may take at most {size_text(features.cache_limit())}."
    )
    if freed is not None:
        print(f"Cleared the cached image features: {size_text(freed)} freed.")
    print(json.dumps(summary))
    return 0


# ----------------------------------------------------------------------------------------------
# doctor
# ----------------------------------------------------------------------------------------------


def _format_doctor(report: dict[str, Any], limit: int) -> str:
    f = report["features"]
    lines = [
        f"Dataset: {report['root']}",
        f"{report['images']:,} images, {len(report['classes'])} classes; features: {f['base']} "
        f"({f['weights']} weights, {f['image_size']} px, {f['cache']} in {f['seconds']:.1f} s); "
        f"{report['seconds']:.1f} s in all",
        *report["notes"],
    ]

    def section(title: str, rows: list[dict[str, Any]], fmt) -> None:
        lines.append(f"\n{title}: {len(rows):,}")
        for row in rows[:limit]:
            done = f"  [{row['decision']}]" if row.get("decision") else ""
            lines.append("  " + fmt(row) + done)
        if len(rows) > limit:
            lines.append(f"  ... and {len(rows) - limit:,} more (use --json to list all)")

    section(
        "Suspect labels (most suspect first)",
        report["label_issues"],
        lambda r: f"{r['score']:.3f}  {r['path']}  given {r['given']}, looks like {r['suggested']}",
    )
    section(
        "Near-duplicates",
        report["near_duplicates"],
        lambda r: f"{r['similarity']:.3f}  {r['kind']:<18}  {r['a']} = {r['b']}",
    )
    section("Outliers (far from every class)", report["outliers"], lambda r: f"{r['score']:.3f}  {r['path']}")
    return "\n".join(lines)


def doctor_command(args: argparse.Namespace) -> int:
    """Findings as text (last line JSON counts) or one JSON object; --apply / --undo change the
    decisions kept for the folder (never its files). Exit 0 when it ran, 2 for bad input."""
    root = check_folder(args.data)
    if args.apply and args.undo:
        raise UserError("Use --apply or --undo, not both.")
    if args.apply or args.undo:
        raw = load_scan(root, curated=False)
        if args.undo:
            changed = curation.undo(raw.root)
            what = f"Undid the last batch of decisions ({changed} images)." if changed else "Nothing to undo."
        else:
            wanted = curation.read_file(args.apply)
            curation.check(raw.root, wanted, set(raw.usable["relpath"]), raw.classes)
            changed = curation.decide(raw.root, wanted)
            what = f"Recorded {changed} new decisions of {len(wanted)} in the file."
        summary = {
            "root": str(raw.root),
            "changed": changed,
            "decisions": len(curation.decisions(raw.root)),
            "curation_file": str(curation.location(raw.root)),
        }
        if not args.json:
            print(what)
            print(f"Kept in {summary['curation_file']} (your files are untouched).")
        print(json.dumps(summary))
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    bar = ProgressBar(quiet=args.json)

    def progress(done: int, total: int) -> None:
        bar({"phase": "features", "done": done, "total": total, "epoch": 0, "epochs": 0, "logs": {}})

    try:
        found = examine(
            root, base=args.base, weights=args.weights, image_size=args.image_size, progress=progress
        ).to_json()
    finally:
        bar.close()
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
        return 0
    print(_format_doctor(found, args.limit))
    print(
        json.dumps(
            {
                "label_issues": len(found["label_issues"]),
                "near_duplicates": len(found["near_duplicates"]),
                "outliers": len(found["outliers"]),
                "skipped_classes": found["skipped_classes"],
            }
        )
    )
    return 0


COMMANDS = {
    "scan": scan_command,
    "doctor": doctor_command,
    "train": train_command,
    "evaluate": evaluate_command,
    "predict": predict_command,
    "runs": runs_command,
    "cache": cache_command,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "engine", None):
        os.environ["STUDIO_ENGINE"] = args.engine  # read by every part (and by child processes)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
