"""In a real browser: the Data doctor's map; clicking a point and lasso-selecting points show
exactly those images."""

import re

from tests.browser.conftest import save_screenshot, wait_for_app


def _open_doctor(page, app_url):
    page.goto(app_url + "/Dataset")
    wait_for_app(page)
    page.get_by_role("button", name="Use the sample").click()
    wait_for_app(page)
    page.get_by_text("usable images").first.wait_for()
    page.get_by_role("link", name=re.compile("Open the Data doctor")).click()
    page.get_by_text("images examined").wait_for(timeout=240_000)
    wait_for_app(page)


def test_map_click_and_lasso_show_those_images(app_url, page):
    _open_doctor(page, app_url)
    save_screenshot(page, "doctor-suspects")
    page.get_by_role("tab", name="Map").click()
    points = page.locator(".st-key-doctor_map .js-plotly-plot .scatterlayer .point")
    points.first.wait_for(state="attached", timeout=120_000)
    total = points.count()
    assert total > 100

    # one click: one image
    point = points.nth(7)
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    message = page.get_by_text(re.compile(r"\d+ images? selected on the map"))
    try:
        message.wait_for(timeout=30_000)
    except Exception:
        save_screenshot(page, "doctor-click-failed")
        raise
    wait_for_app(page)
    assert message.inner_text().startswith("1 image selected"), message.inner_text()

    # a lasso around the left half of the map: as many images as points inside it
    plot = page.locator(".st-key-doctor_map .js-plotly-plot .nsewdrag").first
    area = plot.bounding_box()
    x0, y0, w, h = area["x"], area["y"], area["width"], area["height"]
    corners = [(x0 + 2, y0 + 2), (x0 + w / 2, y0 + 2), (x0 + w / 2, y0 + h - 2), (x0 + 2, y0 + h - 2)]
    inside = 0
    for i in range(total):
        b = points.nth(i).bounding_box()
        if (
            b
            and x0 + 2 < b["x"] + b["width"] / 2 < x0 + w / 2
            and y0 + 2 < b["y"] + b["height"] / 2 < y0 + h - 2
        ):
            inside += 1
    assert 0 < inside < total
    page.locator('.st-key-doctor_map .modebar-btn[data-title="Lasso Select"]').click()
    page.mouse.move(*corners[0])
    page.mouse.down()
    for x, y in [*corners[1:], corners[0]]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    page.get_by_text(f"{inside} images selected on the map").wait_for(timeout=60_000)
    wait_for_app(page)
    # the caption arrives before its images (Streamlit streams the gallery): wait for them to come
    expected = min(inside, 60)
    try:
        page.wait_for_function(
            f"() => document.querySelectorAll('[data-testid=\"stImage\"]').length >= {expected}",
            timeout=60_000,
        )
    except Exception:
        save_screenshot(page, "doctor-lasso-failed")
    shown = page.locator('[data-testid="stImage"]')
    assert shown.count() >= expected
    save_screenshot(page, "doctor-map")
