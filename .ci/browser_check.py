"""Load the built documentation site in headless Chromium and fail on anything broken.

`mkdocs build --strict` proves that every page and reference entry renders; it
cannot tell whether the site works in a browser: a script that throws, a
stylesheet or a font fetched from the internet (the site must work offline,
and CI has no internet), a 404 for an asset, a search index the search's web
worker cannot load. This script serves the built site on 127.0.0.1 (Python's
http.server, in a thread of this process), opens the home page, the tutorial
and an API reference page in Chromium driven by Playwright, types a word into
Material's search box and waits for results, and fails, naming each problem,
on:

* a console error or an uncaught page error;
* a request that fails, or a response with status >= 400;
* a request to any other host than the local server;
* a page without the content it should show;
* a link on a checked page to a page of the site that does not answer.

It saves a screenshot of each page (and of the search results) so that a
person can look at them. Usage (after `mkdocs build --strict`):

    python .ci/browser_check.py [--site site] [--screenshots site-screenshots]
                                [--chromium /usr/bin/chromium]

Playwright's own browser download needs the internet, so this uses the
system's Chromium (Debian's `chromium` package) through `executable_path`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import ConsoleMessage, Page, Request, Response, sync_playwright

#: What each checked page must show: its path, a CSS selector that must be
#: visible, and the text that element must contain.
PAGES = (
    ("home", "/", "article h1", "gpupool"),
    ("tutorial", "/tutorial/", "article h1", "Tutorial"),
    ("api-pool", "/reference/pool/", "[id='gpupool.GPUResourcePool']", "GPUResourcePool"),
    # The picture of a demo run that .ci/docs_pictures.sh drew: it must load.
    ("journal-picture", "/journal/#pictures-of-a-run", "img[src$='demo_run.svg']", ""),
)
#: A word the search must find, and a page its results must include.
SEARCH_WORD = "backfill"
SEARCH_EXPECTS = "Scheduling"

#: Chromium's flags for a headless run as root, with nothing talking to Google.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
TIMEOUT_MS = 30_000


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve ``site`` on 127.0.0.1 at a free port for the duration; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Problems:
    """What went wrong, each with the page it happened on."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.where = "(no page yet)"
        self.found: list[str] = []

    def add(self, what: str) -> None:
        self.found.append(f"{self.where}: {what}")

    def watch(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.add(f"page error: {error}"))
        page.on("request", self._on_request)
        page.on("requestfailed", self._on_request_failed)
        page.on("response", self._on_response)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.add(f"console error: {message.text} (at {message.location.get('url', '?')})")

    def _on_request(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob"):
            return
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            self.add(f"request to another host: {request.url}")

    def _on_request_failed(self, request: Request) -> None:
        self.add(f"request failed: {request.url} ({request.failure})")

    def _on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.add(f"HTTP {response.status} for {response.url}")


def check_page(
    page: Page, problems: Problems, base: str, shots: Path, page_spec: tuple[str, str, str, str]
) -> None:
    name, path, selector, text = page_spec
    problems.where = path
    page.goto(base + path, wait_until="networkidle")
    element = page.locator(selector).first
    if not element.is_visible():
        problems.add(f"{selector!r} is not visible")
    elif text not in element.inner_text():
        problems.add(f"{selector!r} does not contain {text!r}: {element.inner_text()!r}")
    page.screenshot(path=str(shots / f"{name}.png"))
    check_links(page, problems)


def check_links(page: Page, problems: Problems) -> None:
    """Every link of the page into the site answers (the reference links to the guide too)."""
    hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
    targets = {href.split("#", 1)[0] for href in hrefs if href.startswith(problems.origin)}
    for target in sorted(targets):
        response = page.request.get(target)
        if response.status >= 400:
            problems.add(f"link to {target} answers HTTP {response.status}")


def check_search(page: Page, problems: Problems, base: str, shots: Path) -> None:
    """Material's search: its worker loads search_index.json and answers offline."""
    problems.where = "search"
    page.goto(base + "/", wait_until="networkidle")
    box = page.locator("input.md-search__input")
    box.click()  # on a wide screen the box is in the header; the click opens the search
    box.press_sequentially(SEARCH_WORD)
    results = page.locator(".md-search-result__item")
    try:
        results.first.wait_for(state="visible", timeout=TIMEOUT_MS)
    except Exception:  # Playwright's TimeoutError: report it as a problem, not a crash
        problems.add(f"no search results for {SEARCH_WORD!r}")
    else:
        titles = page.locator(".md-search-result__item h1").all_inner_texts()
        if not any(SEARCH_EXPECTS in title for title in titles):
            problems.add(f"search for {SEARCH_WORD!r} does not list {SEARCH_EXPECTS!r}: {titles}")
    page.screenshot(path=str(shots / "search.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--site", type=Path, default=Path("site"), help="the built site (mkdocs build)"
    )
    parser.add_argument("--screenshots", type=Path, default=Path("site-screenshots"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        parser.error(f"--site {args.site} has no index.html: run `mkdocs build --strict` first")
    args.screenshots.mkdir(parents=True, exist_ok=True)

    with (
        serve(args.site) as base,
        sync_playwright() as playwright,
        tempfile.TemporaryDirectory() as profile,
    ):
        problems = Problems(base)
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=args.chromium,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            page = context.new_page()
            problems.watch(page)
            for page_spec in PAGES:
                check_page(page, problems, base, args.screenshots, page_spec)
            check_search(page, problems, base, args.screenshots)
        finally:
            context.close()

    shots = ", ".join(sorted(p.name for p in args.screenshots.glob("*.png")))
    if problems.found:
        print(f"browser check: {len(problems.found)} problem(s):", file=sys.stderr)
        for problem in problems.found:
            print(f"  {problem}", file=sys.stderr)
        print(f"screenshots in {args.screenshots}/: {shots}", file=sys.stderr)
        return 1
    checked = ", ".join(path for _, path, _, _ in PAGES)
    print(
        f"browser check: {checked} and the search work; screenshots in {args.screenshots}/: {shots}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
