"""Export a finished run as portable files (.keras, SavedModel, TFLite float32 and int8), checked first.

Each export is a zip with the model, labels.txt and a README of the expected input. Before a file is
offered, its predictions on validation images are compared with the app's: float formats must agree
on every image (else the export fails); int8's agreement is reported. TFLite files hold only the
fixed-size part of the model (everything after the Resizing layer, whose antialiased kernel lowers
to ScaleAndTranslate, which TFLite lacks), with a 1xSxSx3 input and built-in ops only.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lib import files
from lib.data.images import decode
from lib.data.scan import load_scan
from lib.errors import UserError
from lib.models import build, loader, safety
from lib.models.loader import LoadedModel
from lib.runs import Run, open_run

EXPORT_VERSION = 2  # bump when the files inside an export change, so cached exports are rebuilt
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
    """{split: [(path, class)]} of the usable images, via the app's own (cached) scan and splits."""
    scan = load_scan(data_dir)
    df = scan.usable
    out: dict[str, list[tuple[str, str]]] = {}
    for path, split, cls in zip(df["path"], df["split"], df["class"], strict=True):
        out.setdefault(str(split), []).append((str(path), str(cls)))
    return out


def sample_images(
    data_dir: str | Path | None, splits: Sequence[str], n: int, size: int
) -> tuple[np.ndarray, str]:
    """Up to n decoded SxS images from the first split that has any: (N x S x S x 3 uint8, split name).

    Raises ExportError when the dataset is not on this machine or has none of those images.
    """
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
    out = [
        np.asarray(Image.fromarray(s.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR))
        for s in small
    ]
    return np.stack(out)


def _parity_images(run: Run, n: int) -> tuple[np.ndarray, str]:
    try:
        return sample_images(run.data_dir, ("validation", "test", "train"), n, run.image_size)
    except ExportError:
        return _synthetic_images(n, run.image_size), "synthetic"


# ----------------------------------------------------------------------------------------------
# The run and where exports go
# ----------------------------------------------------------------------------------------------


def _model_identity(run: Run) -> dict[str, Any]:
    return {**run.model_identity(), "version": EXPORT_VERSION}


def export_dir(run_dir: str | Path) -> Path:
    """<run>/exports/ when the run folder is writable, else a folder of the cache keyed by the run."""
    run = open_run(run_dir)
    dest = run.output_dir("exports")
    if not files.writable_dir(dest):
        raise ExportError(f"There is nowhere to write the export ({dest} is read-only).")
    return dest


def _zip_name(run_id: str, fmt: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id).strip(".") or "model"
    return f"{safe}-{fmt}.zip"


def cached_export(run_dir: str | Path, fmt: str) -> ExportResult | None:
    """An export made earlier from the same model file (None when there is none or it is stale)."""
    try:
        run = open_run(run_dir)
        dest = run.output_dir("exports")
        identity = _model_identity(run)
    except (OSError, UserError):
        return None
    target = dest / _zip_name(run.id, fmt)
    try:
        info = files.read_json(target.with_suffix(".json"))
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
    return build.fixed_size_model(model, size, batch_size=1, input_name="image")


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
    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"{files.TEMP_PREFIX}tflite-") as tmp:
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
    return tflite_outputs(path_or_bytes, images)[0]


def tflite_outputs(
    path_or_bytes: str | Path | bytes, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N x classes probabilities, N known scores or None) of a TFLite file, run by LiteRT one image
    at a time. The known score is the output of shape [1, 1] (the probabilities have 2 or more)."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(path_or_bytes, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(path_or_bytes))
    else:
        interpreter = Interpreter(model_path=str(path_or_bytes))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    probs_out = next(o for o in outputs if int(o["shape"][-1]) > 1)
    known_out = next((o for o in outputs if int(o["shape"][-1]) == 1), None)
    rows, known = [], []
    for image in np.asarray(images, dtype=np.float32):
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(np.array(interpreter.get_tensor(probs_out["index"])[0], dtype=np.float32))
        if known_out is not None:
            known.append(float(interpreter.get_tensor(known_out["index"])[0][0]))
    probs = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    return probs, (np.asarray(known, dtype=np.float32) if known_out is not None else None)


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


