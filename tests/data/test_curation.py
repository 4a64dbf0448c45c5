"""Curation: decisions stored in the app's own store, applied by the scan, training's items and the
stored evaluation key; undo; CSV round trip; the user's files never touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lib.data import curation
from lib.data.scan import health_report, load_scan, scan
from lib.errors import UserError
from lib.train.items import training_data
from tests.doctor.conftest import folder_hash


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def data(tmp_path, tiny_dataset) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


def test_decisions_apply_to_the_scan_and_training_and_undo(data):
    before = folder_hash(data)
    assert (
        curation.decide(data, [("red/red_000.png", "relabel", "blue"), ("green/green_001.png", "exclude")])
        == 2
    )
    assert curation.decide(data, [("blue/blue_002.png", "keep")]) == 1
    result = scan(data)
    m = result.manifest.set_index("relpath")
    assert m.at["red/red_000.png", "class"] == "blue" and m.at["red/red_000.png", "given_class"] == "red"
    assert not m.at["green/green_001.png", "usable"]
    assert m.at["blue/blue_002.png", "decision"] == "keep" and m.at["blue/blue_002.png", "usable"]
    kinds = {p["kind"] for p in health_report(result)["problems"]}
    assert {"excluded", "relabeled"} <= kinds
    items = training_data(load_scan(data))
    assert "green/green_001.png" not in items.relpaths
    assert items.classes[items.labels[items.relpaths.index("red/red_000.png")]] == "blue"
    raw = scan(data, curated=False).manifest.set_index("relpath")
    assert raw.at["red/red_000.png", "class"] == "red" and raw.at["green/green_001.png", "usable"]
    # undo takes back the last batch only
    assert curation.undo(data) == 1
    assert "blue/blue_002.png" not in curation.decisions(data)
    assert curation.undo(data) == 2 and curation.decisions(data) == {}
    assert curation.undo(data) == 0
    assert scan(data).manifest["usable"].all()
    assert folder_hash(data) == before, "the user's files are never touched"
    assert not any(p.name.endswith(".json") for p in data.rglob("*"))


def test_the_store_is_keyed_by_the_dataset(data, tmp_path, tiny_dataset):
    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    curation.decide(data, [("red/red_000.png", "exclude")])
    assert curation.decisions(other) == {}
    assert curation.fingerprint(data) and curation.fingerprint(other) == ""
    assert curation.location(data) != curation.location(other)


def test_csv_round_trip_and_checks(data, tmp_path):
    curation.decide(data, [("red/red_000.png", "relabel", "blue"), ("green/green_001.png", "exclude")])
    path = tmp_path / "d.csv"
    path.write_bytes(curation.to_csv(curation.decisions(data)))
    back = curation.read_file(path)
    assert {(d.path, d.action, d.label) for d in back} == {
        ("red/red_000.png", "relabel", "blue"),
        ("green/green_001.png", "exclude", ""),
    }
    result = scan(data, curated=False)
    rel = set(result.usable["relpath"])
    curation.check(data, back, rel, result.classes)
    with pytest.raises(UserError, match="not a usable image"):
        curation.check(data, [curation.Decision("nope.png", "exclude")], rel, result.classes)
    with pytest.raises(UserError, match="classes are"):
        curation.check(data, [curation.Decision("red/red_000.png", "relabel", "purple")], rel, result.classes)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        curation.read_file(bad)


def test_a_damaged_store_reads_as_no_decisions(data):
    curation.decide(data, [("red/red_000.png", "exclude")])
    curation.location(data).write_text("garbage")
    assert curation.decisions(data) == {}
    assert scan(data).manifest["usable"].all()


def test_excluding_everything_never_empties_the_dataset(data):
    result = scan(data, curated=False)
    curation.decide(data, [(r, "exclude") for r in result.usable["relpath"]])
    assert len(scan(data).usable) == len(result.usable)
