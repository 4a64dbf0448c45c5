"""Export a finished run as portable files (.keras, SavedModel, TFLite float32 and int8), checked first.

Each export is a zip with the model, labels.txt and a README of the expected input. Before a file is
offered, its predictions on validation images are compared with the app's: float formats must agree
on every image (else the export fails); int8's agreement is reported. TFLite files hold only the
fixed-size part of the model (everything after the Resizing layer, whose antialiased kernel lowers
to ScaleAndTranslate, which TFLite lacks), with a 1xSxSx3 input and built-in ops only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lib import runs
from lib.errors import UserError

EXPORT_VERSION = 1  # bump when the files inside an export change, so cached exports are rebuilt
FORMATS: dict[str, str] = {
    "keras": "Keras model (.keras)",
    "savedmodel": "TensorFlow SavedModel",
    "tflite": "TFLite float32",
    "tflite_int8": "TFLite int8 (quantized)",
}
FLOAT_FORMATS = ("keras", "savedmodel", "tflite")
PARITY_IMAGES = 30
REPRESENTATIVE_IMAGES = 100
INT8_WARN_BELOW = 0.95


class ExportError(UserError):
    """An export that could not be made or failed its check; the message says why in plain words."""


@dataclass
class ExportResult:
    """A checked export zip: where it is, its format, size and the parity check's numbers."""

    path: Path
    format: str
    size_bytes: int
    parity: dict[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return self.path.name


# ----------------------------------------------------------------------------------------------
# Images for the checks
# ----------------------------------------------------------------------------------------------


def _spread(paths: list[tuple[str, str]], n: int) -> list[str]:
    """Up to n paths taken round-robin over classes (deterministic), so every class is represented."""
    by_class: dict[str, list[str]] = {}
    for path, cls in sorted(paths):
        by_class.setdefault(cls, []).append(path)
    queues = [by_class[c] for c in sorted(by_class)]
    out: list[str] = []
    i = 0
    while len(out) < n and any(i < len(q) for q in queues):
        out.extend(q[i] for q in queues if i < len(q))
        i += 1
    return out[:n]


def _dataset_paths(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """{split: [(path, class)]} of the usable images, via lib.datasets.scan (the app's own splits)."""
    from lib import datasets, settings

    scan = datasets.scan(data_dir, max_pixels=settings.max_pixels())
    df = scan.manifest
    df = df[df["usable"].astype(bool)]
    out: dict[str, list[tuple[str, str]]] = {}
    for path, split, cls in zip(df["path"], df["split"], df["class"], strict=True):
        full = str(path) if os.path.isabs(str(path)) else str(Path(scan.root) / str(path))
        out.setdefault(str(split), []).append((full, str(cls)))
    return out


def sample_images(
    data_dir: str | Path | None, splits: Sequence[str], n: int, size: int
) -> tuple[np.ndarray, str]:
    """Up to n decoded SxS images from the first split that has any: (N x S x S x 3 uint8, split name).

    Raises ExportError when the dataset is not on this machine or has none of those images.
    """
    from lib.images import decode

    if not data_dir or not Path(data_dir).expanduser().is_dir():
        raise ExportError(
            f"The run's dataset folder ({data_dir or 'not recorded'}) is not on this machine, "
            "so the export cannot be checked against its images."
        )
    try:
        by_split = _dataset_paths(Path(data_dir).expanduser())
    except UserError as exc:
        raise ExportError(f"The run's dataset cannot be read: {exc}") from exc
    for split in splits:
        paths = _spread(by_split.get(split, []), n * 2)
        arrays = []
        for path in paths:
            try:
                arrays.append(decode(path, size=size))
            except UserError:
                continue
            if len(arrays) >= n:
                break
        if arrays:
            return np.stack(arrays), split
    raise ExportError(f"The run's dataset has no readable images in its {' or '.join(splits)} split.")


def _synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields: a fallback for float parity when the dataset is gone."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.float32)
    from PIL import Image

    out = [
        np.asarray(Image.fromarray(s.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR))
        for s in small
    ]
    return np.stack(out)


def _parity_images(run: _Run, n: int) -> tuple[np.ndarray, str]:
    try:
        return sample_images(run.data_dir, ("validation", "test", "train"), n, run.size)
    except ExportError:
        return _synthetic_images(n, run.size), "synthetic"


# ----------------------------------------------------------------------------------------------
# The run and where exports go
# ----------------------------------------------------------------------------------------------


@dataclass
class _Run:
    run_dir: Path
    run_id: str
    config: dict[str, Any]
    classes: list[str]
    size: int
    data_dir: str | None
    predictor: Any = None


def _model_identity(run_dir: Path) -> dict[str, Any]:
    st = (run_dir / "model.keras").stat()
    return {"mtime_ns": st.st_mtime_ns, "size": st.st_size, "version": EXPORT_VERSION}


def export_dir(run_dir: str | Path) -> Path:
    """<run>/exports/ when the run folder is writable, else a folder of the cache keyed by the run."""
    from lib import settings

    run_dir = Path(run_dir).expanduser()
    inside = run_dir / "exports"
    if not runs.is_shipped(run_dir) and os.access(run_dir, os.W_OK) and runs.writable_dir(inside):
        return inside
    key = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    outside = settings.cache_dir() / "exports" / key
    if not runs.writable_dir(outside):
        raise ExportError(f"There is nowhere to write the export (the run and {outside} are read-only).")
    return outside


def _zip_name(run_id: str, fmt: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id).strip(".") or "model"
    return f"{safe}-{fmt}.zip"


def cached_export(run_dir: str | Path, fmt: str) -> ExportResult | None:
    """An export made earlier from the same model file (None when there is none or it is stale)."""
    run_dir = Path(run_dir).expanduser()
    try:
        dest = export_dir(run_dir)
        identity = _model_identity(run_dir)
    except (OSError, UserError):
        return None
    target = dest / _zip_name(run_dir.name, fmt)
    meta = target.with_suffix(".json")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not target.is_file() or info.get("model") != identity or info.get("format") != fmt:
        return None
    return ExportResult(
        path=target, format=fmt, size_bytes=target.stat().st_size, parity=info.get("parity", {})
    )


# ----------------------------------------------------------------------------------------------
# Model surgery
# ----------------------------------------------------------------------------------------------


def fixed_size_model(model: Any, size: int) -> Any:
    """The part after the Resizing layer with a fixed (1, S, S, 3) float32 input named "image"."""
    from lib import models

    return models.fixed_size_model(model, size, batch_size=1, input_name="image")


def _custom_layers(model: Any) -> list[str]:
    """Class names of layers that are not part of Keras (a plain Keras user needs their code)."""
    found: set[str] = set()

    def walk(layer: Any) -> None:
        module = type(layer).__module__
        if not module.startswith("keras"):
            found.add(type(layer).__name__)
        for sub in getattr(layer, "layers", []) or []:
            walk(sub)

    for layer in model.layers:
        walk(layer)
    return sorted(found)


def tflite_bytes(
    model: Any,
    size: int,
    *,
    representative: np.ndarray | None = None,
    workdir: str | Path | None = None,
) -> tuple[bytes, str]:
    """Convert the fixed-size part to TFLite with built-in ops only; int8 when representative images are given.

    int8 keeps float32 input and output (quantize/dequantize at the ends) so the README is the same.
    Returns (flatbuffer, note).
    """
    import tensorflow as tf

    fixed = fixed_size_model(model, size)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".tflite-") as tmp:
        saved = Path(tmp) / "fixed"
        fixed.export(str(saved), format="tf_saved_model", verbose=False)
        note = ""
        if representative is None:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            return bytes(converter.convert()), note

        def dataset() -> Any:
            for image in representative:
                yield [image[None].astype(np.float32)]

        def convert(ops: list[Any]) -> bytes:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = dataset
            converter.target_spec.supported_ops = ops
            return bytes(converter.convert())

        try:
            return convert([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]), note
        except Exception:
            # An op without an int8 kernel: keep it in float (still built-in ops only).
            note = "A few operations stay in float32 (they have no int8 version)."
            return convert([tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]), note


def tflite_predict(path_or_bytes: str | Path | bytes, images: np.ndarray) -> np.ndarray:
    """Run a TFLite file with the LiteRT interpreter, one image at a time: N x classes probabilities."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(path_or_bytes, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(path_or_bytes))
    else:
        interpreter = Interpreter(model_path=str(path_or_bytes))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    rows = []
    for image in np.asarray(images, dtype=np.float32):
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(np.array(interpreter.get_tensor(out["index"])[0], dtype=np.float32))
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------


def parity(reference: np.ndarray, exported: np.ndarray, *, source: str, must_agree: bool) -> dict[str, Any]:
    """Top-1 agreement and largest probability difference between the app's and an export's outputs."""
    reference = np.asarray(reference, dtype=np.float64)
    exported = np.asarray(exported, dtype=np.float64)
    if reference.shape != exported.shape:
        raise ExportError(
            f"The exported model gives outputs of shape {exported.shape}, the app {reference.shape}."
        )
    agree = reference.argmax(axis=1) == exported.argmax(axis=1)
    result: dict[str, Any] = {
        "images": int(len(agree)),
        "source": source,
        "top1_agreement": float(agree.mean()) if len(agree) else 1.0,
        "agreed": int(agree.sum()),
        "max_abs_diff": float(np.abs(reference - exported).max()) if reference.size else 0.0,
        "required": "100% top-1 agreement" if must_agree else None,
    }
    result["ok"] = bool(agree.all()) if must_agree else True
    if not must_agree and result["top1_agreement"] < INT8_WARN_BELOW:
        result["note"] = (
            f"The quantized model gives a different answer than the app on {len(agree) - int(agree.sum())} "
            f"of {len(agree)} images; prefer TFLite float32 when accuracy matters."
        )
    return result


# ----------------------------------------------------------------------------------------------
# README and packaging
# ----------------------------------------------------------------------------------------------


def _readme(fmt: str, run: _Run, model_file: str, parity_info: dict[str, Any], extra: str = "") -> str:
    s = run.size
    labels = ", ".join(run.classes)
    lines = [
        f"# {run.run_id}: {FORMATS[fmt]}",
        "",
        f"An image classifier exported from the image-classifier studio (base: {run.config.get('base', '?')}).",
        f"It knows {len(run.classes)} classes: {labels}.",
        "",
        "## Input",
    ]
    if fmt in ("keras", "savedmodel"):
        lines += [
            "float32 RGB pixels in 0-255, shape [batch, height, width, 3]. Any size works: the model",
            f"resizes to {s}x{s} (antialiased) and does its own preprocessing. For the same answers as the",
            f"app, resize to {s}x{s} first (squash, no crop; bilinear with antialiasing).",
        ]
    else:
        lines += [
            f"float32 RGB pixels in 0-255, shape [1, {s}, {s}, 3] (fixed). Resize each photo to {s}x{s}",
            "first (squash to that size, no crop; bilinear with antialiasing, e.g. Pillow's",
            f"Image.resize(({s}, {s}), Image.BILINEAR)); apply the EXIF rotation and drop any alpha channel.",
            "Do not scale or normalize the pixels: the model does that itself.",
        ]
        if fmt == "tflite_int8":
            lines += ["Weights and activations are int8 inside; input and output stay float32."]
    lines += [
        "",
        "## Output",
        f"{len(run.classes)} probabilities (softmax) in the order of labels.txt, one class per line.",
        "",
        "## Load it",
        "```python",
    ]
    if fmt == "keras":
        lines += ["import keras", f'model = keras.models.load_model("{model_file}", compile=False)']
        lines += ["probs = model.predict(pixels)  # pixels: float32 [N, H, W, 3], 0-255"]
    elif fmt == "savedmodel":
        lines += ["import tensorflow as tf", f'model = tf.saved_model.load("{model_file}")']
        lines += ["probs = model.serve(pixels)  # pixels: float32 [N, H, W, 3], 0-255"]
    else:
        lines += [
            "from ai_edge_litert.interpreter import Interpreter",
            f'interpreter = Interpreter(model_path="{model_file}")',
            "interpreter.allocate_tensors()",
            "inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]",
            f'interpreter.set_tensor(inp["index"], pixels)  # float32 [1, {s}, {s}, 3], 0-255',
            "interpreter.invoke()",
            'probs = interpreter.get_tensor(out["index"])[0]',
        ]
    lines += ["```", ""]
    if extra:
        lines += [extra, ""]
    agreement = parity_info.get("top1_agreement")
    if agreement is not None:
        where = parity_info.get("source", "?")
        where = "generated test images" if where == "synthetic" else f"{where} images"
        lines += [
            "## Check",
            f"On {parity_info.get('images')} {where}, this file's top answer matched the app's on "
            f"{agreement * 100:.0f}% (largest probability difference {parity_info.get('max_abs_diff', 0):.2g}).",
            "",
        ]
    return "\n".join(lines)


def _write_zip(target: Path, root: Path, folder_name: str) -> None:
    """Zip everything under root as folder_name/..., via a temp file renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".zip")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    zf.write(path, f"{folder_name}/{path.relative_to(root).as_posix()}")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------


