"""Training speed and accuracy: the classic notebook recipe against `python -m lib train`.

    python bench/train_speed.py DATA_DIR WEIGHTS [--seeds 3] [--no-recipe] [--before CHECKOUT]

WEIGHTS is "bundled", "imagenet" or a weights file for MobileNetV2 at 160 px. In one invocation,
for each seed: the classic recipe (MobileNetV2 160, frozen, augmentation layers in the model so
the base runs every epoch, GAP + Dense, Adam 1e-4, batch 32, 10 epochs) as a fresh process; then
the CLI with default settings as fresh processes with a cold feature cache, engine litert and
engine keras in turn (the order alternates between seeds; the converted base is shared, so only
the very first LiteRT run converts it: that run is reported apart); then the CLI again with the
cache warm and another learning rate (a second run on the same data). All on the same splits
(lib.data.scan) and weights. With --before CHECKOUT, that checkout's CLI too (a cold cache, never
last, e.g. the code before the engine: "today's" feature pass). Prints test-split accuracy (mean over seeds), whole-process wall
times (start-up included), the feature pass's images/s per engine, the speed ratios (medians)
and peak memory summed over the processes involved. Not a test: it takes minutes.
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {
    "cold": 6.0,
    "warm": 10.0,
    "memory_gb": 3.0,
    "accuracy_points": 1.0,
    "engine_whole_process": 2.0,  # litert vs keras, a new dataset, whole CLI process
    "engine_features": 3.0,  # feature pass images/s, decode included
    "warm_seconds": 5.0,
}


# ----------------------------------------------------------------------------------------------
# The classic recipe (runs in its own process: `--recipe SPLITS.json WEIGHTS --seed N`)
# ----------------------------------------------------------------------------------------------


def recipe(splits_file: str, weights: str, seed: int, epochs: int = 10) -> dict:
    """The Keras transfer-learning tutorial recipe, multi-class, on the given splits."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    splits = json.loads(Path(splits_file).read_text())
    classes = splits["classes"]
    size, batch = 160, 32

    def dataset(split: str, shuffle: bool):
        paths = [p for p, _ in splits[split]]
        labels = [label for _, label in splits[split]]

        def load(path, label):  # what image_dataset_from_directory does: decode, bilinear resize
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            image = tf.image.resize(image, (size, size))
            return image, label

        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed)
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)

    if weights == "bundled":
        from lib.models.registry import get_base

        weights = str(get_base("MobileNetV2").bundled)
    if weights not in ("imagenet",) and not Path(weights).is_file():
        raise SystemExit(f"recipe: no weights file {weights}")
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=weights)
    base.trainable = False
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)])
    inputs = keras.Input((size, size, 3))
    x = augmentation(inputs)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1)(x)  # mobilenet_v2.preprocess_input
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    fit_start = time.perf_counter()
    history = model.fit(
        dataset("train", True), validation_data=dataset("validation", False), epochs=epochs, verbose=0
    )
    fit_seconds = time.perf_counter() - fit_start
    _, test_accuracy = model.evaluate(dataset("test", False), verbose=0)
    return {
        "test_accuracy": float(test_accuracy),
        "val_accuracy": float(history.history["val_accuracy"][-1]),
        "final_loss": float(history.history["loss"][-1]),
        "fit_seconds": round(fit_seconds, 2),
        "seconds_in_process": round(time.perf_counter() - started, 2),
    }


# ----------------------------------------------------------------------------------------------
# Measuring processes
# ----------------------------------------------------------------------------------------------


