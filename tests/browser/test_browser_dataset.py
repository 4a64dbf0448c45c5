"""In a real browser: open the app, pick the bundled sample and see the class chart."""

from tests.browser.conftest import save_screenshot, wait_for_app


def test_pick_sample_and_see_class_chart(app_url, page, tmp_path):
    page.goto(app_url)
    wait_for_app(page)
    page.get_by_role("link", name="1 · Dataset").first.click()
    page.wait_for_url("**/Dataset")
    wait_for_app(page)
    page.get_by_text("No dataset yet").wait_for()
    page.get_by_role("button", name="Use the sample").click()
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for(timeout=120_000)
    wait_for_app(page)
    # three class bars labelled with readable names, and the baseline sentence
    ticks = [t.text_content() for t in page.locator(".js-plotly-plot .xtick text").all()]
    assert {"Angular leaf spot", "Bean rust", "Healthy"} <= set(ticks), ticks
    assert page.get_by_text("would be right").count() >= 1
    save_screenshot(page, "dataset")
