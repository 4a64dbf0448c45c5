"""lib.train.config: TrainConfig's options are the single source of the form, the CLI and the check."""

from __future__ import annotations

import json
import re
from dataclasses import fields

import pytest

from lib import vocab
from lib.errors import UserError
from lib.models.registry import BASES
from lib.train.config import TrainConfig, offline_retry, options


def test_every_field_has_an_option_with_words():
    names = [f.name for f in fields(TrainConfig)]
    described = [f.name for f, _ in options()]
    assert described == names
    for f, opt in options():
        assert opt.label, f.name
        assert opt.widget in ("select", "slider", "number", "toggle", "steps", "text"), f.name


def test_choice_lists_come_from_the_vocabulary_and_the_registry():
    opts = {f.name: opt for f, opt in options()}
    assert opts["flip"].choices == tuple(vocab.FLIPS) and "horizontal_and_vertical" in vocab.FLIPS
    assert opts["optimizer"].choices == tuple(vocab.OPTIMIZERS)
    assert opts["pooling"].choices == tuple(vocab.POOLINGS)
    assert opts["weights"].choices == tuple(vocab.WEIGHTS)
    assert opts["base"].choices == tuple(BASES)


BASE_DEPENDENT = ("image_size", "cut_layer")  # see test_sizes_and_cut_layers_follow_the_base


@pytest.mark.parametrize(
    "name", [f.name for f, opt in options() if opt.form and f.name not in BASE_DEPENDENT]
)
def test_every_value_the_form_offers_passes_the_check(name):
    """The page can never offer a value the config then refuses."""
    f, opt = next((f, o) for f, o in options() if f.name == name)
    if opt.choices:
        values = list(opt.choices)
    elif opt.widget == "toggle":
        values = [True, False]
    else:
        kind = type(f.default)
        values = [kind(opt.low), kind(opt.top())]
    for value in values:
        TrainConfig(data_dir="/d", **{name: value}).check()


def test_sizes_and_cut_layers_follow_the_base():
    for spec in BASES.values():
        for size in spec.sizes:
            TrainConfig(data_dir="/d", base=spec.name, image_size=size, weights="none").check()
        for cut in spec.cut_layers:
            TrainConfig(data_dir="/d", base=spec.name, cut_layer=cut, weights="none").check()
    with pytest.raises(UserError, match="can't be cut at 'mixed7'"):
        TrainConfig(data_dir="/d", base="MobileNetV2", cut_layer="mixed7").check()


def test_weights_default_to_auto_and_the_offline_retry_uses_the_bundled_backbone():
    assert TrainConfig().weights == "auto"
    retry = offline_retry(
        TrainConfig(data_dir="/d", base="EfficientNetB0", weights="imagenet", image_size=260)
    )
    assert (retry.base, retry.weights, retry.image_size) == ("MobileNetV2", "bundled", 160)
    assert offline_retry(TrainConfig(data_dir="/d", weights="imagenet", image_size=224)).image_size == 224


def test_a_run_config_file_reproduces_the_run(tmp_path):
    config = TrainConfig(data_dir="/d", base="ResNet50", lr=3e-4, augment=True, flip="vertical")
    (tmp_path / "config.json").write_text(json.dumps({**config.to_dict(), "classes": ["a"], "name": "x"}))
    assert TrainConfig.from_file(tmp_path) == config == TrainConfig.from_file(tmp_path / "config.json")
    with pytest.raises(UserError, match="cannot be read"):
        TrainConfig.from_file(tmp_path / "missing.json")


def test_hosted_caps_are_enforced_by_the_config_not_only_the_widgets(monkeypatch):
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    ok = TrainConfig(data_dir="/d", epochs=30, image_size=224, augmented_views=5, hidden_units=1024)
    ok.check()
    for field, value, words in (
        ("epochs", 31, "Epochs can be at most 30 on this shared demo"),
        ("image_size", 256, "Image size (px) can be at most 224"),
        ("augmented_views", 6, "Augmented views per image can be at most 5"),
        ("hidden_units", 2048, "Hidden layer units (0 = none) can be at most 1,024"),
        ("fine_tune_epochs", 11, "Fine-tuning epochs can be at most 10"),
        ("fine_tune_layers", 101, "Layers to unfreeze can be at most 100"),
    ):
        with pytest.raises(UserError, match=re.escape(words)):
            TrainConfig(data_dir="/d", **{"epochs": 30, field: value}).check()
    monkeypatch.setenv("STUDIO_MAX_EPOCHS", "3")
    with pytest.raises(UserError, match="at most 3"):
        TrainConfig(data_dir="/d", epochs=4).check()
    opts = {f.name: o for f, o in options()}
    assert opts["epochs"].top() == 3 and opts["hidden_units"].top() == 1024  # what the form offers