def _readme(
    fmt: str, model: LoadedModel, model_file: str, parity_info: dict[str, Any], extra: str = ""
) -> str:
    run = model.run
    s = model.size
    labels = ", ".join(run.classes)
    lines = [
        f"# {run.id}: {FORMATS[fmt]}",
        "",
        f"An image classifier exported from the image-classifier studio (base: {run.base or '?'}).",
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
    detector = model.detector
    lines += ["", "## Output"]
    if detector is None:
        lines += [
            f"{len(run.classes)} probabilities (softmax) in the order of labels.txt, one class per line."
        ]
    else:
        cut = 1.0 - detector.acceptance
        lines += [
            "Two outputs:",
            "",
            f"- `probabilities` [N, {len(run.classes)}]: calibrated class probabilities (temperature "
            f"{detector.temperature:.3g} applied) in the order of labels.txt, one class per line.",
            "- `known` [N, 1]: how much the photo looks like the photos the model was trained on, 0-1: the",
            "  share of the model's own held-out photos that look at least as unusual.",
            "",
            f"**Reading it:** when `known` is below {cut:.3g} the photo looks like none of the classes: say",
            '"this doesn\'t look like any of these" (the top probability is then only a hint of the closest',
            f"class). At {cut:.3g}, about {detector.acceptance:.1%} of real photos like the training ones are",
            "accepted; a lower cut accepts more of them and lets more photos of other things through.",
            "unknown.json holds the cut (`known_below`) and the temperature.",
        ]
    lines += ["", "## Load it", "```python"]
    two = detector is not None
    if fmt == "keras":
        lines += [
            "import keras",
            *(["import lib.models.layers  # the studio's layers (KnownScore, Temperature)"] if two else []),
            f'model = keras.models.load_model("{model_file}", compile=False)',
            ("probs, known = model.predict(pixels)" if two else "probs = model.predict(pixels)")
            + "  # pixels: float32 [N, H, W, 3], 0-255",
        ]
    elif fmt == "savedmodel":
        lines += ["import tensorflow as tf", f'model = tf.saved_model.load("{model_file}")']
        lines += [
            ("probs, known = model.serve(pixels)" if two else "probs = model.serve(pixels)")
            + "  # pixels: float32 [N, H, W, 3], 0-255"
        ]
    elif two:
        lines += [
            "from ai_edge_litert.interpreter import Interpreter",
            f'interpreter = Interpreter(model_path="{model_file}")',
            "interpreter.allocate_tensors()",
            "inp = interpreter.get_input_details()[0]",
            "outs = interpreter.get_output_details()",
            'probs_out = next(o for o in outs if o["shape"][-1] > 1)  # the known score has shape [1, 1]',
            'known_out = next(o for o in outs if o["shape"][-1] == 1)',
            f'interpreter.set_tensor(inp["index"], pixels)  # float32 [1, {s}, {s}, 3], 0-255',
            "interpreter.invoke()",
            'probs = interpreter.get_tensor(probs_out["index"])[0]',
            'known = float(interpreter.get_tensor(known_out["index"])[0][0])',
        ]
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
    """Zip everything under root as folder_name/..., atomically."""
    with files.atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"{folder_name}/{path.relative_to(root).as_posix()}")


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------


def _export_model(model: LoadedModel) -> Any:
    """What is exported: the run's classifier, with the known score and the temperature inside when
    the run has an unknown-photo detector (two outputs: probabilities, known)."""
    detector = model.detector
    if detector is None:
        return model.keras_model
    return build.with_known_score(model.keras_model, detector)


Made = tuple[str, np.ndarray, "np.ndarray | None", str]  # file, probabilities, known scores, note


