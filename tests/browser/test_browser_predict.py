"""In a real browser: upload photos on the Predict page and read the verdicts, at laptop and phone width."""

import re

from lib import settings
from tests.browser.conftest import save_screenshot, wait_for_app

VERDICT = re.compile(r"(% sure|Not sure: could be)")


def _upload(page, app_url, files):
    page.goto(app_url + "/Predict")
    wait_for_app(page)
    page.get_by_text("This model knows 3 kinds").wait_for()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files)


def test_upload_photos_and_a_bad_file_see_verdicts(app_url, page, tmp_path):
    photo = next((settings.sample_dir() / "test" / "healthy").glob("*.jpg"))
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    _upload(page, app_url, [str(photo), str(bad)])
    verdict = page.locator('[data-testid="stAlert"]').filter(has_text=VERDICT)
    verdict.first.wait_for(timeout=120_000)
    wait_for_app(page)
    page.locator('[data-testid="stAlert"]').filter(
        has_text=re.compile(r"notes\.jpg.*not an image", re.I)
    ).wait_for()
    heat = page.get_by_text("Red: where the model looked most")
    heat.wait_for(timeout=120_000)  # the heat map's first use traces its graph: it may come after the verdict
    wait_for_app(page)
    assert heat.count() == 1
    save_screenshot(page, "predict")


def test_predict_page_at_phone_width(app_url, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    photo = next((settings.sample_dir() / "test" / "bean_rust").glob("*.jpg"))
    _upload(page, app_url, [str(photo)])
    page.locator('[data-testid="stAlert"]').filter(has_text=VERDICT).first.wait_for(timeout=120_000)
    wait_for_app(page)
    # nothing wider than the phone's screen
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= 400, overflow
    save_screenshot(page, "predict-phone")
    context.close()


def test_a_photo_of_something_else_gets_the_third_verdict(app_url, page, tmp_path):
    from PIL import Image

    from lib.evaluate import foreign

    leaf = next((settings.sample_dir() / "test" / "healthy").glob("*.jpg"))
    screen = tmp_path / "screenshot.png"
    Image.fromarray(foreign.screenshot(0)).save(screen)
    noise = tmp_path / "noise.png"
    Image.fromarray(foreign.noise(0)).save(noise)
    _upload(page, app_url, [str(leaf), str(screen), str(noise)])
    unknown = page.locator('[data-testid="stAlert"]').filter(has_text="doesn't look like any of the 3 kinds")
    unknown.nth(1).wait_for(timeout=120_000)  # the screenshot and the noise
    page.locator('[data-testid="stAlert"]').filter(has_text=VERDICT).first.wait_for(timeout=120_000)
    page.get_by_text("Stranger than").nth(1).wait_for()
    wait_for_app(page)
    assert unknown.count() == 2
    assert "Closest:" in unknown.first.inner_text()
    page.get_by_text("Red: where the model looked most").nth(2).wait_for(timeout=120_000)  # every photo shown
    wait_for_app(page)
    save_screenshot(page, "predict-unknown")


def test_evaluate_checks_other_photos(app_url, page):
    page.goto(app_url + "/Evaluate")
    wait_for_app(page)
    page.get_by_text("How does it handle other photos?").wait_for()
    page.get_by_role("button", name="Check these photos").click()
    page.get_by_text("Other photos caught").wait_for(timeout=120_000)
    wait_for_app(page)
    page.get_by_text("How does it handle other photos?").scroll_into_view_if_needed()
    assert page.get_by_text(re.compile(r"Caught \d+ of 24 other photos")).count() == 1
    save_screenshot(page, "evaluate-other-photos")
