"""Headless Chromium (Debian's, driven by Playwright) on pages of other origins that follow
a Sluice run with a plain browser EventSource.

Usage: python watch.py ALLOWED_PAGE DENIED_PAGE SCREENSHOT_DIR. Each page URL carries the
stream to open in `?src=`. Prints one JSON object: what the allowed page saw (every event
with its type, id and data, how many times the stream opened) and what the denied page
saw. Asserts nothing: the Rust test (tests/browser/mod.rs) does.
"""

import json
import os
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("SLUICE_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60000


def main():
    allowed, denied, shots = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(shots, exist_ok=True)
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page()
        page.goto(allowed)
        page.wait_for_function("window.follow && window.follow.done", timeout=WAIT_MS)
        out["allowed"] = page.evaluate("window.follow")
        page.screenshot(path=os.path.join(shots, "cross-origin-stream.png"), full_page=True)

        other = browser.new_page()
        other.goto(denied)
        other.wait_for_function("window.follow && window.follow.errors > 0", timeout=WAIT_MS)
        other.wait_for_timeout(1000)
        out["denied"] = other.evaluate("window.follow")
        browser.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
