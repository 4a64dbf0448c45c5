"""The inference engine: LiteRT (XNNPACK) on a CPU, Keras where LiteRT is missing or a GPU is visible.

    choose("auto")          "litert" on a CPU with ai_edge_litert installed, else "keras"
    LiteModel(path)         a .tflite file run by the LiteRT interpreter: named outputs, any batch
                            size, thread-safe; numpy only, never TensorFlow
    convert(model, ...)     a Keras model with a fixed S x S input to TFLite (imports TensorFlow)
    feature_engine(...)     the frozen base of a feature pass converted once, checked against Keras
                            on a few images and cached on disk for every run that uses it

Models are converted without their Resizing layer (its antialiased kernel has no TFLite op): the
feeder decodes to S x S, where that resize is an identity. A converted model that disagrees with
Keras by more than TOLERANCE is not used (Keras runs instead, with a log line saying so).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lib import files, settings
from lib.errors import UserError

ENGINES = ("auto", "litert", "keras")
ENGINE_VERSION = 1  # bump when what a converted file holds changes (its cache entries are rebuilt)
TOLERANCE = 1e-3  # largest |LiteRT - Keras| difference accepted on the check images
CHECK_IMAGES = 8
MAX_BATCH = 64  # largest batch one interpreter call runs (bigger ones go in chunks)
PROBABILITIES, FEATURES = "probabilities", "features"


def normalize(engine: str | None) -> str:
    """An engine name from the CLI, a setting or a config ("auto" when empty)."""
    name = (engine or "auto").strip().lower()
    if name not in ENGINES:
        raise UserError(f"Unknown engine '{engine}': use {', '.join(ENGINES)}.")
    return name


def litert_available() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def gpu_visible() -> bool:
    """Whether TensorFlow would see a GPU: asked of TensorFlow when it is loaded already, else
    guessed from the NVIDIA driver (so choosing an engine never imports TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "config"):
        try:
            return bool(tf.config.list_physical_devices("GPU"))
        except Exception:  # noqa: BLE001 - a half-initialised TensorFlow: assume none
            return False
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    try:
        return any(Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        return False


def choose(engine: str | None = None) -> str:
    """The engine to run: "litert" or "keras" (engine None: the STUDIO_ENGINE setting). "auto" is
    LiteRT on a CPU and Keras where LiteRT is missing (Windows) or a GPU is visible; an explicit
    "litert" without LiteRT installed falls back to Keras too."""
    name = normalize(engine if engine is not None else settings.engine())
    if name == "keras" or not litert_available():
        return "keras"
    if name == "auto" and gpu_visible():
        return "keras"
    return "litert"


def versions() -> dict[str, str]:
    """Library versions a converted file depends on (part of cache keys)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("ai-edge-litert", "tensorflow", "tensorflow-cpu", "keras"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


# ----------------------------------------------------------------------------------------------
# Running a .tflite file (no TensorFlow)
# ----------------------------------------------------------------------------------------------


class LiteModel:
    """A .tflite file (or its bytes) run by LiteRT with XNNPACK on every core.

    __call__(x) -> {output name: array} for an N x S x S x 3 float32 batch: a file with a fixed
    batch runs padded chunks of it, one with a dynamic batch is resized when N changes (at most
    MAX_BATCH images a call). One
    interpreter, guarded by a lock (it is not thread-safe)."""

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        threads = threads or max(1, os.cpu_count() or 1)
        if isinstance(model, (bytes, bytearray)):
            self._interpreter = Interpreter(model_content=bytes(model), num_threads=threads)
        else:
            self._interpreter = Interpreter(model_path=str(model), num_threads=threads)
        runner = self._interpreter.get_signature_runner()
        inputs = runner.get_input_details()
        self.outputs = {name: d["index"] for name, d in runner.get_output_details().items()}
        del runner  # it holds views of the interpreter's tensors, which resizing must not have
        detail = next(iter(inputs.values()))
        self._input = detail["index"]
        signature = [int(d) for d in self._interpreter.get_input_details()[0]["shape_signature"]]
        self.size = int(signature[1])
        self.fixed_batch = signature[0] if signature[0] > 0 else None
        self._batch = int(self._interpreter.get_input_details()[0]["shape"][0])
        self._lock = threading.Lock()
        self._interpreter.allocate_tensors()

    def _invoke(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if x.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, list(x.shape))
            self._interpreter.allocate_tensors()
            self._batch = x.shape[0]
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return {name: np.array(self._interpreter.get_tensor(i)) for name, i in self.outputs.items()}

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"expected N x {self.size} x {self.size} x 3 pixels, got shape {x.shape}")
        n = x.shape[0]
        with self._lock:
            if self.fixed_batch is None and n <= MAX_BATCH:
                return self._invoke(x) if n else self._empty()
            parts: list[dict[str, np.ndarray]] = []
            step = self.fixed_batch or MAX_BATCH  # bounded activations, whatever the caller sends
            for start in range(0, n, step):
                chunk = x[start : start + step]
                if self.fixed_batch is not None and len(chunk) < step:
                    chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *x.shape[1:]), np.float32)])
                out = self._invoke(chunk)
                parts.append({k: v[: min(step, n - start)] for k, v in out.items()})
        if not parts:
            return self._empty()
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def output_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of an output for the current batch size (None when there is no such output)."""
        for d in self._interpreter.get_output_details():
            if d["index"] == self.outputs.get(name):
                return tuple(int(v) for v in d["shape"])
        return None

    def _empty(self) -> dict[str, np.ndarray]:
        details = {d["index"]: d for d in self._interpreter.get_output_details()}
        return {
            name: np.zeros((0, *details[i]["shape"][1:]), dtype=np.float32)
            for name, i in self.outputs.items()
        }


def check_images(size: int, n: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields (uint8 n x S x S x 3): what a conversion is checked on when no
    dataset images are at hand."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(s).resize((size, size), Image.Resampling.BILINEAR)) for s in small]
    )


# ----------------------------------------------------------------------------------------------
# Converting (TensorFlow, lazily)
# ----------------------------------------------------------------------------------------------


def convert(model: Any, size: int, *, batch: int | None = None, workdir: str | Path | None = None) -> bytes:
    """A Keras model taking (batch, S, S, 3) float32 pixels and giving a dict of named outputs, as
    a TFLite flatbuffer with built-in ops only (batch None: any batch size)."""
    import keras
    import tensorflow as tf

    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"{files.TEMP_PREFIX}convert-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serving_default",
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((batch, size, size, 3), tf.float32, name="image")],
        )
        archive.write_out(str(Path(tmp) / "saved"), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "saved"))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return bytes(converter.convert())


