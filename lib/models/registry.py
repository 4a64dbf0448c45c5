"""The registry of base models: one small record per base (constructor, sizes, preprocessing, cut
points, fine-tuning depth, Grad-CAM layer, bundled offline weights).

Training, the Train page, the config check, export and the retry button read facts from the record
("the bundled weights are MobileNetV2's") instead of spelling base names in `if` chains.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from lib import settings
from lib.errors import UserError
from lib.vocab import WEIGHTS

MAX_SIZE = 512


@dataclass(frozen=True)
class BaseSpec:
    """What the app knows about one base model."""

    name: str
    constructor: str  # attribute of keras.applications; "" for the from-scratch CNN
    default_size: int
    sizes: tuple[int, ...]  # sizes offered in the UI (any size from min_size to MAX_SIZE works)
    min_size: int
    preprocessing: str  # "minus_one_one" | "zero_one" | "caffe" | "builtin" (inside the base)
    fine_tune_layers: int  # sensible number of top layers to unfreeze when fine-tuning
    last_conv_layer: str | None  # Grad-CAM layer inside the base; None: the base's output (always a conv map)
    cut_layers: tuple[str, ...] = ()  # intermediate layers the base may be cut at
    pretrained: bool = True  # has ImageNet weights
    summary: str = ""
    bundled_weights: str | None = None  # a weights file shipped in weights/ (works offline)
    bundled_size: int | None = None  # the size those weights were trained at (they load at any size)

    @property
    def bundled(self) -> Path | None:
        """The shipped offline weights file of this base, when there is one."""
        return settings.ROOT / "weights" / self.bundled_weights if self.bundled_weights else None


BASES: dict[str, BaseSpec] = {
    spec.name: spec
    for spec in (
        BaseSpec(
            name="MobileNetV2",
            constructor="MobileNetV2",
            default_size=160,
            sizes=(96, 128, 160, 192, 224),
            min_size=32,
            preprocessing="minus_one_one",
            fine_tune_layers=54,
            last_conv_layer="out_relu",
            summary="Fast and accurate on a laptop; the default. Offline weights are bundled (160 px).",
            bundled_weights="mobilenet_v2_1.0_160_no_top.weights.h5",
            bundled_size=160,
        ),
        BaseSpec(
            name="MobileNetV3Small",
            constructor="MobileNetV3Small",
            default_size=224,
            sizes=(96, 128, 160, 192, 224),
            min_size=32,
            preprocessing="builtin",
            fine_tune_layers=40,
            last_conv_layer=None,
            summary="The fastest; a little less accurate.",
        ),
        BaseSpec(
            name="MobileNetV3Large",
            constructor="MobileNetV3Large",
            default_size=224,
            sizes=(96, 128, 160, 192, 224),
            min_size=32,
            preprocessing="builtin",
            fine_tune_layers=50,
            last_conv_layer=None,
            summary="Fast, more accurate than the small one.",
        ),
        BaseSpec(
            name="EfficientNetB0",
            constructor="EfficientNetB0",
            default_size=224,
            sizes=(160, 192, 224, 260),
            min_size=32,
            preprocessing="builtin",
            fine_tune_layers=40,
            last_conv_layer="top_activation",
            summary="Accurate for its size; slower than the MobileNets on a CPU.",
        ),
        BaseSpec(
            name="EfficientNetV2B0",
            constructor="EfficientNetV2B0",
            default_size=224,
            sizes=(160, 192, 224, 260),
            min_size=32,
            preprocessing="builtin",
            fine_tune_layers=40,
            last_conv_layer="top_activation",
            summary="A newer EfficientNet; trains well with fine-tuning.",
        ),
        BaseSpec(
            name="ResNet50",
            constructor="ResNet50",
            default_size=224,
            sizes=(160, 192, 224),
            min_size=32,
            preprocessing="caffe",
            fine_tune_layers=33,
            last_conv_layer="conv5_block3_out",
            summary="A classic large network (100 MB); slow on a CPU.",
        ),
        BaseSpec(
            name="InceptionV3",
            constructor="InceptionV3",
            default_size=299,
            sizes=(150, 224, 299),
            min_size=75,
            preprocessing="minus_one_one",
            fine_tune_layers=62,
            last_conv_layer=None,  # the base's output: mixed10, or the cut layer (mixed7...) when cut
            cut_layers=("mixed7", "mixed8", "mixed9"),
            summary="A classic large network; can be cut at an intermediate block such as mixed7.",
        ),
        BaseSpec(
            name="SmallCNN",
            constructor="",
            default_size=128,
            sizes=(64, 96, 128, 160),
            min_size=32,
            preprocessing="zero_one",
            fine_tune_layers=0,
            last_conv_layer="last_conv",
            pretrained=False,
            summary="A small network trained from scratch: the baseline to beat.",
        ),
    )
}
DEFAULT_BASE = "MobileNetV2"


def get_base(name: str) -> BaseSpec:
    """The registry record for a base name (case-insensitive), or a UserError listing the choices."""
    for key, spec in BASES.items():
        if key.lower() == str(name).strip().lower():
            return spec
    raise UserError(f"Unknown base model {name!r}: choose one of {', '.join(BASES)}.")


def check_size(spec: BaseSpec, size: int) -> int:
    """Refuse image sizes the base can't take, in plain words."""
    if not isinstance(size, int) or size < spec.min_size or size > MAX_SIZE:
        raise UserError(f"{spec.name} takes images from {spec.min_size} to {MAX_SIZE} pixels, not {size}.")
    return size


def normalize_weights(spec: BaseSpec, weights: str | os.PathLike | None) -> str:
    """A weights keyword (see lib.vocab.WEIGHTS) or a file path; the from-scratch CNN has no
    pretrained weights, so "auto" and "imagenet" mean "none" for it."""
    value = "none" if weights is None else str(weights).strip()
    low = value.lower()
    if low in WEIGHTS:
        value = low
    if not spec.pretrained and value in ("imagenet", "auto"):
        return "none"  # nothing to download: the baseline always starts from scratch
    return value


def is_weights_file(weights: str) -> bool:
    return weights not in WEIGHTS


def weights_identity(spec: BaseSpec, weights: str) -> str:
    """A short stable id of a resolved weights choice (part of feature-cache keys): the content
    hash of a weights file (the bundled one included), else the keyword."""
    if weights in ("imagenet", "none"):
        return weights
    if weights == "bundled":
        if spec.bundled is None:
            raise UserError(f"{spec.name} has no bundled offline weights.")
        return "sha256:" + _file_sha256(spec.bundled)
    return "sha256:" + _file_sha256(Path(weights))


_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]
