"""lib.evaluate.metrics against hand-computed cases (pure numpy/pandas)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lib.evaluate import metrics as ev

ACTUAL = ["cat", "cat", "cat", "dog", "dog", "bird"]
PREDICTED = ["cat", "dog", "cat", "dog", "cat", "dog"]
CLASSES = ["cat", "dog", "bird"]


def test_confusion_matrix_rows_are_actual_in_class_order():
    cm = ev.confusion_matrix(ACTUAL, PREDICTED, CLASSES)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    norm = ev.normalize_rows(cm)
    np.testing.assert_allclose(norm, [[2 / 3, 1 / 3, 0], [0.5, 0.5, 0], [0, 1, 0]])
    assert ev.normalize_rows(np.zeros((2, 2))).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError):
        ev.confusion_matrix(["cat"], ["cow"], CLASSES)


def test_metrics_hand_computed_with_a_class_never_predicted():
    m = ev.compute_metrics(ACTUAL, PREDICTED, CLASSES)
    assert m["n_images"] == 6 and m["correct"] == 3 and m["incorrect"] == 3
    assert m["accuracy"] == pytest.approx(0.5)
    pc = m["per_class"]
    assert pc["cat"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert pc["dog"] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})
    # bird is never predicted: precision 0 by convention, not NaN
    assert pc["bird"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_avg"] == pytest.approx({"precision": 1 / 3, "recall": 7 / 18, "f1": (2 / 3 + 0.4) / 3})
    assert m["weighted_avg"] == pytest.approx({"precision": 8 / 18, "recall": 0.5, "f1": 2.8 / 6})
    assert m["majority_baseline"] == {"class": "cat", "accuracy": 0.5}
    assert m["top_k_accuracy"] == {}
    json.dumps(m)  # JSON-ready, no numpy types
    flat = [v for c in pc.values() for v in c.values()] + list(m["macro_avg"].values())
    assert all(math.isfinite(v) for v in flat)


def test_one_class_split():
    m = ev.compute_metrics(["cat", "cat", "cat"], ["cat", "cat", "dog"], ["cat", "dog"])
    assert m["confusion_matrix"] == [[2, 1], [0, 0]]
    assert m["per_class"]["cat"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert m["per_class"]["dog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["majority_baseline"] == {"class": "cat", "accuracy": 1.0}
    assert m["confusion_matrix_normalized"][1] == [0.0, 0.0]
    # all correct: the absent class is left out of the macro average
    perfect = ev.compute_metrics(["cat"] * 4, ["cat"] * 4, ["cat", "dog"])
    assert perfect["accuracy"] == 1.0 and perfect["macro_avg"]["f1"] == 1.0
    empty = ev.compute_metrics([], [], ["cat", "dog"])
    assert empty["accuracy"] == 0.0 and empty["majority_baseline"]["class"] is None


def test_most_missed_pairs_sorted_by_count():
    actual = ["Cat"] * 14 + ["Dog"] * 5 + ["Fox"] * 3
    predicted = ["Dog"] * 12 + ["Cat"] * 2 + ["Fox"] * 3 + ["Dog"] * 2 + ["Cat"] * 3
    pairs = ev.most_missed(
        ev.confusion_matrix(actual, predicted, ["Cat", "Dog", "Fox"]), ["Cat", "Dog", "Fox"]
    )
    assert [p["text"] for p in pairs] == [
        "Cat predicted as Dog: 12",
        "Dog predicted as Fox: 3",
        "Fox predicted as Cat: 3",
    ]
    assert ev.most_missed(np.eye(3, dtype=int), ["a", "b", "c"]) == []


def test_top_k_accuracy_and_majority_baseline():
    probs = np.array(
        [
            [0.5, 0.3, 0.1, 0.1],  # actual 1: second -> top-2 yes, top-1 no
            [0.1, 0.2, 0.3, 0.4],  # actual 0: last -> top-3 no
            [0.7, 0.1, 0.1, 0.1],  # actual 0: top-1 yes
        ]
    )
    actual = [1, 0, 0]
    assert ev.top_k_accuracy(probs, actual, 1) == pytest.approx(1 / 3)
    assert ev.top_k_accuracy(probs, actual, 2) == pytest.approx(2 / 3)
    assert ev.top_k_accuracy(probs, actual, 3) == pytest.approx(2 / 3)
    assert ev.top_k_accuracy(probs, actual, 4) == pytest.approx(1.0)
    assert ev.top_k_values(3) == [] and ev.top_k_values(4) == [3] and ev.top_k_values(6) == [3, 5]
    m = ev.compute_metrics(["b", "a", "a"], ["a", "d", "a"], ["a", "b", "c", "d"], probs)
    assert m["top_k_accuracy"] == {"3": pytest.approx(2 / 3)}
    # ties go to the first class in class order
    assert ev.majority_baseline(["b", "a", "b", "a"], ["a", "b"]) == {"class": "a", "accuracy": 0.5}


def test_the_majority_guess_can_come_from_the_training_labels():
    # The Dataset page's baseline: the most common training class, scored on validation.
    found = ev.majority_baseline(["a", "b", "b"], ["a", "b"], reference=["a", "a", "a", "b"])
    assert found == {"class": "a", "accuracy": pytest.approx(1 / 3)}
    assert ev.majority_baseline([], ["a"], reference=["a"]) == {"class": "a", "accuracy": 0.0}


def test_per_class_table_follows_the_metrics():
    m = ev.compute_metrics(ACTUAL, PREDICTED, CLASSES)
    table = ev.per_class_table(m, ["Cat", "Dog", "Bird"])
    assert table["label"].tolist() == ["Cat", "Dog", "Bird"] and table["support"].tolist() == [3, 2, 1]
