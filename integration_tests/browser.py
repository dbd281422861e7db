"""Open a local HTML page in the system's headless Chromium with Playwright, and say what it drew.

The browser is the OS package's (``apt-get install -y chromium``), driven through
``executable_path``: ``playwright install`` downloads a browser build of its own, which this
project's machines cannot fetch. Every request that is not the page's own file is blocked and
recorded, so a page that would fetch something over the network shows it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get install -y chromium"


def find_chromium() -> str | None:
    """``$PARTITA_CHROMIUM``, else the first Chromium on PATH."""
    chosen = os.environ.get("PARTITA_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Rendered:
    plots: int  # .js-plotly-plot elements: figures plotly drew
    svgs: int  # .main-svg elements (two or three per figure)
    bars: dict[str, int]  # bar shapes in each figure, by div id
    hover: str  # the tooltip text after hovering the first timeline bar
    console_errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # requests to anything but the file


def render(
    page_file: Path,
    *,
    chromium: str,
    figures: int,
    screenshot: Path,
    hover_figure: str,
    timeout_s: float = 30.0,
) -> Rendered:
    """Load ``page_file``, wait until ``figures`` plotly figures are drawn, hover the first bar
    of ``hover_figure``, and write a full-page PNG to ``screenshot``."""
    from playwright.sync_api import Route, sync_playwright

    errors: list[str] = []
    blocked: list[str] = []
    page_url = page_file.resolve().as_uri()

    def only_the_file(route: Route) -> None:
        url = route.request.url
        # The file itself, and the data: and blob: URLs plotly makes in the page.
        if url == page_url or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(timeout_s * 1000)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.route("**/*", only_the_file)
            page.goto(page_url, wait_until="load")
            page.wait_for_function(
                "n => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n "
                "&& document.querySelectorAll('.js-plotly-plot').length >= n",
                arg=figures,
            )
            plots = page.locator(".js-plotly-plot").count()
            svgs = page.locator(".js-plotly-plot .main-svg").count()
            bars = page.evaluate(
                "() => Object.fromEntries([...document.querySelectorAll('.js-plotly-plot')]"
                ".map(d => [d.id, d.querySelectorAll('.barlayer .point path').length]))"
            )
            hover = ""
            first_bar = page.locator(f"#{hover_figure} .barlayer .point path").first
            if first_bar.count():
                first_bar.hover(force=True)
                tooltip = page.locator(f"#{hover_figure} .hoverlayer .hovertext")
                tooltip.first.wait_for(state="attached")
                hover = tooltip.first.text_content() or ""
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return Rendered(plots, svgs, bars, hover, errors, blocked)