def graft_head(base: bytes, dense: list[tuple[np.ndarray, np.ndarray, str]]) -> bytes:
    """A converted base (dynamic batch, one "features" output) with Dense layers added after it,
    as one .tflite giving {"probabilities", "features"}: no TensorFlow, milliseconds instead of a
    new conversion. dense: (Keras kernel (in, out), bias, activation "relu" | "linear" |
    "softmax") in order; the last one's output is "probabilities"."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(base))
    graph = model.subgraphs[0]
    signature = model.signatureDefs[0]
    outputs = {
        o.name.decode() if isinstance(o.name, bytes) else o.name: o.tensorIndex for o in signature.outputs
    }
    if len(model.subgraphs) != 1 or list(outputs) != [FEATURES]:
        raise ValueError("the base is not a single-graph model with one features output")
    features = outputs[FEATURES]

    def opcode(code: int) -> int:
        for i, op in enumerate(model.operatorCodes):
            if max(op.builtinCode, op.deprecatedBuiltinCode) == code:
                return i
        op = fb.OperatorCodeT()
        op.builtinCode, op.deprecatedBuiltinCode, op.version = code, min(code, 127), 1
        model.operatorCodes.append(op)
        return len(model.operatorCodes) - 1

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        t = fb.TensorT()
        t.name, t.type, t.shape = name.encode(), fb.TensorType.FLOAT32, list(shape)
        t.shapeSignature = [-1, *shape[1:]] if data is None else list(shape)
        t.buffer = 0
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data, dtype="<f4").tobytes(), dtype=np.uint8)
            model.buffers.append(buf)
            t.buffer = len(model.buffers) - 1
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    def operator(code: int, inputs: list[int], output: int, options_type: int, options: Any) -> None:
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode(code), inputs, [output]
        op.builtinOptionsType, op.builtinOptions = options_type, options
        graph.operators.append(op)

    x = features
    for i, (kernel, bias, activation) in enumerate(dense):
        if activation not in ("relu", "linear", "softmax"):
            raise ValueError(f"activation {activation} can't be grafted")
        kernel = np.asarray(kernel, dtype=np.float32)
        width = int(kernel.shape[1])
        weights = tensor(f"head/dense{i}/kernel", [width, int(kernel.shape[0])], kernel.T)
        b = tensor(f"head/dense{i}/bias", [width], np.asarray(bias, np.float32))
        y = tensor(f"head/dense{i}/output", [1, width])
        options = fb.FullyConnectedOptionsT()
        options.fusedActivationFunction = (
            fb.ActivationFunctionType.RELU if activation == "relu" else fb.ActivationFunctionType.NONE
        )
        operator(
            fb.BuiltinOperator.FULLY_CONNECTED,
            [x, weights, b],
            y,
            fb.BuiltinOptions.FullyConnectedOptions,
            options,
        )
        x = y
        if activation == "softmax":
            y = tensor(f"head/dense{i}/softmax", [1, width])
            options = fb.SoftmaxOptionsT()
            options.beta = 1.0
            operator(fb.BuiltinOperator.SOFTMAX, [x], y, fb.BuiltinOptions.SoftmaxOptions, options)
            x = y
    graph.outputs = [x, features]
    maps = []
    for name, index in ((PROBABILITIES, x), (FEATURES, features)):
        m = fb.TensorMapT()
        m.name, m.tensorIndex = name.encode(), index
        maps.append(m)
    signature.outputs = maps
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over the outputs both have (inf when shapes differ)."""
    worst = 0.0
    for name in a.keys() & b.keys():
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        if x.shape != y.shape:
            return float("inf")
        if x.size:
            worst = max(worst, float(np.nanmax(np.abs(x - y))))
    return worst


