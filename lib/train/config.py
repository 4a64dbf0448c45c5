"""TrainConfig: everything that decides a training run, serialized as the run's config.json.

Each field carries its own `Option` (label, help, group, widget, choices, range), so the Train
page's form and the flags of `python -m lib train` are generated from the dataclass and can never
disagree with it; `check` is the one place a setting is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from lib import settings
from lib.errors import UserError
from lib.models import build, registry
from lib.models.registry import BASES, DEFAULT_BASE, BaseSpec
from lib.vocab import FLIPS, OPTIMIZERS, POOLINGS, WEIGHTS


@dataclass(frozen=True)
class Option:
    """How a setting is shown and typed: in the Train page's form and as a CLI flag."""

    label: str
    help: str = ""
    group: str = "advanced"  # basics | training | augmentation | head | fine-tuning | advanced | data
    widget: str = "number"  # select | slider | number | toggle | steps | text
    choices: tuple[Any, ...] | None = None  # fixed choices; "base sizes"/"cut layers" depend on the base
    labels: dict[Any, str] | None = None  # choice -> words
    low: float | None = None
    high: float | None = None
    step: float | None = None
    flag: str | None = None  # CLI flag when not --<field-name>
    cli: bool = True
    form: bool = True
    cap: str | None = None  # a settings function giving this server's maximum (tighter when hosted)

    def limit(self) -> float | None:
        """This server's maximum for the field (None: no cap), from lib.settings."""
        return getattr(settings, self.cap)() if self.cap else None

    def top(self) -> float | None:
        """The largest value a form may offer: the field's range within this server's cap."""
        caps = [v for v in (self.high, self.limit()) if v is not None]
        return min(caps) if caps else None


LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
FINE_TUNE_RATES = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4)


@dataclass
class TrainConfig:
    """Everything that decides a training run; serialized as the run's config.json.

    Defaults beat the classic notebook recipe: the head trains on cached features with Adam 1e-3,
    label smoothing and early stopping (best weights restored) instead of 10 epochs at 1e-4.
    """

    data_dir: str = ""
    base: str = DEFAULT_BASE
    weights: str = "auto"
    image_size: int | None = None
    cut_layer: str | None = None
    # Head
    pooling: str = "avg"
    hidden_units: int = 0
    dropout: float = 0.2
    # Augmentation (cached: augmented_views extra views of each training image)
    augment: bool = False
    flip: str = "horizontal"
    rotation: float = 0.1
    zoom: float = 0.1
    contrast: float = 0.1
    translation: float = 0.1
    augmented_views: int = 3
    # Optimization
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 40
    batch_size: int = 32
    label_smoothing: float = 0.1
    class_weights: bool = True
    early_stopping: int = 8
    target_val_accuracy: float = 0.0
    # Fine-tuning (after the head is trained)
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 0
    fine_tune_lr: float = 1e-5
    seed: int = 42
    feature_cache: bool = True
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    # ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; keys that aren't config fields (classes, name, dataset...) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"The training configuration is not valid JSON ({exc}).") from exc
        if not isinstance(data, dict):
            raise UserError("The training configuration must be a JSON object.")
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """A run's config.json (or any such file): reproduces that run."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "config.json"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"The configuration file {path} cannot be read ({exc.strerror or exc}).") from exc
        return cls.from_json(text)

    @property
    def spec(self) -> BaseSpec:
        return registry.get_base(self.base)

    @property
    def head(self) -> build.HeadSpec:
        return build.HeadSpec(
            pooling=self.pooling, hidden=int(self.hidden_units), dropout=float(self.dropout)
        )

    @property
    def frozen(self) -> bool:
        """The base is frozen for the first phase unless it starts from scratch."""
        return registry.normalize_weights(self.spec, self.weights) != "none"

    @property
    def fine_tuning(self) -> bool:
        return self.frozen and self.fine_tune_epochs > 0

    @property
    def uses_feature_cache(self) -> bool:
        """The head trains on cached base features (a frozen base); else the plain path on images."""
        return self.frozen and self.feature_cache

    @property
    def views(self) -> int:
        """Augmented views per training image in the feature cache."""
        return self.augmented_views if self.augment else 0

    def _check_caps(self) -> None:
        """This server's limits (settings; tighter on a hosted demo), whatever a widget allowed."""
        for name, opt in OPTIONS.items():
            limit, value = opt.limit(), getattr(self, name)
            if limit is not None and value is not None and value > limit:
                where = "on this shared demo" if settings.hosted() else "here"
                raise UserError(
                    f"{opt.label} can be at most {limit:,} {where} (you asked for {value:,}); "
                    "run the app on your own computer for bigger runs."
                )

    def resolved(self) -> TrainConfig:
        """A checked copy with the base's canonical name, its default size and the fine-tuning depth filled in."""
        spec = self.spec
        cfg = replace(
            self,
            base=spec.name,
            weights=registry.normalize_weights(spec, self.weights),
            image_size=int(self.image_size) if self.image_size else spec.default_size,
            cut_layer=self.cut_layer or None,
        )
        if cfg.fine_tune_layers > 0 and cfg.fine_tune_epochs <= 0:
            cfg.fine_tune_epochs = 5
        if cfg.fine_tune_epochs > 0 and cfg.fine_tune_layers <= 0:
            cfg.fine_tune_layers = spec.fine_tune_layers
        cfg.check()
        return cfg

    def check(self) -> None:
        """UserError, in plain words, for the first setting that can't work."""
        spec = self.spec
        if self.image_size is not None:
            registry.check_size(spec, int(self.image_size))
        if self.cut_layer and self.cut_layer not in spec.cut_layers:
            choices = ", ".join(spec.cut_layers) or "none"
            raise UserError(
                f"{spec.name} can't be cut at {self.cut_layer!r} (possible cut layers: {choices})."
            )
        for ok, message in RULES:
            if not ok(self):
                raise UserError(message)
        self._check_caps()
        weights = registry.normalize_weights(spec, self.weights)
        if weights == "bundled" and spec.bundled is None:
            raise UserError(
                f"There are bundled offline weights for {build.bundled_bases()} only, not {spec.name}: "
                "choose weights auto, imagenet, none or a weights file."
            )
        if registry.is_weights_file(weights) and not Path(weights).expanduser().is_file():
            raise UserError(f"The weights file {self.weights} does not exist.")


