"""Rebuild the shipped demo model: a small run on the bundled bean-leaf sample, plus its model card.

Trains MobileNetV2 (160 px) with the bundled offline backbone (no download) and a fixed seed into
demo/<run-id>/, evaluates it on the sample's test split and writes demo/MODEL_CARD.md. Paths in the
run folder are relative to the repository, so the folder works on any machine. Older demo runs are
replaced only after the new one has trained and loaded safely.

The run's LiteRT model (model.tflite, checked against Keras) ships in the folder too, so a fresh
install answers its first visitor without a conversion.

    python scripts/make_demo_model.py              # about a minute on 2 CPU cores
    python scripts/make_demo_model.py --lite-only  # only add the LiteRT model to the demo that is there
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA_REL = "data/sample"
NAME = "Demo: bean leaves (MobileNetV2)"
# Files the app makes on demand (caches, job bookkeeping) that don't belong in the shipped folder.
STRAY = ("predictions", "exports", "worker.log", "cancel.request")


def _relative_paths(run_dir: Path) -> None:
    """Store the dataset as data/sample (relative to the repository) in config.json and log.txt."""
    from lib import files, runs

    config = runs.read_run(run_dir).config
    config["data_dir"] = DATA_REL
    config["name"] = NAME
    if isinstance(config.get("dataset"), dict):
        config["dataset"]["root"] = DATA_REL
    files.write_json(run_dir / "config.json", config)
    log = run_dir / "log.txt"
    if log.is_file():
        files.write_atomic(log, log.read_text(encoding="utf-8").replace(str(ROOT) + os.sep, ""))
    leftover = [p.name for p in run_dir.iterdir() if p.is_file() and str(ROOT) in _text(p)]
    if leftover:
        raise SystemExit(f"absolute paths left in {leftover}")


def _text(path: Path) -> str:
    if path.suffix not in (".json", ".txt", ".csv", ".md"):
        return ""
    return path.read_text(encoding="utf-8", errors="replace")


def _clean(run_dir: Path) -> None:
    for name in STRAY:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for hidden in run_dir.glob(".*"):
        if hidden.is_file():
            hidden.unlink()


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _skimage_items() -> list[tuple[str, bytes]]:
    """scikit-image's sample pictures (a dev requirement) as PNG bytes; none when it isn't installed."""
    import io

    try:
        import skimage.data
    except ImportError:
        return []
    from PIL import Image

    out = []
    for path in sorted(Path(skimage.data.__file__).parent.iterdir()):
        if path.suffix.lower() in (".png", ".jpg"):
            buf = io.BytesIO()
            Image.open(path).convert("RGB").save(buf, format="PNG")
            out.append((f"skimage-{path.name}", buf.getvalue()))
    return out


def unknown_section(other: dict, calibration: dict | None, unknown_metrics: dict) -> str:
    """The model card's measured numbers for photos of other things and for its percentages."""
    level = other["acceptance"]
    lines = [
        "## Photos of other things, and how honest its percentages are",
        "",
        'It answers **"This doesn\'t look like any of the 3 kinds this model knows"** for photos unlike the',
        f"leaves it learnt from (an unknown-photo detector fitted on its training features; acceptance level {level:.0%}).",
        f"Measured when this model was built: of {other['other_photos']} pictures of other things "
        f"({other['sources']}), **{other['caught']} were caught** ({_pct(other['caught_share'] or 0)}); "
        f"of its {other['real_images']} test leaves, {other['wrongly_refused']} "
        f"({_pct(other['wrongly_refused_share'] or 0)}) were wrongly refused. "
        f"Separation (AUROC) {other['auroc']:.3f}.",
        "",
        "Photos of *other leaves or plants* are much harder: on the full beans set, with one disease held out, "
        "the detector separates the held-out kind with an AUROC of about 0.74 and catches only a few percent "
        "of it (see docs/unknown.md). Expect a maize or a bean leaf of another disease to get a name.",
        "",
    ]
    if calibration:
        note = unknown_metrics.get("temperature_note")
        if str(unknown_metrics.get("temperature_source", "")).startswith("out-of-fold"):
            note = (
                f"fitted on {unknown_metrics.get('temperature_images')} held-out predictions: five copies of "
                "the head, each trained without one fifth of the training and validation photos and judging "
                "that fifth, plus the validation photos"
            )
        lines += [
            f"Percentages: temperature {calibration['temperature']:.2f}"
            + (f" ({note})" if note else "")
            + f"; on the {calibration['images']} test photos the calibration error (the average gap between "
            f"how sure it says it is and how often it is right) is {_pct(calibration['ece_before'])} before and "
            f"{_pct(calibration['ece_after'])} after. With so few photos about {_pct(0.4 / calibration['images'] ** 0.5)} "
            "of that is chance.",
            "",
        ]
    return "\n".join(lines)


