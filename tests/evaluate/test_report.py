"""lib.evaluate.report: one self-contained HTML file and Markdown, every piece of user text escaped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lib.evaluate import predictions as ev
from lib.evaluate.metrics import metrics_from_predictions
from lib.evaluate.report import render_html, render_markdown, write_report
from lib.runs import Run
from lib.text import md_escape
from tests.evaluate.conftest import _image

EVIL_CLASSES = ["<b>x</b>", "![x](http://e/x.png)"]


def _evil_result(tmp_path: Path) -> ev.EvaluationResult:
    img = tmp_path / "![y](http:e.png) <script>.png"
    _image(img, (200, 30, 30), 5)
    paths = [str(img), str(tmp_path / "gone <img src=x onerror=alert(1)>.png"), str(tmp_path / "ok.png")]
    actual = [EVIL_CLASSES[0], EVIL_CLASSES[0], EVIL_CLASSES[1]]
    predicted = [EVIL_CLASSES[1], EVIL_CLASSES[1], EVIL_CLASSES[1]]
    df = pd.DataFrame({"path": paths, "split": "test", "actual": actual, "predicted": predicted})
    df["confidence"] = [0.9, 0.7, 0.8]
    df[f"prob_{EVIL_CLASSES[0]}"] = [0.1, 0.3, 0.2]
    df[f"prob_{EVIL_CLASSES[1]}"] = [0.9, 0.7, 0.8]
    df["correct"] = df["actual"] == df["predicted"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return ev.EvaluationResult(
        predictions=df,
        metrics=metrics_from_predictions(df, EVIL_CLASSES),
        classes=EVIL_CLASSES,
        run=Run(
            path=run_dir, config={"base": "<i>base</i>", "image_size": 32}, note="Hand-made <i>tiny</i> run."
        ),
        split="test",
    )


def test_report_escapes_user_text(tmp_path):
    result = _evil_result(tmp_path)
    page = render_html(result)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page and "<img src=x" not in page and "<i>base</i>" not in page
    assert page.count('src="data:image/jpeg;base64,') == 1  # the readable mistake has a thumbnail
    assert "http://e/x.png" in page and 'src="http' not in page
    assert "predicted as" in page and "width:90.0%" in page  # probability bars

    md = render_markdown(result)
    assert "![" not in md and "](http" not in md and "<b>" not in md and "<script>" not in md
    assert md_escape("![x](http://e/x.png)") == r"\!\[x\]\(http\://e/x\.png\)"
    assert md_escape("a|b\nc") == r"a\|b c" and md_escape("1. x") == r"1\. x" and md_escape("# x") == r"\# x"
    assert "\\<b\\>x\\</b\\> predicted as \\!\\[x\\]" in md
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    assert "<img" not in rendered and "<b>x" not in rendered and "<script" not in rendered
    assert "&lt;b&gt;x&lt;/b&gt; predicted as ![x](http://e/x.png)" in rendered
    assert rendered.count("<table>") == 4  # summary, matrix, per class, mistakes: no cell broke out


def test_report_written_next_to_run(world):
    result = ev.evaluate(world["run3"], split="test")
    paths = write_report(result)
    assert paths == {"html": world["run3"] / "report.html", "markdown": world["run3"] / "report.md"}
    text = paths["html"].read_text()
    assert "Most confident mistakes" in text and "odd_blue.png" in text and "90.0%" in text
    assert "red predicted as blue\\: 1" in paths["markdown"].read_text()  # ":" escaped for Streamlit too


def test_a_hosted_report_names_the_dataset_folder_only(tmp_path, monkeypatch):
    result = _evil_result(tmp_path)
    result.data_dir = tmp_path / "uploads" / "beans-0123" / "beans"
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    for text in (render_html(result), render_markdown(result)):
        assert str(tmp_path) not in text and "beans" in text
    monkeypatch.setenv("STUDIO_HOSTED", "0")
    assert str(result.data_dir) in render_html(result)  # local use: the full folder, as before