# The settings check: (rule, what to say when it fails), in the order a person would fix them.
RULES: tuple[tuple[Callable[[TrainConfig], bool], str], ...] = (
    (
        lambda c: c.pooling in POOLINGS,
        f"Pooling must be one of {', '.join(POOLINGS)}.",
    ),
    (lambda c: 0 <= c.hidden_units <= 8192, "Hidden units must be between 0 (none) and 8192."),
    (lambda c: 0 <= c.dropout < 1, "Dropout must be at least 0 and below 1."),
    (lambda c: c.flip in FLIPS, f"Flip must be one of {', '.join(FLIPS)}."),
    (lambda c: 0 <= c.rotation <= 0.5, "Rotation must be between 0 and 0.5 (a fraction of a full turn)."),
    (lambda c: 0 <= c.zoom < 1, "Zoom must be at least 0 and below 1."),
    (lambda c: 0 <= c.contrast < 1, "Contrast must be at least 0 and below 1."),
    (lambda c: 0 <= c.translation < 1, "Translation must be at least 0 and below 1."),
    (lambda c: 0 <= c.augmented_views <= 20, "Augmented views must be between 0 and 20."),
    (lambda c: c.optimizer in OPTIMIZERS, f"Optimizer must be one of {', '.join(OPTIMIZERS)}."),
    (lambda c: 0 < c.lr <= 1, "The learning rate must be above 0 and at most 1."),
    (lambda c: 1 <= c.epochs <= 10_000, "Epochs must be between 1 and 10,000."),
    (lambda c: 1 <= c.batch_size <= 4096, "The batch size must be between 1 and 4,096."),
    (lambda c: 0 <= c.label_smoothing < 1, "Label smoothing must be at least 0 and below 1."),
    (lambda c: c.early_stopping >= 0, "Early-stopping patience can't be negative."),
    (lambda c: 0 <= c.target_val_accuracy <= 1, "The target validation accuracy must be between 0 and 1."),
    (lambda c: c.fine_tune_layers >= 0, "Fine-tune layers can't be negative."),
    (lambda c: 0 <= c.fine_tune_epochs <= 10_000, "Fine-tune epochs must be between 0 and 10,000."),
    (lambda c: 0 < c.fine_tune_lr <= 1, "The fine-tuning learning rate must be above 0 and at most 1."),
    (lambda c: 0 <= c.seed < 2**31, "The seed must be a whole number from 0 to 2147483647."),
    (
        lambda c: (
            0 <= c.val_fraction < 1 and 0 <= c.test_fraction < 1 and c.val_fraction + c.test_fraction < 1
        ),
        "The validation and test fractions must leave some images for training.",
    ),
)


