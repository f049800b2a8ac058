"""The README's picture of the demo page (docs/demo.png): serve runs as `make demo` does, press
Generate once in headless Chromium (the setup of tests/test_demo_browser.py: Debian's chromium and
chromium-driver) and save what the browser shows.

    python scripts/demo_screenshot.py logs/diffusion/<run> docs/demo.png [--n 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import socket
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from genlab.demo import build_app, launch, load_entries

HEADLESS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars")
HEADLESS += ("--disable-background-networking", "--disable-component-update", "--no-first-run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", help="as make demo's RUN: one or more, separated by commas (the first tab is shot)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=100, help="samples (100: a 10x10 grid, one digit per column)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="1200,860", help="browser window, width,height")
    args = parser.parse_args()

    app = build_app(load_entries(args.runs))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = launch(app, port=port, block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in (*HEADLESS, f"--window-size={args.size}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 600)
        wait.until(lambda c: c.find_element(By.ID, "generate-0").is_displayed())
        for name, value in (("n-0", args.n), ("seed-0", args.seed)):
            field = browser.find_element(By.CSS_SELECTOR, f"#{name} input")
            field.clear()
            field.send_keys(str(value))
        browser.find_element(By.ID, "generate-0").click()
        wait.until(lambda c: c.find_elements(By.CSS_SELECTOR, "#grid-0 img"))
        status = wait.until(lambda c: c.find_element(By.ID, "status-0").text)  # empty until the draw ends
        args.out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(args.out)
        print(f"wrote {args.out} ({status})")
    finally:
        browser.quit()
        app.close()


if __name__ == "__main__":
    main()
