"""Single-image prediction latency after the model is loaded (Keras and TFLite), and decode cost.

    python bench/predict_latency.py RUN_DIR          # a finished run
    python bench/predict_latency.py --synthetic      # MobileNetV2 160 with the bundled backbone

Prints median and 95th percentile times, then one JSON line. Target (issue 6): median under 50 ms
for the default model (MobileNetV2, 160 px) on this machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
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
    args = parser.parse_args()
    if not args.run and not args.synthetic:
        parser.error("give a RUN_DIR or --synthetic")

    from lib.data.images import decode, resize
    from lib.models.loader import load
    from lib.serve.export import tflite_bytes
    from lib.serve.predict import predict_images

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        run_dir = Path(args.run) if args.run else synthetic_run(tmp_path)
        start = time.perf_counter()
        predictor = load(run_dir)
        load_s = time.perf_counter() - start
        size = predictor.size
        print(
            f"run: {run_dir} (base {predictor.run.base or '?'}, {size} px, {len(predictor.classes)} classes)"
        )
        print(f"model load: {load_s:.2f} s")

        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (1, size, size, 3)).astype(np.float32)
        start = time.perf_counter()
        predictor.predict(image)
        first_s = time.perf_counter() - start
        keras_t = timings(lambda: predictor.predict(image), args.runs)
        print(f"first prediction (traces the graph): {first_s:.2f} s")
        print(f"keras predict_arrays, 1 image: median {keras_t['median_ms']} ms, p95 {keras_t['p95_ms']} ms")

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buf, format="JPEG")
        photo = buf.getvalue()
        e2e_t = timings(
            lambda: predict_images(predictor, [("p.jpg", photo)], keep_images=False),
            max(10, args.runs // 4),
        )
        print(
            f"predict_images, one 640x480 JPEG (decode + predict): median {e2e_t['median_ms']} ms, "
            f"p95 {e2e_t['p95_ms']} ms"
        )

        from ai_edge_litert.interpreter import Interpreter

        start = time.perf_counter()
        data, _ = tflite_bytes(predictor.keras_model, size, workdir=tmp_path)
        convert_s = time.perf_counter() - start
        interpreter = Interpreter(model_content=data)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]["index"]

        def invoke() -> None:
            interpreter.set_tensor(inp, image)
            interpreter.invoke()

        tflite_t = timings(invoke, args.runs)
        print(
            f"tflite float32 convert: {convert_s:.1f} s; LiteRT invoke, 1 image: "
            f"median {tflite_t['median_ms']} ms, p95 {tflite_t['p95_ms']} ms"
        )

        jpeg = large_jpeg(tmp_path / "large.jpg")
        draft_t = timings(lambda: decode(jpeg, size=size), 5, warmup=1)
        plain_t = timings(lambda: resize(decode(jpeg), size), 5, warmup=1)
        print(
            f"decode 4000x3000 JPEG to {size}x{size}: with draft median {draft_t['median_ms']} ms, "
            f"without draft {plain_t['median_ms']} ms"
        )

        target = 50.0
        verdict = "meets" if keras_t["median_ms"] < target else "misses"
        print(f"target: median under {target:.0f} ms -> {verdict} it")
        print(
            json.dumps(
                {
                    "run": str(run_dir),
                    "image_size": size,
                    "model_load_s": round(load_s, 2),
                    "keras_1_image": keras_t,
                    "predict_images_1_jpeg": e2e_t,
                    "tflite_float_1_image": tflite_t,
                    "decode_large_jpeg_draft": draft_t,
                    "decode_large_jpeg_no_draft": plain_t,
                    "target_ms": target,
                    "meets_target": keras_t["median_ms"] < target,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