# How each field is shown in the Train page's form and typed as a CLI flag (one entry per field;
# tests/train/test_config.py checks that every field has one and every offered value passes check()).
OPTIONS: dict[str, Option] = {
    "data_dir": Option(label="Dataset folder", group="data", widget="text", flag="--data", form=False),
    "base": Option(
        label="Base model",
        group="basics",
        widget="select",
        choices=tuple(BASES),
        help="The pretrained network whose knowledge of images is reused.",
    ),
    "weights": Option(
        label="Weights",
        group="basics",
        widget="select",
        choices=tuple(WEIGHTS),
        labels=WEIGHTS,
        help="Where the base's knowledge comes from: auto, imagenet, bundled, none, or a weights file path.",
    ),
    "image_size": Option(
        label="Image size (px)",
        group="basics",
        widget="select",
        choices=("base sizes",),
        cap="max_image_size",
        help="Images are resized to this square before the base sees them (default: the base's own size). "
        "Larger: slower, sometimes more accurate.",
    ),
    "cut_layer": Option(
        label="Cut the base at",
        group="advanced",
        widget="select",
        choices=("cut layers",),
        help="Use the base only up to this layer (e.g. mixed7 of InceptionV3).",
    ),
    "pooling": Option(
        label="Head pooling",
        group="head",
        widget="select",
        choices=tuple(POOLINGS),
        labels=POOLINGS,
        help="avg = GlobalAveragePooling (small, robust); flatten keeps where things are (bigger).",
    ),
    "hidden_units": Option(
        label="Hidden layer units (0 = none)",
        group="head",
        low=0,
        high=4096,
        step=64,
        help="A Dense layer before the output.",
        cap="max_hidden_units",
    ),
    "dropout": Option(label="Dropout", group="head", widget="slider", low=0.0, high=0.8, step=0.05),
    "augment": Option(
        label="Augment training images (random flips, turns, zooms)",
        group="augmentation",
        widget="toggle",
        help="Helps with few images; the first run is slower.",
    ),
    "flip": Option(label="Flip", group="augmentation", widget="select", choices=tuple(FLIPS), labels=FLIPS),
    "rotation": Option(
        label="Rotation (fraction of a turn)",
        group="augmentation",
        widget="slider",
        low=0.0,
        high=0.5,
        step=0.05,
    ),
    "zoom": Option(label="Zoom", group="augmentation", widget="slider", low=0.0, high=0.5, step=0.05),
    "contrast": Option(label="Contrast", group="augmentation", widget="slider", low=0.0, high=0.5, step=0.05),
    "translation": Option(label="Shift", group="augmentation", widget="slider", low=0.0, high=0.3, step=0.05),
    "augmented_views": Option(
        label="Augmented views per image",
        group="augmentation",
        low=1,
        high=10,
        help="Cached variations of each training image.",
        cap="max_augmented_views",
    ),
    "optimizer": Option(
        label="Optimizer",
        group="training",
        widget="select",
        choices=tuple(OPTIMIZERS),
        labels=OPTIMIZERS,
        help="Adam is a safe default.",
    ),
    "lr": Option(
        label="Learning rate",
        group="training",
        widget="steps",
        choices=LEARNING_RATES,
        help="Step size of learning.",
    ),
    "epochs": Option(
        label="Epochs",
        group="training",
        low=1,
        high=10_000,
        help="Passes over the training images (early stopping may end sooner).",
        cap="max_epochs",
    ),
    "batch_size": Option(
        label="Batch size",
        group="training",
        widget="select",
        choices=(8, 16, 32, 64, 128),
        help="Images per training step.",
    ),
    "label_smoothing": Option(
        label="Label smoothing", group="head", widget="slider", low=0.0, high=0.3, step=0.05
    ),
    "class_weights": Option(label="Balance classes (class weights)", group="head", widget="toggle"),
    "early_stopping": Option(
        label="Early stopping patience (0 = off)",
        group="advanced",
        low=0,
        high=100,
        help="Epochs without a better validation loss before stopping; the best epoch is kept.",
    ),
    "target_val_accuracy": Option(
        label="Stop at validation accuracy (0 = off)",
        group="advanced",
        widget="slider",
        low=0.0,
        high=1.0,
        step=0.01,
    ),
    "fine_tune_layers": Option(
        label="Layers to unfreeze",
        group="fine-tuning",
        low=0,
        high=500,
        help="Top base layers trained after the head (0: none).",
        cap="max_fine_tune_layers",
    ),
    "fine_tune_epochs": Option(
        label="Fine-tuning epochs", group="fine-tuning", low=0, high=200, cap="max_fine_tune_epochs"
    ),
    "fine_tune_lr": Option(
        label="Fine-tuning learning rate", group="fine-tuning", widget="steps", choices=FINE_TUNE_RATES
    ),
    "seed": Option(label="Seed", group="advanced", low=0, high=2**31 - 1),
    "feature_cache": Option(
        label="Cache base features",
        group="advanced",
        widget="toggle",
        form=False,
        help="Train the head on cached features (off: the plain path).",
    ),
    "val_fraction": Option(label="Validation share", group="data", form=False, help="When the app splits."),
    "test_fraction": Option(label="Test share", group="data", form=False, help="When the app splits."),
}


def options() -> list[tuple[Field, Option]]:
    """Every config field with its Option, in declaration order."""
    return [(f, OPTIONS[f.name]) for f in fields(TrainConfig)]


def default_of(f: Field) -> Any:
    return f.default if f.default is not MISSING else None


def size_choices(spec: BaseSpec, largest: int | None = None) -> list[int]:
    """Image sizes offered for a base (at most `largest`), its default size among them."""
    sizes = [s for s in spec.sizes if largest is None or s <= largest] or [min(spec.sizes)]
    return sizes


def offline_retry(config: TrainConfig) -> TrainConfig | None:
    """The same run with weights that work offline (after an ImageNet download failed): the base's
    bundled backbone, or else the first base that has one, at its bundled size."""
    spec = config.spec
    if spec.bundled is not None:
        return replace(config, weights="bundled")
    for other in BASES.values():
        if other.bundled is not None:
            return replace(
                config, base=other.name, weights="bundled", image_size=other.bundled_size, cut_layer=None
            )
    return None
