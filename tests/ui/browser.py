"""Headless Chromium (Debian's, driven by Playwright) on Sluice's status page.

Usage: python browser.py BASE_URL SCREENSHOT_DIR. Loads /ui, enqueues a run through the
API while the page is open, and watches the run appear in the recent runs and complete
live; then opens the run's page and reads its output, and checks the page is usable with
the keyboard. Prints one JSON object of what it saw (the Rust test checks it) and leaves
a screenshot of each step in SCREENSHOT_DIR.
"""

import json
import os
import sys
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("SLUICE_TEST_CHROMIUM", "/usr/bin/chromium")
# Chromium under a sandboxless root, without the background traffic a closed network refuses.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 20000


def enqueue(base_url, content):
    body = json.dumps({"provider": "sim", "request": {"messages": [{"role": "user", "content": content}]}})
    request = urllib.request.Request(base_url + "/enqueue", data=body.encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as response:
        return json.load(response)["id"]


def main():
    base_url, shots = sys.argv[1], sys.argv[2]
    os.makedirs(shots, exist_ok=True)
    saw = {"console_errors": []}
    try:
        watch(base_url, shots, saw)
    finally:
        # Whatever happened, what was seen so far (console errors above all) is told.
        print(json.dumps(saw))


def watch(base_url, shots, saw):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: m.type == "error" and saw["console_errors"].append(m.text))
        page.on("pageerror", lambda e: saw["console_errors"].append(str(e)))
        page.goto(base_url + "/ui")
        page.wait_for_selector("#providers td", timeout=WAIT_MS)
        saw["providers"] = page.locator("#providers tbody td:first-child").all_inner_texts()
        saw["status_badge"] = page.locator("#status").inner_text()
        page.screenshot(path=os.path.join(shots, "1-overview.png"), full_page=True)

        run = enqueue(base_url, "hello status page")
        saw["run"] = run
        row = f'#recent tr[data-run="{run}"]'
        page.wait_for_selector(row, timeout=WAIT_MS)
        saw["first_status"] = page.locator(row + " td:nth-child(2)").inner_text()
        page.screenshot(path=os.path.join(shots, "2-run-appears.png"), full_page=True)
        page.wait_for_selector(row + ' td.completed', timeout=WAIT_MS)
        saw["final_status"] = page.locator(row + " td:nth-child(2)").inner_text()
        page.screenshot(path=os.path.join(shots, "3-run-completed.png"), full_page=True)

        # The keyboard reaches the run: Tab to its row, Enter opens its page.
        page.locator(row).focus()
        page.keyboard.press("Enter")
        page.wait_for_selector("#run dl", timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#output pre').textContent.length > 0", timeout=WAIT_MS)
        saw["detail_url"] = page.url
        saw["detail_output"] = page.locator("#output pre").inner_text()
        saw["detail_attempts"] = page.locator("#attempts tbody tr").count()
        page.screenshot(path=os.path.join(shots, "4-run-detail.png"), full_page=True)

        # A phone's width: the page still shows the queues without sideways scrolling.
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(base_url + "/ui")
        phone.wait_for_selector("#providers td", timeout=WAIT_MS)
        saw["phone_overflow"] = phone.evaluate("document.documentElement.scrollWidth > window.innerWidth")
        phone.screenshot(path=os.path.join(shots, "5-phone.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
