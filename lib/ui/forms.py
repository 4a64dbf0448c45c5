"""Forms built from TrainConfig's own fields: label, help, widget, choices, range and default come
from each field's Option (lib.train.config), so the page and the config can never disagree. Values
are remembered across pages (lib.ui.state): the augmentation preview on the Dataset page and the
Train page edit the same settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from lib import settings
from lib.data.scan import Scan
from lib.errors import UserError
from lib.models import registry, safety
from lib.text import md_escape
from lib.train.config import Option, TrainConfig, options, size_choices
from lib.ui import state

OPTIONS: dict[str, Option] = {f.name: opt for f, opt in options()}
AUGMENTATION = ("flip", "rotation", "zoom", "contrast", "translation")
WEIGHTS_FILE = "file"  # the weights choice that asks for a file


def _ranged(name: str, value: Any, opt: Option, choices: list[Any] | None, high: float | None) -> Any:
    """The saved value, made valid for the widget (a choice it offers, inside its range)."""
    if choices is not None:
        return value if value in choices else choices[0]
    if opt.widget in ("number", "slider") and opt.low is not None:
        top = high if high is not None else opt.top()
        kind = float if opt.widget == "slider" or isinstance(opt.step, float) else int
        return kind(min(max(value, opt.low), top if top is not None else value))
    return value


def field(
    name: str,
    container: Any = None,
    *,
    choices: list[Any] | None = None,
    high: float | None = None,
    disabled: bool = False,
    labels: dict[Any, str] | None = None,
) -> Any:
    """Draw the widget of one TrainConfig field and return its value."""
    opt = OPTIONS[name]
    box = container or st
    choices = list(choices if choices is not None else opt.choices) if (choices or opt.choices) else None
    key = state.widget_key(name)
    saved = state.saved_settings()[name]
    current = st.session_state.get(key, saved)
    fixed = _ranged(name, current, opt, choices, high)
    if key not in st.session_state or fixed != current:
        st.session_state[key] = fixed
    words = labels or opt.labels or {}
    if opt.widget == "select":
        value = box.selectbox(
            opt.label,
            choices,
            key=key,
            help=opt.help or None,
            disabled=disabled,
            format_func=lambda v: words.get(v, str(v)),
        )
    elif opt.widget == "steps":
        value = box.select_slider(opt.label, choices, key=key, help=opt.help or None, disabled=disabled)
    elif opt.widget == "toggle":
        value = box.toggle(opt.label, key=key, help=opt.help or None, disabled=disabled)
    elif opt.widget == "slider":
        value = box.slider(
            opt.label, float(opt.low), float(high if high is not None else opt.top()), step=float(opt.step or 0.01),
            key=key, help=opt.help or None, disabled=disabled,
        )  # fmt: skip
    else:
        top = high if high is not None else opt.top()
        value = box.number_input(
            opt.label,
            int(opt.low),
            int(top),
            step=int(opt.step or 1),
            key=key,
            help=opt.help or None,
            disabled=disabled,
        )
    state.remember({name: value})
    return value


def augmentation_fields(
    columns: int = 5, *, with_toggle: bool = True, with_views: bool = False
) -> dict[str, Any]:
    """The augmentation settings (flip, rotation, zoom, contrast, shift), shared by the Dataset
    page's preview and the Train page; returns them with `augment`."""
    values: dict[str, Any] = {}
    if with_toggle:
        values["augment"] = field("augment")
    cols = st.columns(columns)
    for i, name in enumerate(AUGMENTATION):
        values[name] = field(name, cols[i % columns])
    if with_views:
        values["augmented_views"] = field("augmented_views", disabled=not values.get("augment", True))
    return values


def _weights(container: Any, spec: registry.BaseSpec) -> str:
    """The weights choice; "A weights file…" asks for an upload (or a server path) checked first."""
    labels = dict(OPTIONS["weights"].labels or {})
    if spec.bundled is None:
        labels.pop("bundled", None)
    labels[WEIGHTS_FILE] = "A weights file…"
    choice = field("weights", container, choices=list(labels), labels=labels)
    if choice != WEIGHTS_FILE:
        return choice
    if not settings.allow_model_uploads():
        container.warning(
            "Weights files can't be used on this shared demo: ImageNet or bundled weights are used."
        )
        return "auto"
    path = ""
    upload = container.file_uploader(
        "A .h5 / .weights.h5 file for this base",
        type=["h5"],
        key="cfg_weights_upload",
        max_upload_size=settings.max_model_mb(),
    )
    if settings.allow_server_folders():
        path = container.text_input("…or its path on the server", key="cfg_weights_path")
    if upload is not None:
        try:
            path = str(state.saved_upload(upload.name, upload.getvalue()))
            safety.check_weights_file(path)
        except UserError as exc:
            container.error(str(exc))
            return "auto"
    return path or "auto"


def train_form(root: Path, scan: Scan) -> TrainConfig:
    """The Train page's settings as a TrainConfig (unchecked: TrainConfig.check says what's wrong)."""
    c1, c2, c3 = st.columns(3)
    base = field("base", c1)
    spec = registry.get_base(base)
    c1.caption(md_escape(spec.summary))
    weights = _weights(c2, spec)
    sizes = size_choices(spec, settings.max_image_size())
    if st.session_state.get("_cfg_last_base") != base:  # a new base starts at its own size
        st.session_state[state.widget_key("image_size")] = (
            spec.default_size if spec.default_size in sizes else sizes[0]
        )
        st.session_state["_cfg_last_base"] = base
    size = field("image_size", c3, choices=sizes)

    c1, c2, c3, c4 = st.columns(4)
    epochs = field("epochs", c1)
    values = {
        "epochs": epochs,
        "batch_size": field("batch_size", c2),
        "lr": field("lr", c3),
        "optimizer": field("optimizer", c4),
    }
    with st.container(border=True):
        st.markdown("**Augmentation** (the Dataset page shows a preview of these settings)")
        values.update(augmentation_fields(with_views=True))
    with st.expander("More settings"):
        a1, a2, a3 = st.columns(3)
        for i, name in enumerate(
            ("pooling", "hidden_units", "dropout", "label_smoothing", "class_weights", "early_stopping")
        ):
            values[name] = field(name, (a1, a2, a3)[i % 3])
        a1, a2, a3 = st.columns(3)
        values["target_val_accuracy"] = field("target_val_accuracy", a1)
        values["seed"] = field("seed", a2)
        if spec.cut_layers:
            cut = field("cut_layer", a3, choices=[None, *spec.cut_layers], labels={None: "(full base)"})
        else:
            cut = None
        st.markdown("**Fine-tuning** (after the head is trained: unfreeze the top of the base)")
        b1, b2, b3 = st.columns(3)
        for column, name in zip(
            (b1, b2, b3), ("fine_tune_layers", "fine_tune_epochs", "fine_tune_lr"), strict=True
        ):
            values[name] = field(name, column)
        st.caption(
            "Measured on our test sets, fine-tuning rarely adds accuracy and costs much more time: off by default."
        )
    return TrainConfig(
        data_dir=str(root),
        base=base,
        weights=weights,
        image_size=int(size),
        cut_layer=cut,
        val_fraction=scan.val_fraction,
        test_fraction=scan.test_fraction,
        **values,
    )