def _make_keras(run: _Run, out: Path, work: Path, images: np.ndarray) -> tuple[str, np.ndarray, str]:
    import keras

    try:
        import lib.layers  # noqa: F401  (registers the project's custom layers, if any)
    except ImportError:
        pass
    shutil.copyfile(run.run_dir / "model.keras", out / "model.keras")
    loaded = keras.models.load_model(out / "model.keras", compile=False)
    probs = np.asarray(loaded.predict_on_batch(images.astype(np.float32)))
    custom = _custom_layers(loaded)
    extra = ""
    if custom:
        extra = (
            f"This model uses custom layers ({', '.join(custom)}) from the studio's lib/layers.py: "
            "import that module before loading, or use the SavedModel or TFLite export."
        )
    return "model.keras", probs, extra


def _make_savedmodel(run: _Run, out: Path, work: Path, images: np.ndarray) -> tuple[str, np.ndarray, str]:
    import tensorflow as tf

    target = out / "saved_model"
    run.predictor.model.export(str(target), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(target))
    probs = np.asarray(loaded.serve(tf.constant(images.astype(np.float32))))
    return "saved_model", probs, ""


def _make_tflite(run: _Run, out: Path, work: Path, images: np.ndarray) -> tuple[str, np.ndarray, str]:
    data, note = tflite_bytes(run.predictor.model, run.size, workdir=work)
    (out / "model.tflite").write_bytes(data)
    return "model.tflite", tflite_predict(out / "model.tflite", images), note