def _outputs(out: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        probs, known = (np.asarray(o) for o in out[:2])
        if probs.shape[-1] == 1:
            probs, known = known, probs
        return probs, known[:, 0]
    return np.asarray(out), None


def _make_keras(model: LoadedModel, out: Path, work: Path, images: np.ndarray) -> Made:
    exported = _export_model(model)
    if exported is model.keras_model:
        shutil.copyfile(model.run.model_path, out / "model.keras")
    else:
        exported.save(out / "model.keras")
    # Read back through the same checks as any model (written here from a checked model, so no
    # isolated child): what is offered must pass them, and Keras never opens an unchecked file.
    loaded = safety.safe_load_model(out / "model.keras", isolated=False)
    probs, known = _outputs(loaded.predict_on_batch(images.astype(np.float32)))
    custom = _custom_layers(loaded)
    extra = ""
    if custom:
        extra = (
            f"This model uses custom layers ({', '.join(custom)}) from the studio's lib/models/layers.py: "
            "import that module before loading, or use the SavedModel or TFLite export."
        )
    return "model.keras", probs, known, extra


def _make_savedmodel(model: LoadedModel, out: Path, work: Path, images: np.ndarray) -> Made:
    import tensorflow as tf

    target = out / "saved_model"
    _export_model(model).export(str(target), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(target))
    probs, known = _outputs(loaded.serve(tf.constant(images.astype(np.float32))))
    return "saved_model", probs, known, ""


def _make_tflite(model: LoadedModel, out: Path, work: Path, images: np.ndarray) -> Made:
    data, note = tflite_bytes(_export_model(model), model.size, workdir=work)
    (out / "model.tflite").write_bytes(data)
    probs, known = tflite_outputs(out / "model.tflite", images)
    return "model.tflite", probs, known, note


def _make_tflite_int8(model: LoadedModel, out: Path, work: Path, images: np.ndarray) -> Made:
    try:
        representative, _ = sample_images(
            model.run.data_dir, ("train", "validation"), REPRESENTATIVE_IMAGES, model.size
        )
    except ExportError as exc:
        raise ExportError(
            f"{exc} An int8 model must be calibrated on the training images: export TFLite float32 instead."
        ) from exc
    data, note = tflite_bytes(_export_model(model), model.size, representative=representative, workdir=work)
    (out / "model_int8.tflite").write_bytes(data)
    probs, known = tflite_outputs(out / "model_int8.tflite", images)
    return "model_int8.tflite", probs, known, note


_MAKERS: dict[str, Callable[[LoadedModel, Path, Path, np.ndarray], Made]] = {
    "keras": _make_keras,
    "savedmodel": _make_savedmodel,
    "tflite": _make_tflite,
    "tflite_int8": _make_tflite_int8,
}


def known_parity(
    reference: np.ndarray, exported: np.ndarray | None, acceptance: float, *, must_agree: bool
) -> dict[str, Any]:
    """How the export's known scores match the app's: the largest difference, and whether each
    image gets the same known/unknown decision at the acceptance level."""
    if exported is None or np.shape(exported) != np.shape(reference):
        raise ExportError("The exported model does not give the known score the app computes.")
    cut = 1.0 - acceptance
    same = (np.asarray(reference) >= cut) == (np.asarray(exported) >= cut)
    result = {
        "known_max_abs_diff": float(np.abs(np.asarray(reference) - np.asarray(exported)).max())
        if len(same)
        else 0.0,
        "known_agreed": int(same.sum()),
        "known_ok": bool(same.all()) if must_agree else True,
    }
    return result


def export_run(
    run_dir: str | Path, fmt: str, *, force: bool = False, parity_images: int = PARITY_IMAGES
) -> ExportResult:
    """Export a run as a checked zip (model + labels.txt + README.md) in <run>/exports/ (or the cache).

    An earlier export of the same model file is reused unless force. The model comes from the one
    loader (already loaded when the Predict page has used it). Raises ExportError (a UserError)
    when the export cannot be made or a float format disagrees with the app.
    """
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format '{fmt}': use one of {', '.join(FORMATS)}.")
    if not force and (hit := cached_export(run_dir, fmt)) is not None:
        return hit
    run = open_run(run_dir)
    model = loader.load(run)
    dest = export_dir(run.path)
    images, source = _parity_images(run, parity_images)
    detector = model.detector
    reference, unknown_scores = model.judge(images.astype(np.float32))
    reference_known = None if unknown_scores is None else 1.0 - unknown_scores
    folder_name = _zip_name(run.id, fmt)[: -len(".zip")]
    with tempfile.TemporaryDirectory(dir=dest, prefix=f"{files.TEMP_PREFIX}export-") as tmp:
        work = Path(tmp)
        out = work / folder_name
        out.mkdir()
        try:
            model_file, probs, known, note = _MAKERS[fmt](model, out, work, images)
        except UserError:
            raise
        except Exception as exc:
            raise ExportError(f"The {FORMATS[fmt]} export failed ({type(exc).__name__}: {exc}).") from exc
        check = parity(reference, probs, source=source, must_agree=fmt in FLOAT_FORMATS)
        if reference_known is not None and detector is not None:
            check.update(
                known_parity(reference_known, known, detector.acceptance, must_agree=fmt in FLOAT_FORMATS)
            )
            check["ok"] = check["ok"] and check["known_ok"]
        if note:
            check["note"] = f"{note} {check.get('note', '')}".strip()
        if not check["ok"]:
            raise ExportError(
                f"The {FORMATS[fmt]} export does not predict like the app: its top answer matched on "
                f"{check['agreed']} of {check['images']} images"
                + (
                    f" and its known/unknown decision on {check['known_agreed']}"
                    if "known_agreed" in check
                    else ""
                )
                + ", so it is not offered."
            )
        (out / "labels.txt").write_text("\n".join(run.classes) + "\n", encoding="utf-8")
        (out / "README.md").write_text(_readme(fmt, model, model_file, check, note), encoding="utf-8")
        if detector is not None:
            files.write_json(
                out / "unknown.json",
                {
                    "acceptance": detector.acceptance,
                    "known_below": round(1.0 - detector.acceptance, 6),
                    "temperature": detector.temperature,
                },
            )
        target = dest / _zip_name(run.id, fmt)
        _write_zip(target, out, folder_name)
    files.write_json(
        target.with_suffix(".json"),
        {"format": fmt, "model": _model_identity(run), "parity": check, "file": target.name},
    )
    return ExportResult(path=target, format=fmt, size_bytes=target.stat().st_size, parity=check)


def export_summary(result: ExportResult) -> dict[str, Any]:
    """JSON-friendly description of an export (for the CLI and the page)."""
    data = asdict(result)
    data["path"] = str(result.path)
    return data
