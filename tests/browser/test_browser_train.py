"""In a real browser: pick the sample, press Start with the default settings (weights auto: no
internet here, so the bundled backbone), see it finish and say which weights it used."""

from tests.browser.conftest import save_screenshot, wait_for_app


def test_train_on_the_sample_with_the_bundled_backbone(app_url, page):
    page.goto(app_url + "/Dataset")
    wait_for_app(page)
    page.get_by_role("button", name="Use the sample").click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    page.locator('[data-testid="stSidebar"] a', has_text="2 · Train").click()
    page.get_by_role("button", name="Start training").wait_for(timeout=120_000)
    wait_for_app(page)
    page.get_by_text("Estimated time: about").wait_for()
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Finished in").wait_for(timeout=240_000)
    assert page.get_by_text("validation accuracy").count() >= 1
    assert page.get_by_text("bundled offline MobileNetV2 backbone").count() >= 1
    save_screenshot(page, "train")