def _make_tflite_int8(run: _Run, out: Path, work: Path, images: np.ndarray) -> tuple[str, np.ndarray, str]:
    try:
        representative, _ = sample_images(
            run.data_dir, ("train", "validation"), REPRESENTATIVE_IMAGES, run.size
        )
    except ExportError as exc:
        raise ExportError(
            f"{exc} An int8 model must be calibrated on the training images: export TFLite float32 instead."
        ) from exc
    data, note = tflite_bytes(run.predictor.model, run.size, representative=representative, workdir=work)
    (out / "model_int8.tflite").write_bytes(data)
    return "model_int8.tflite", tflite_predict(out / "model_int8.tflite", images), note


_MAKERS: dict[str, Callable[[_Run, Path, Path, np.ndarray], tuple[str, np.ndarray, str]]] = {
    "keras": _make_keras,
    "savedmodel": _make_savedmodel,
    "tflite": _make_tflite,
    "tflite_int8": _make_tflite_int8,
}


def _open_run(run_dir: Path, predictor: Any = None) -> _Run:
    from lib.prediction import load_predictor, read_run_config

    config, classes, size = read_run_config(run_dir)
    if predictor is None:
        predictor = load_predictor(run_dir)
    data_dir = config.get("data_dir")
    return _Run(
        run_dir=run_dir,
        run_id=run_dir.name,
        config=config,
        classes=classes,
        size=size,
        data_dir=runs.resolve_data_dir(data_dir),
        predictor=predictor,
    )


