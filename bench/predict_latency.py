"""Prediction latency, engine keras against engine litert in the same run, and decode cost.

    python bench/predict_latency.py RUN_DIR          # a finished run
    python bench/predict_latency.py --synthetic      # MobileNetV2 160 with the bundled backbone

For each engine: loading the run, one S x S image after loading, one 640x480 JPEG through
predict_images (decode included), and `python -m lib predict --run RUN photo.jpg` as a fresh
process (start-up included; the two engines interleaved). Prints medians and 95th percentiles,
the ratios, then one JSON line. Targets: keras one image under 50 ms (issue 6); litert one image
under 10 ms and the whole predict process under 2 s (issue 12).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def timings(fn, runs: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": round(float(np.median(times)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        "runs": runs,
    }


def synthetic_run(folder: Path, size: int = 160) -> Path:
    """The default recipe's model shape (MobileNetV2 160, bundled weights) with an untrained head."""
    import keras

    from lib.models.registry import get_base

    inp = keras.Input((None, None, 3), dtype="float32", name="image")
    h = keras.layers.Resizing(size, size, antialias=True)(inp)
    h = keras.layers.Rescaling(1 / 127.5, offset=-1)(h)
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=str(get_base("MobileNetV2").bundled)
    )
    base.name = "base"
    h = base(h, training=False)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.2)(h)
    out = keras.layers.Dense(3, activation="softmax", name="predictions")(h)
    run = folder / "synthetic-MobileNetV2"
    run.mkdir(parents=True)
    keras.Model(inp, out).save(run / "model.keras")
    classes = ["angular_leaf_spot", "bean_rust", "healthy"]
    config = {"classes": classes, "image_size": size, "base": "MobileNetV2", "data_dir": None}
    (run / "config.json").write_text(json.dumps(config))
    (run / "status.json").write_text(json.dumps({"state": "finished"}))
    return run


def large_jpeg(path: Path, width: int = 4000, height: int = 3000) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 50, width // 50, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    im.save(path, format="JPEG", quality=90)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="run folder")
    parser.add_argument("--synthetic", action="store_true", help="build a MobileNetV2 160 run to time")
    parser.add_argument("--runs", type=int, default=100, help="timed predictions per measure")
    parser.add_argument("--processes", type=int, default=5, help="fresh predict processes per engine")
    args = parser.parse_args()
    if not args.run and not args.synthetic:
        parser.error("give a RUN_DIR or --synthetic")

    from lib.data.images import decode, resize
    from lib.models.loader import load
    from lib.serve.predict import SEEN, predict_images

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        run_dir = Path(args.run) if args.run else synthetic_run(tmp_path)
        out: dict = {"run": str(run_dir)}
        models = {}
        for name in ("keras", "litert"):
            start = time.perf_counter()
            models[name] = load(run_dir, name)
            out[f"{name}_load_s"] = round(time.perf_counter() - start, 2)
        size = models["keras"].size
        print(
            f"run: {run_dir} (base {models['keras'].run.base or '?'}, {size} px, {len(models['keras'].classes)} classes)"
        )
        print(
            f"model load: keras {out['keras_load_s']:.2f} s, litert {out['litert_load_s']:.2f} s "
            f"(engine used: {models['litert'].engine}{'; ' + models['litert'].note if models['litert'].note else ''})"
        )

        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (1, size, size, 3)).astype(np.float32)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buf, format="JPEG")
        photo = buf.getvalue()
        photo_path = tmp_path / "photo.jpg"
        photo_path.write_bytes(photo)
        for name, model in models.items():
            start = time.perf_counter()
            model.predict(image)
            out[f"{name}_first_s"] = round(time.perf_counter() - start, 3)
            out[f"{name}_1_image"] = timings(lambda m=model: m.predict(image), args.runs)
            out[f"{name}_predict_images_1_jpeg"] = timings(
                lambda m=model: (SEEN.clear(), predict_images(m, [("p.jpg", photo)], keep_images=False)),
                max(10, args.runs // 4),
            )
            t, e = out[f"{name}_1_image"], out[f"{name}_predict_images_1_jpeg"]
            print(
                f"{name}: first prediction {out[f'{name}_first_s']:.2f} s; 1 image median {t['median_ms']} ms "
                f"(p95 {t['p95_ms']}); one 640x480 JPEG with decoding median {e['median_ms']} ms (p95 {e['p95_ms']})"
            )

        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
        whole: dict[str, list[float]] = {"keras": [], "litert": []}
        for i in range(args.processes):
            for name in ("keras", "litert") if i % 2 == 0 else ("litert", "keras"):
                start = time.perf_counter()
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "lib",
                        "predict",
                        "--run",
                        str(run_dir),
                        str(photo_path),
                        "--engine",
                        name,
                    ],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                whole[name].append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise SystemExit(f"predict failed: {done.stderr[-2000:]}")
        for name, values in whole.items():
            out[f"{name}_predict_process_s"] = round(statistics.median(values), 2)
        ratio = out["keras_predict_process_s"] / out["litert_predict_process_s"]
        print(
            f"python -m lib predict, one photo, whole process (median of {args.processes}): keras "
            f"{out['keras_predict_process_s']:.2f} s, litert {out['litert_predict_process_s']:.2f} s ({ratio:.1f}x)"
        )
        per_image = out["keras_1_image"]["median_ms"] / out["litert_1_image"]["median_ms"]
        print(f"one image after loading: litert {per_image:.1f}x faster than keras")

        jpeg = large_jpeg(tmp_path / "large.jpg")
        draft_t = timings(lambda: decode(jpeg, size=size), 5, warmup=1)
        plain_t = timings(lambda: resize(decode(jpeg), size), 5, warmup=1)
        print(
            f"decode 4000x3000 JPEG to {size}x{size}: with draft median {draft_t['median_ms']} ms, "
            f"without draft {plain_t['median_ms']} ms"
        )

        out["decode_large_jpeg_draft"] = draft_t
        out["decode_large_jpeg_no_draft"] = plain_t
        checks = {
            "keras 1 image < 50 ms": out["keras_1_image"]["median_ms"] < 50.0,
            "litert 1 image < 10 ms": out["litert_1_image"]["median_ms"] < 10.0,
            "litert predict process <= 2 s": out["litert_predict_process_s"] <= 2.0,
        }
        for name, ok in checks.items():
            print(f"  [{'ok' if ok else 'MISSED'}] {name}")
        out.update(
            image_size=size, checks=checks, process_ratio=round(ratio, 2), image_ratio=round(per_image, 2)
        )
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