# ----------------------------------------------------------------------------------------------
# The feature pass's base, converted once and shared
# ----------------------------------------------------------------------------------------------


def engines_dir() -> Path:
    return settings.cache_dir() / "engines"


def feature_parts(*, pooled: bool, batch: int | None, size: int, key_parts: dict[str, Any]) -> dict[str, Any]:
    """What identifies a converted feature extractor (see base_key)."""
    return {"kind": "base", "pooled": pooled, "batch": batch, "size": size, **key_parts}


def base_key(parts: dict[str, Any]) -> str:
    """Cache key of a converted base: base, weights identity, size, cut, pooling, batch shape and
    the library versions, as given by the caller, plus the engine version."""
    payload = {"engine_version": ENGINE_VERSION, **parts, "versions": versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Converted:
    """A converted model ready to use (lite is None when it disagreed with Keras or failed)."""

    lite: LiteModel | None
    max_diff: float | None
    seconds: float  # spent converting now (0 when it came from the cache)
    cached: bool
    reason: str = ""  # why LiteRT is not used, when it isn't
    path: Path | None = None
    keras_model: Any = None  # the Keras model it was made from, when it was loaded for that


def cached_conversion(
    target: Path,
    identity: dict[str, Any],
    make: Callable[[], bytes | tuple[Any, int, int | None]],
    check: Callable[[LiteModel], float],
) -> Converted:
    """The model converted to `target` (a .tflite file; its record, <target>.json, says what it was
    made from), made now when missing or made from something else: make() returns (Keras model
    with dict outputs, S, batch or None), check(lite) the largest difference from Keras on a few
    images. Both files are written atomically, the record last; a conversion that failed or
    disagreed is remembered too, so it isn't tried again every time."""
    record = target.with_name(target.name + ".json")
    found = _converted_already(target, record, identity)
    if found is not None:
        return found
    # One conversion at a time per target (the app's background preparation and a page, two
    # visitors): whoever waited finds it made.
    with files.exclusive(f"conversion:{target.resolve()}"):
        found = _converted_already(target, record, identity)
        if found is not None:
            return found
        return _convert_and_keep(target, record, identity, make, check)


def _converted_already(target: Path, record: Path, identity: dict[str, Any]) -> Converted | None:
    """The kept conversion (or the kept failure) when its record names `identity`, else None."""
    try:
        meta = files.read_json(record)
        if meta.get("identity") == identity:
            if not meta.get("ok"):
                return Converted(None, meta.get("max_diff"), 0.0, True, meta.get("reason", ""), target)
            return Converted(LiteModel(target), meta.get("max_diff"), 0.0, True, path=target)
    except (OSError, ValueError, RuntimeError):
        pass  # missing, broken or stale: make it again
    return None


def _convert_and_keep(
    target: Path,
    record: Path,
    identity: dict[str, Any],
    make: Callable[[], bytes | tuple[Any, int, int | None]],
    check: Callable[[LiteModel], float],
) -> Converted:
    start = time.perf_counter()
    meta: dict[str, Any] = {"identity": identity, "versions": versions()}
    lite, data = None, b""
    try:
        made = make()
        data = made if isinstance(made, bytes) else convert(made[0], made[1], batch=made[2])
        lite = LiteModel(data)
        diff = float(check(lite))
        meta.update(ok=diff <= TOLERANCE, max_diff=diff)
        if diff > TOLERANCE:
            meta["reason"] = f"LiteRT disagrees with Keras by {diff:.2g} (more than {TOLERANCE:g})"
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - an op TFLite lacks, a converter bug: Keras runs instead
        meta.update(
            ok=False, max_diff=None, reason=f"conversion failed ({type(exc).__name__}: {str(exc)[:200]})"
        )
    meta["seconds"] = round(time.perf_counter() - start, 2)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        files.ensure_free(target.parent, len(data) + 1024 * 1024, "keeping the converted model")
        if meta["ok"]:
            files.write_atomic(target, data)
        files.write_json(record, meta)
    except (OSError, UserError):
        pass  # nowhere to keep it (read-only, disk full): use it this once
    if not meta["ok"]:
        return Converted(None, meta.get("max_diff"), meta["seconds"], False, meta["reason"], target)
    return Converted(lite, meta["max_diff"], meta["seconds"], False, path=target)


def feature_engine(
    spec: Any,
    size: int,
    base: Any,
    *,
    pooled: bool,
    batch: int,
    key_parts: dict[str, Any],
    check_pixels: np.ndarray,
) -> Converted:
    """The feature extractor (preprocessing -> base -> pooling) for a fixed batch, as LiteRT,
    from the cache or converted now and checked against Keras on `check_pixels` (uint8 S x S)."""
    from lib.models import build  # imports Keras: only when converting (kept lazy)

    holder: dict[str, Any] = {}

    def make() -> tuple[Any, int, int]:
        import keras

        extractor = build.feature_model(spec, size, base, pooled=pooled)
        holder["extractor"] = extractor
        inputs = keras.Input(batch_shape=(batch, size, size, 3), dtype="float32", name="image")
        return keras.Model(inputs, {FEATURES: extractor(inputs, training=False)}), size, batch

    def check(lite: LiteModel) -> float:
        x = np.asarray(check_pixels, dtype=np.float32)
        reference = np.asarray(holder["extractor"](x, training=False))
        return max_difference({FEATURES: reference}, {FEATURES: lite(x)[FEATURES]})

    key = base_key(feature_parts(pooled=pooled, batch=batch, size=size, key_parts=key_parts))
    return cached_conversion(engines_dir() / key / "base.tflite", {"key": key}, make, check)