def export_run(
    run_dir: str | Path,
    fmt: str,
    *,
    predictor: Any = None,
    force: bool = False,
    parity_images: int = PARITY_IMAGES,
) -> ExportResult:
    """Export a run as a checked zip (model + labels.txt + README.md) in <run>/exports/ (or the cache).

    An earlier export of the same model file is reused unless force. `predictor` (a loaded
    lib.prediction.Predictor of this run) saves loading the model again. Raises ExportError (a
    UserError) when the export cannot be made or a float format disagrees with the app.
    """
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format '{fmt}': use one of {', '.join(FORMATS)}.")
    run_dir = Path(run_dir).expanduser()
    if not force and (hit := cached_export(run_dir, fmt)) is not None:
        return hit
    run = _open_run(run_dir, predictor)
    dest = export_dir(run_dir)
    identity = _model_identity(run_dir)
    images, source = _parity_images(run, parity_images)
    reference = run.predictor.predict_arrays(images.astype(np.float32))
    folder_name = _zip_name(run.run_id, fmt)[: -len(".zip")]
    with tempfile.TemporaryDirectory(dir=dest, prefix=".export-") as tmp:
        work = Path(tmp)
        out = work / folder_name
        out.mkdir()
        try:
            model_file, probs, note = _MAKERS[fmt](run, out, work, images)
        except UserError:
            raise
        except Exception as exc:
            raise ExportError(f"The {FORMATS[fmt]} export failed ({type(exc).__name__}: {exc}).") from exc
        check = parity(reference, probs, source=source, must_agree=fmt in FLOAT_FORMATS)
        if note:
            check["note"] = f"{note} {check.get('note', '')}".strip()
        if not check["ok"]:
            raise ExportError(
                f"The {FORMATS[fmt]} export does not predict like the app: its top answer matched on "
                f"{check['agreed']} of {check['images']} images, so it is not offered."
            )
        (out / "labels.txt").write_text("\n".join(run.classes) + "\n", encoding="utf-8")
        (out / "README.md").write_text(_readme(fmt, run, model_file, check, note), encoding="utf-8")
        target = dest / _zip_name(run.run_id, fmt)
        _write_zip(target, out, folder_name)
    _write_json_atomic(
        target.with_suffix(".json"), {"format": fmt, "model": identity, "parity": check, "file": target.name}
    )
    return ExportResult(path=target, format=fmt, size_bytes=target.stat().st_size, parity=check)


def export_summary(result: ExportResult) -> dict[str, Any]:
    """JSON-friendly description of an export (for the CLI and the page)."""
    data = asdict(result)
    data["path"] = str(result.path)
    return data