def model_card(run_dir: Path, metrics: dict, evaluation: dict, config: dict, unknown_text: str = "") -> str:
    from lib.text import readable_label

    classes = evaluation["classes"]
    counts = metrics.get("counts", {})
    per_class = evaluation["per_class"]
    rows = "\n".join(
        f"| {readable_label(c)} (`{c}`) | {_pct(per_class[c]['recall'])} | {_pct(per_class[c]['precision'])} "
        f"| {per_class[c]['support']} |"
        for c in classes
    )
    missed = evaluation.get("most_missed") or []
    missed_line = (
        ("Most frequent mistakes" if len(missed) > 1 else "Most frequent mistake")
        + " on the test photos: "
        + ", ".join(
            f"{readable_label(m['actual'])} taken for {readable_label(m['predicted'])} ({m['count']})"
            for m in missed[:2]
        )
        + "."
        if missed
        else f"It made no mistakes on the {evaluation['n_images']} test photos: expect some in real use."
    )
    return f"""# Model card: demo bean-leaf classifier

The read-only model every visitor of a hosted demo can try on the **4 · Predict** page.
Rebuilt by `python scripts/make_demo_model.py` (run folder `demo/{run_dir.name}/`).

## What it knows

Three kinds of bean (*Phaseolus vulgaris*) leaf, from a photo:

- **{readable_label(classes[0])}** (`{classes[0]}`)
- **{readable_label(classes[1])}** (`{classes[1]}`)
- **{readable_label(classes[2])}** (`{classes[2]}`)

## How it was made

- Base: {config["base"]} pretrained on ImageNet (the bundled offline backbone,
  `weights/mobilenet_v2_1.0_160_no_top.weights.h5`), frozen; a small softmax head trained on top.
- Input: any photo, resized inside the model to {config["image_size"]}×{config["image_size"]} pixels.
- Data: the bundled sample `data/sample/` ({counts.get("train", "?")} training,
  {counts.get("validation", "?")} validation, {counts.get("test", "?")} test photos), seed {config["seed"]},
  {metrics.get("epochs_run", "?")} epochs (early stopping on validation loss), {metrics.get("train_seconds", 0):.0f} s on 2 CPU cores.

## How well it does

On the sample's **test** split ({evaluation["n_images"]} photos it never saw during training):
**accuracy {_pct(evaluation["accuracy"])}** (always guessing one class would score
{_pct(evaluation["majority_baseline"]["accuracy"])}). Validation accuracy {_pct(metrics["val_accuracy"])}.

| class | recall (found) | precision (right when it says so) | test photos |
| --- | --- | --- | --- |
{rows}

{missed_line} With about {evaluation["n_images"] // len(classes)} test photos per class, each photo moves recall by
{100 * len(classes) / max(evaluation["n_images"], 1):.0f} points or so: treat these numbers as rough.

{unknown_text}
## Data source and license

The sample is a downsized subset of the **iBean** dataset: field photos taken in Uganda by the
Makerere AI Lab, labelled by experts of the National Crops Resources Research Institute (NaCRRI),
<https://github.com/AI-Lab-Makerere/ibean/>, MIT License (see `data/sample/LICENSE` and
`data/sample/PROVENANCE.txt`). The MobileNetV2 weights come from Keras Applications (see
`weights/PROVENANCE.txt` and `THIRD_PARTY_NOTICES.md`).

## Limits

- It only knows bean leaves. Photos of clearly different things (a cat, a screenshot, a blank
  wall) get "This doesn't look like any of these"; other leaves and plants often still get one of
  its three names, and "Not sure" when its confidence is low.
- It learnt from {sum(int(v) for v in counts.values()) if counts else "about 225"} photos of leaves in the field in Uganda, one season and camera
  style; other light, backgrounds, varieties or diseases (including the other bean diseases) are
  outside what it has seen.
- Photos are shrunk to {config["image_size"]} px: small spots can vanish.
- It is a teaching demo, **not a diagnostic tool**: don't decide treatment or sales on its answer;
  ask an agronomist.
"""


