"""The demo page in a real browser: Debian's Chromium, headless, driven through Selenium with Debian's
chromedriver (`apt-get install chromium chromium-driver`; .ci/run installs them). The page serves an
untrained diffusion model (tab 0: sampling from random weights shows the page works) and a tiny
trained GPT loaded from its run folder (tab 1), on a free port of this machine, in a thread."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from selenium import webdriver  # the dev extra installs it, and gradio (the demo extra)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from genlab.config import compose
from genlab.demo import Entry, build_app, launch, load_entries
from genlab.instantiate import instantiate

# --no-sandbox: CI runs as root; no background calls (updates, metrics) from the browser either
HEADLESS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900")
HEADLESS += ("--disable-background-networking", "--disable-component-update", "--no-first-run")
HANG_GUARD = 120  # seconds: only a guard against a hung page; every wait ends as soon as its condition holds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no Chromium and chromedriver on PATH (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # both paths given: Selenium Manager (which downloads) never runs
    for flag in HEADLESS:
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)
    yield chrome
    chrome.quit()


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture
def outside(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every connection this process (the server, its thread, the test) tries beyond this machine:
    refused and recorded."""
    tried, connect = [], socket.socket.connect

    def guarded(self: socket.socket, address) -> None:
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            tried.append(address)
            raise OSError(f"test_demo_browser: no network ({address})")
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return tried


@pytest.fixture
def page(tiny_gpt_run: Path, outside: list) -> Iterator[str]:
    config = compose(["model=diffusion", "model.sample_steps=2"])
    diffusion = Entry("diffusion: untrained", instantiate(config.model).eval(), {"data": {"num_classes": 10}})
    app = build_app([diffusion, *load_entries(str(tiny_gpt_run), "cpu")])
    url = launch(app, port=free_port(), block=False)
    yield url
    app.close()


def status_of(chrome: webdriver.Chrome, tab: int, start: str) -> str:
    """The tab's status line once it starts with `start`."""
    found = WebDriverWait(chrome, HANG_GUARD).until(
        lambda c: (text := c.find_element(By.ID, f"status-{tab}").text).startswith(start) and text
    )
    return found


def set_number(chrome: webdriver.Chrome, element_id: str, value: int) -> None:
    field = chrome.find_element(By.CSS_SELECTOR, f"#{element_id} input")
    field.clear()
    field.send_keys(str(value))


def test_the_page_draws_images_and_texts_and_shows_errors_as_one_line(
    browser: webdriver.Chrome, page: str, outside: list, tmp_path: Path
) -> None:
    browser.get(page)
    wait = WebDriverWait(browser, HANG_GUARD)
    wait.until(lambda c: c.find_element(By.ID, "generate-0").is_displayed())
    set_number(browser, "n-0", 4)
    set_number(browser, "seed-0", 5)
    browser.find_element(By.ID, "generate-0").click()
    image = wait.until(lambda c: c.find_elements(By.CSS_SELECTOR, "#grid-0 img"))[0]
    assert "seed 5" in status_of(browser, 0, "4 images in ")
    assert wait.until(lambda c: image.get_attribute("naturalWidth") not in (None, "0"))  # decoded, not a broken link
    browser.save_screenshot(tmp_path / "images.png")

    set_number(browser, "steps-0", 0)
    browser.find_element(By.ID, "generate-0").click()
    error = status_of(browser, 0, "error: ")
    assert "steps" in error and "\n" not in error and "Traceback" not in browser.page_source
    browser.save_screenshot(tmp_path / "error.png")

    browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'gpt: base')]").click()
    wait.until(lambda c: c.find_element(By.ID, "generate-1").is_displayed())
    set_number(browser, "n-1", 2)
    browser.find_element(By.ID, "generate-1").click()
    assert status_of(browser, 1, "2 texts in ")
    text = browser.find_element(By.CSS_SELECTOR, "#text-1 textarea").get_attribute("value")
    assert text.count("----------") == 1 and len(text) > 20
    browser.save_screenshot(tmp_path / "texts.png")
    assert all((tmp_path / f"{name}.png").stat().st_size > 0 for name in ("images", "error", "texts"))

    # offline: everything the page loaded came from this server (fonts and scripts ship with gradio)
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and {urlparse(u).hostname for u in loaded} == {urlparse(page).hostname}
    assert outside == []  # nor did the server call out (analytics, version checks, share links)
