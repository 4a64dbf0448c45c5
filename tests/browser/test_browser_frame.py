"""In a real browser, on a freshly started server: a visitor whose first request is a page's own
address (a bookmarked /Dataset?ws=...) gets the whole frame, not the bare page. Streamlit 1.x starts in
its old multipage mode when a folder named pages/ sits beside the entry, and ran such a page alone
(no sidebar, no workspace note, no start-up clean-up, no demo model prepared) until someone opened the
home page; lib.ui leaves that mode and reruns through the frame."""

from tests.browser.conftest import running_app, wait_for_app


def test_a_page_opened_by_its_address_on_a_fresh_server_has_the_frame(tmp_path, page):
    with running_app(tmp_path, STUDIO_HOSTED="1") as url:
        page.goto(url + "/Dataset?ws=forged-by-a-stranger")
        wait_for_app(page)
        page.get_by_role("button", name="Use the sample").wait_for()
        links = page.locator('[data-testid="stSidebar"] a')
        links.first.wait_for()
        texts = links.all_inner_texts()  # "🏋️\n\n2 · Train": icon, then the title
        for title in ("Home", "1 · Dataset", "2 · Train", "3 · Evaluate", "4 · Predict"):
            assert any(t.strip().endswith(title) for t in texts), (title, texts)
        page.get_by_text("Your workspace is private to this link").wait_for()
        assert "ws=" in page.url and "forged-by-a-stranger" not in page.url