def ship_lite(run_dir: Path) -> Path:
    """Put the run's LiteRT model (and its record) in the run folder, so a fresh install answers its
    first visitor without converting anything (a conversion costs 10-20 s and loads TensorFlow)."""
    from lib import runs
    from lib.models import loader

    converted = loader.run_lite(runs.open_run(run_dir))
    if converted.lite is None or converted.path is None:
        raise SystemExit(f"the demo model did not convert to LiteRT: {converted.reason}")
    for name in (converted.path.name, converted.path.name + ".json"):
        source = converted.path.with_name(name)
        if source.resolve() != (run_dir / name).resolve():
            shutil.copyfile(source, run_dir / name)
    return run_dir / converted.path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "demo"), help="demo folder (default: demo/)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument(
        "--lite-only", action="store_true", help="only add the LiteRT model to the demo that is there"
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cache = tempfile.mkdtemp(prefix="demo-cache-")
    os.environ["STUDIO_CACHE_DIR"] = cache  # a fresh feature cache: the rebuild doesn't depend on old files

    from lib import files, runs, settings

    if args.lite_only:
        try:
            for run_dir in sorted(p for p in out.iterdir() if (p / "config.json").exists()):
                print(f"LiteRT model kept in {ship_lite(run_dir)}")
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        return 0
    from lib.evaluate.predictions import evaluate
    from lib.models import safety
    from lib.train.config import TrainConfig
    from lib.train.recipe import train

    try:
        previous = (
            [p for p in out.iterdir() if p.is_dir() and (p / "config.json").exists()] if out.is_dir() else []
        )
        config = TrainConfig(
            data_dir=str(settings.sample_dir()), weights="bundled", seed=args.seed, epochs=args.epochs
        )
        run_dir = runs.create_run(out, config)
        print(f"Training into {run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir} …")
        runs.write_status(run_dir, "running", pid=os.getpid(), progress={"phase": "starting"})
        metrics: dict = {}
        with runs.recording_status(run_dir) as outcome:
            metrics = train(config, run_dir)
        if outcome.state != "finished":
            raise SystemExit(f"training {outcome.state}: {outcome.reason}")
        _relative_paths(run_dir)
        safety.safe_load_model(run_dir / "model.keras")  # the shipped file passes the upload checks

        result = evaluate(run_dir, settings.sample_dir(), "test")
        ev = result.metrics
        from lib.evaluate.other_photos import check_other_photos, example_items

        extra = _skimage_items()
        check = check_other_photos(
            runs.open_run(run_dir), example_items() + extra, split="test", data_dir=settings.sample_dir()
        )
        other = check.summary()
        other["sources"] = "noise, flat colours, rendered screenshots" + (
            f" and {len(extra)} sample pictures of scikit-image" if extra else ""
        )
        unknown_text = unknown_section(other, ev.get("calibration"), metrics.get("unknown", {}))
        card = model_card(run_dir, metrics, ev, runs.read_run(run_dir).config, unknown_text)
        files.write_atomic(out / "MODEL_CARD.md", card)
        files.write_atomic(run_dir / "notes.md", "The shipped demo model: see demo/MODEL_CARD.md.\n")
        summary = {
            "run": run_dir.name,
            "val_accuracy": metrics["val_accuracy"],
            "test_accuracy": ev["accuracy"],
            "recall": {c: round(v["recall"], 4) for c, v in ev["per_class"].items()},
            "other_photos": other,
            "calibration": {
                k: v for k, v in (ev.get("calibration") or {}).items() if not k.startswith("bins")
            },
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _clean(run_dir)
        ship_lite(run_dir)
        for old in previous:
            shutil.rmtree(old)
        print(json.dumps(summary, indent=2))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
