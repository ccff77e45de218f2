"""The report renders in headless Chromium: something is drawn and every embedded figure loads."""

from __future__ import annotations

import re
from pathlib import Path

from nas.report import build_report
from tests.browser import chromium_page, screenshot_is_blank
from tests.nas.test_report import make_run


def test_report_html_renders_with_every_figure_loaded(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    html_path, _ = build_report(run)
    figures = len(re.findall(r"<img src=\"data:image/png;base64,", html_path.read_text()))
    assert figures == 7
    with chromium_page() as page:
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(html_path.as_uri(), wait_until="load")
        assert page.evaluate("document.images.length") == figures
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        assert widths == [800, 800, 600, 1000, 1000, 700, 800]
        assert page.locator("h2").all_inner_texts()[:2] == ["Summary", "Accuracy and latency"]
        assert not screenshot_is_blank(page.screenshot(full_page=True))
        # self-contained: nothing but the page itself (data: URIs are not requests to a server)
        assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
