"""In a real browser: click a confusion-matrix cell; the table and the CSV hold exactly that cell."""

import io

import pandas as pd

from lib import runs
from lib.evaluate import metrics, predictions
from lib.text import readable_label
from tests.browser.conftest import save_screenshot, wait_for_app


def test_click_confusion_cell_filters_table_and_csv(app_url, app_home, sample_run, page):
    run_dir = app_home / "models" / sample_run.name
    classes = runs.read_run(run_dir).classes
    df = predictions.predict_split(run_dir, split="test")
    cm = metrics.confusion_matrix(df["actual"], df["predicted"], classes)
    n = len(classes)
    # the busiest off-diagonal cell if the model makes mistakes, else the first diagonal one
    off = [(cm[i, j], i, j) for i in range(n) for j in range(n) if i != j and cm[i, j] > 0]
    _, i, j = max(off) if off else (cm[0, 0], 0, 0)
    expected = int(cm[i, j])

    page.goto(app_url + "/Evaluate")
    wait_for_app(page)
    page.get_by_text("Confusion matrix").first.wait_for()
    points = page.locator(".st-key-confusion_matrix .js-plotly-plot .scatterlayer .point")
    points.first.wait_for(state="attached")
    assert points.count() == n * n
    cell = points.nth(i * n + j)
    cell.scroll_into_view_if_needed()
    box = cell.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    message = page.get_by_text("whose actual class is")
    message.wait_for(timeout=60_000)
    wait_for_app(page)
    text = message.inner_text()
    assert f"Showing the {expected} image" in text, text
    assert readable_label(classes[i]) in text and readable_label(classes[j]) in text
    save_screenshot(page, "evaluate-cell")

    with page.expect_download() as info:
        page.get_by_role("button", name="Download these rows (CSV)").click()
    csv = pd.read_csv(io.BytesIO(open(info.value.path(), "rb").read()))
    assert len(csv) == expected
    assert set(csv["actual"]) == {classes[i]} and set(csv["predicted"]) == {classes[j]}

    page.get_by_role("button", name="Show all images").click()
    page.get_by_text(f"{len(df)} images of {len(df)}").wait_for()