def run_measured(cmd: list[str], env: dict, cwd: Path = ROOT) -> tuple[float, float, str, str]:
    """Run a command; returns (wall seconds, peak RSS in GB summed over this process and its
    children at each sample, stdout, stderr)."""
    import psutil

    me = psutil.Process()
    peak = 0.0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    done = threading.Event()
    out: dict[str, str] = {}

    def drain() -> None:
        out["stdout"], out["stderr"] = proc.communicate()
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    while not done.wait(0.05):
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total / 1e9)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out.get('stderr', '')[-3000:]}"
        )
    return seconds, peak, out["stdout"], out["stderr"]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", help="dataset folder")
    parser.add_argument("weights", nargs="?", help="bundled, imagenet or a MobileNetV2-160 weights file")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-recipe", action="store_true", help="skip the classic recipe (engines only)")
    parser.add_argument(
        "--before",
        type=Path,
        metavar="CHECKOUT",
        help="also time that checkout's `python -m lib train` (e.g. the code before the engine: today's feature pass)",
    )
    parser.add_argument("--recipe", metavar="SPLITS_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--recipe-weights", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.recipe:
        print(json.dumps(recipe(args.recipe, args.recipe_weights, args.seed)))
        return 0
    if not args.data or not args.weights:
        parser.error("DATA_DIR and WEIGHTS are required")

    work = Path(tempfile.mkdtemp(prefix="train_speed-"))
    env = {
        **os.environ,
        "STUDIO_CACHE_DIR": str(work / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(ROOT),
    }
    os.environ["STUDIO_CACHE_DIR"] = env["STUDIO_CACHE_DIR"]
    weights = (
        args.weights if args.weights in ("bundled", "imagenet", "none") else str(Path(args.weights).resolve())
    )

    # The scan is the Dataset page's job and is cached; warm it so every timed run reads the same splits.
    from lib.data.scan import load_scan

    t = time.perf_counter()
    scan = load_scan(args.data)
    scan_seconds = time.perf_counter() - t
    usable = scan.usable
    index = {c: i for i, c in enumerate(scan.classes)}
    splits = {"classes": scan.classes}
    for split in ("train", "validation", "test"):
        rows = usable[usable["split"] == split]
        splits[split] = [[str(p), index[c]] for p, c in zip(rows["path"], rows["class"], strict=True)]
    splits_file = work / "splits.json"
    splits_file.write_text(json.dumps(splits))
    counts = {s: len(splits[s]) for s in ("train", "validation", "test")}
    cpu = os.cpu_count()
    print(
        f"data: {args.data} {counts}; weights: {args.weights}; {cpu} CPUs; scan {scan_seconds:.1f} s (cached for all runs)"
    )

    results: dict[str, list[dict]] = {
        "recipe": [],
        "litert": [],
        "keras": [],
        "warm": [],
        "first": [],
        "before": [],
    }
    cli = [sys.executable, "-m", "lib", "train", "--data", str(args.data), "--weights", weights, "--quiet"]
    total = sum(counts.values())

    def cli_run(kind: str, seed: int, *extra: str, cwd: Path = ROOT) -> dict:
        runs_dir = work / f"runs-{kind}"
        s, peak, out, _ = run_measured(
            [*cli, "--seed", str(seed), "--runs-dir", str(runs_dir), *extra], env, cwd=cwd
        )
        r = {"seconds": s, "peak_gb": peak, **last_json(out)}
        fs = float(r.get("feature_seconds") or 0.0)
        r["feature_images_per_s"] = (
            round(total / fs, 1) if r.get("feature_cache") == "computed" and fs else None
        )
        rate = f", {r['feature_images_per_s']:.0f} images/s" if r["feature_images_per_s"] else ""
        print(
            f"seed {seed} CLI {kind}: test acc {r['test_accuracy']:.4f}, {s:.1f} s (features "
            f"{fs:.1f} s{rate}, cache {r['feature_cache']}, {r['epochs_run']} epochs), peak {peak:.2f} GB",
            flush=True,
        )
        return r

    for seed in range(1, args.seeds + 1):
        if not args.no_recipe:
            s, peak, out, _ = run_measured(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--recipe",
                    str(splits_file),
                    "--recipe-weights",
                    weights,
                    "--seed",
                    str(seed),
                ],
                env,
            )
            r = last_json(out)
            results["recipe"].append({"seconds": s, "peak_gb": peak, **r})
            print(
                f"seed {seed} recipe: test acc {r['test_accuracy']:.4f} (val {r['val_accuracy']:.4f}, final loss "
                f"{r['final_loss']:.3f}), {s:.1f} s (fit {r['fit_seconds']:.1f} s), peak {peak:.2f} GB",
                flush=True,
            )
        order = ("litert", "keras") if seed % 2 else ("keras", "litert")
        if args.before:  # never last: the warm run needs this code's cache entry
            order = ("before", *order) if seed % 2 else (order[0], "before", order[1])
        for kind in order:
            shutil.rmtree(work / "cache" / "features", ignore_errors=True)  # a new dataset to the cache
            if kind == "before":
                results["before"].append(cli_run("before", seed, cwd=args.before))
                continue
            first = kind == "litert" and not (work / "cache" / "engines").is_dir()
            r = cli_run(f"{kind} (converts the base)" if first else kind, seed, "--engine", kind)
            results["first" if first else kind].append(r)
        results["warm"].append(cli_run("warm", seed, "--engine", "litert", "--lr", "3e-3"))
    if not results["litert"] and results["first"]:
        results["litert"] = results["first"]  # one seed only: the run that converted is all there is

    def mean(kind: str, key: str) -> float:
        return statistics.mean(float(r[key]) for r in results[kind])

    def median(kind: str, key: str = "seconds") -> float:
        values = [float(r[key]) for r in results[kind] if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    summary = {
        "images": counts,
        "seeds": args.seeds,
        "cpus": cpu,
        "litert_test_accuracy": round(mean("litert", "test_accuracy"), 4),
        "keras_test_accuracy": round(mean("keras", "test_accuracy"), 4),
        "warm_test_accuracy": round(mean("warm", "test_accuracy"), 4),
        "litert_seconds_median": round(median("litert"), 1),
        "keras_seconds_median": round(median("keras"), 1),
        "warm_seconds_median": round(median("warm"), 1),
        "first_litert_seconds": round(results["first"][0]["seconds"], 1) if results["first"] else None,
        "litert_feature_images_per_s": round(median("litert", "feature_images_per_s"), 1),
        "keras_feature_images_per_s": round(median("keras", "feature_images_per_s"), 1),
        "peak_memory_gb_by_kind": {
            kind: round(max(r["peak_gb"] for r in rows), 2) for kind, rows in results.items() if rows
        },
    }
    summary["engine_speedup"] = round(summary["keras_seconds_median"] / summary["litert_seconds_median"], 2)
    summary["feature_speedup"] = round(
        summary["litert_feature_images_per_s"] / summary["keras_feature_images_per_s"], 2
    )
    checks = {
        f"litert >= {TARGETS['engine_whole_process']}x keras, whole process": summary["engine_speedup"]
        >= TARGETS["engine_whole_process"],
        f"feature pass >= {TARGETS['engine_features']}x images/s": summary["feature_speedup"]
        >= TARGETS["engine_features"],
        f"second run <= {TARGETS['warm_seconds']:.0f} s": summary["warm_seconds_median"]
        <= TARGETS["warm_seconds"],
        "litert accuracy = keras accuracy (within 0.5 point)": abs(
            summary["litert_test_accuracy"] - summary["keras_test_accuracy"]
        )
        <= 0.005,
        "litert peak memory <= keras peak memory (+5%)": summary["peak_memory_gb_by_kind"]["litert"]
        <= 1.05 * summary["peak_memory_gb_by_kind"]["keras"],
    }
    print()
    print(
        f"engines, whole CLI process on a new dataset (medians of {args.seeds}): litert "
        f"{summary['litert_seconds_median']:.1f} s, keras {summary['keras_seconds_median']:.1f} s "
        f"({summary['engine_speedup']:.2f}x); feature pass litert {summary['litert_feature_images_per_s']:.0f} "
        f"images/s, keras {summary['keras_feature_images_per_s']:.0f} images/s ({summary['feature_speedup']:.2f}x); "
        f"second run {summary['warm_seconds_median']:.1f} s"
    )
    if results["before"]:
        summary.update(
            before_seconds_median=round(median("before"), 1),
            before_feature_images_per_s=round(median("before", "feature_images_per_s"), 1),
            before_test_accuracy=round(mean("before", "test_accuracy"), 4),
        )
        summary["feature_speedup_over_before"] = round(
            summary["litert_feature_images_per_s"] / summary["before_feature_images_per_s"], 2
        )
        summary["speedup_over_before"] = round(
            summary["before_seconds_median"] / summary["litert_seconds_median"], 2
        )
        checks[f"feature pass >= {TARGETS['engine_features']}x the code before the engine (images/s)"] = (
            summary["feature_speedup_over_before"] >= TARGETS["engine_features"]
        )
        print(
            f"the code before the engine ({args.before}), whole process {summary['before_seconds_median']:.1f} s "
            f"(litert {summary['speedup_over_before']:.2f}x faster), feature pass "
            f"{summary['before_feature_images_per_s']:.0f} images/s (litert {summary['feature_speedup_over_before']:.2f}x), "
            f"test acc {summary['before_test_accuracy']:.4f}"
        )
    if summary["first_litert_seconds"]:
        print(
            f"the first LiteRT run (converts the base once for every later run): {summary['first_litert_seconds']:.1f} s"
        )
    if results["recipe"]:
        recipe_s = median("recipe")
        summary.update(
            recipe_test_accuracy=round(mean("recipe", "test_accuracy"), 4),
            recipe_seconds_median=round(recipe_s, 1),
            cold_speedup_median=round(recipe_s / summary["litert_seconds_median"], 2),
            warm_speedup_median=round(recipe_s / summary["warm_seconds_median"], 2),
            keras_engine_speedup_median=round(recipe_s / summary["keras_seconds_median"], 2),
        )
        diff_points = 100 * (summary["litert_test_accuracy"] - summary["recipe_test_accuracy"])
        checks[f"cold >= {TARGETS['cold']}x the recipe"] = summary["cold_speedup_median"] >= TARGETS["cold"]
        checks[f"warm >= {TARGETS['warm']}x the recipe"] = summary["warm_speedup_median"] >= TARGETS["warm"]
        checks[f"accuracy within {TARGETS['accuracy_points']} point of the recipe or better"] = (
            diff_points >= -TARGETS["accuracy_points"]
        )
        print(
            f"test accuracy: recipe {summary['recipe_test_accuracy']:.4f}, CLI litert "
            f"{summary['litert_test_accuracy']:.4f} ({diff_points:+.1f} points), keras {summary['keras_test_accuracy']:.4f}"
        )
        print(
            f"time per run (medians): recipe {recipe_s:.1f} s, CLI litert {summary['litert_seconds_median']:.1f} s "
            f"({summary['cold_speedup_median']:.1f}x), CLI keras {summary['keras_seconds_median']:.1f} s "
            f"({summary['keras_engine_speedup_median']:.1f}x), warm {summary['warm_seconds_median']:.1f} s "
            f"({summary['warm_speedup_median']:.1f}x)"
        )
    summary["peak_memory_gb"] = max(summary["peak_memory_gb_by_kind"].values())
    checks[f"peak memory < {TARGETS['memory_gb']} GB"] = summary["peak_memory_gb"] < TARGETS["memory_gb"]
    print(f"peak memory (summed over processes): {summary['peak_memory_gb_by_kind']}")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    summary["checks"] = checks
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
