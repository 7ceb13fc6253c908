"""A real browser for the console's tests: Debian's ``chromium`` driven through Debian's
``chromedriver`` by Selenium, headless.

Nothing is downloaded: the driver and the browser are named by path, and Selenium Manager
(which would otherwise fetch a browser and a driver of its own) is switched off with
``SE_OFFLINE=true``. Screenshots go to ``$RELAYFLEET_ARTIFACTS_DIR/console`` (default
``/tmp/relayfleet-artifacts/console``); their list is reported when the browser closes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: a laptop's window and a phone's (CSS pixels)
LAPTOP = (1366, 900)
PHONE = (390, 844)
ARTIFACTS_ENV = "RELAYFLEET_ARTIFACTS_DIR"
DEFAULT_ARTIFACTS = Path("/tmp/relayfleet-artifacts")


def artifacts_dir(subdir: str = "console") -> Path:
    """Where this run's artifacts of one kind go (created)."""
    root = Path(os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)
    path = root / subdir
    path.mkdir(parents=True, exist_ok=True)
    return path


def browser_available() -> str | None:
    """Why the browser cannot run here (a missing binary), or None when it can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} is missing: run deploy/dev/bootstrap.sh (chromium chromium-driver)"
    return None


class Browser:
    """One headless chromium window on one base URL, with the helpers the tests share."""

    def __init__(self, driver: WebDriver, base_url: str, shots_dir: Path) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.shots_dir = shots_dir
        #: every screenshot taken, in order
        self.shots: list[Path] = []

    # -- navigation ----------------------------------------------------------------
    def open(self, path: str) -> None:
        """Load ``path`` (relative to the base URL) and wait for the document to be ready."""
        self.driver.get(self.base_url + path)
        self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until the current document has loaded."""
        self.wait(lambda: self.js("return document.readyState") == "complete",
                  what="the page to load")

    @property
    def path(self) -> str:
        """The current URL's path and query."""
        url: str = self.driver.current_url
        return url.removeprefix(self.base_url)

    def size(self, width: int, height: int) -> None:
        """Resize the window to ``width`` x ``height`` CSS pixels."""
        self.driver.set_window_size(width, height)

    def laptop(self) -> None:
        """A laptop's window (1366 x 900)."""
        self.size(*LAPTOP)

    def phone(self) -> None:
        """A phone's window (390 x 844)."""
        self.size(*PHONE)

    # -- finding and reading -------------------------------------------------------
    def find(self, css: str) -> WebElement:
        """The first element matching ``css`` (fails if there is none)."""
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        """Every element matching ``css``."""
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def by_label(self, label: str) -> WebElement:
        """The form control a ``<label>`` whose text starts with ``label`` points at (its
        ``for`` attribute, or the control inside it)."""
        pattern = re.compile(rf"^\s*{re.escape(label)}", re.I)
        for element in self.find_all("label"):
            if not pattern.match(element.text):
                continue
            target = element.get_attribute("for")
            if target:
                return self.driver.find_element(By.ID, target)
            inner = element.find_elements(By.CSS_SELECTOR, "input, select, textarea")
            if inner:
                return inner[0]
        raise AssertionError(f"no form control labelled {label!r} on {self.path}: "
                             f"{[e.text for e in self.find_all('label')]}")

    def button(self, text: str) -> WebElement:
        """The visible button (or submit input) whose text starts with ``text``."""
        pattern = re.compile(rf"^\s*{re.escape(text)}", re.I)
        for element in self.find_all("button, input[type=submit]"):
            shown = element.text or element.get_attribute("value") or ""
            if pattern.match(shown) and element.is_displayed():
                return element
        raise AssertionError(f"no button {text!r} on {self.path}: "
                             f"{[b.text for b in self.find_all('button')]}")

    def buttons(self) -> list[str]:
        """The texts of every visible button on the page."""
        return [(b.text or b.get_attribute("value") or "").strip()
                for b in self.find_all("button, input[type=submit]") if b.is_displayed()]

    def links(self) -> dict[str, str]:
        """Every visible link's text -> its path."""
        found: dict[str, str] = {}
        for link in self.find_all("a[href]"):
            if link.is_displayed():
                href = link.get_attribute("href") or ""
                found[link.text.strip()] = href.removeprefix(self.base_url)
        return found

    def text(self, css: str = "body") -> str:
        """The visible text of the first element matching ``css``."""
        value: str = self.find(css).text
        return value

    def js(self, script: str, *args: Any) -> Any:
        """Run ``script`` in the page (``return`` gives its value)."""
        return self.driver.execute_script(script, *args)

    def fetch(self, path: str, method: str = "GET", form: dict[str, str] | None = None
              ) -> tuple[int, str]:
        """Request ``path`` from inside the page with the page's own cookies (as a script
        on the page could): the answer's status and text."""
        answer = self.driver.execute_async_script(
            """
            const [path, method, form, done] = arguments;
            const init = {method: method, credentials: 'same-origin', redirect: 'manual'};
            if (form !== null) { init.body = new URLSearchParams(form); }
            fetch(path, init).then(r => r.text().then(t => done([r.status, t])))
                             .catch(e => done([0, String(e)]));
            """, path, method, form)
        return int(answer[0]), str(answer[1])

    def wait(self, predicate: Callable[[], Any], timeout: float = 20,
             what: str = "a condition") -> Any:
        """Poll ``predicate`` (errors count as not yet) until it gives a true value; return
        that value."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except (WebDriverException, AssertionError) as error:
                last = error
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what} on "
                                     f"{self.path}" + (f" ({last})" if last else ""))
            time.sleep(0.2)

    # -- keyboard ------------------------------------------------------------------
    def active(self) -> WebElement:
        """The element that has the keyboard focus."""
        element: WebElement = self.driver.switch_to.active_element
        return element

    def keys(self, *keys: str) -> None:
        """Type ``keys`` (text or :class:`Keys`) into whatever has the focus, as a person
        at the keyboard does."""
        webdriver.ActionChains(self.driver).send_keys(*keys).perform()

    def tab_to(self, matches: Callable[[WebElement], bool], limit: int = 60,
               shift: bool = False) -> list[str]:
        """Press Tab (from where the focus is) until the focused element ``matches``; the
        focused elements on the way, described. Fails after ``limit`` presses."""
        seen: list[str] = []
        for _ in range(limit):
            keys = Keys.SHIFT + Keys.TAB if shift else Keys.TAB
            webdriver.ActionChains(self.driver).send_keys(keys).perform()
            element = self.active()
            seen.append(describe(element))
            if matches(element):
                return seen
        raise AssertionError(f"Tab never reached the element on {self.path}: {seen}")

    # -- layout --------------------------------------------------------------------
    def horizontal_overflow(self) -> int:
        """How many CSS pixels the body is wider than the window (0: no horizontal
        scroll)."""
        overflow: int = self.js(
            "return Math.max(0, document.body.scrollWidth - window.innerWidth)")
        return overflow

    # -- artifacts -----------------------------------------------------------------
    def shot(self, name: str, full_page: bool = True) -> Path:
        """Save a PNG screenshot as ``NAME.png`` in the artifacts directory: the whole page
        (the window made as tall as the document for the moment), or the window alone."""
        path = self.shots_dir / f"{name}.png"
        size = self.driver.get_window_size()
        if full_page:
            height, inner = self.js("return [document.documentElement.scrollHeight, "
                                    "window.innerHeight]")
            if height > inner:
                self.driver.set_window_size(size["width"], size["height"] + height - inner)
        try:
            if not self.driver.save_screenshot(str(path)):
                raise AssertionError(f"screenshot {name} could not be saved")
        finally:
            if self.driver.get_window_size() != size:
                self.driver.set_window_size(size["width"], size["height"])
        self.shots.append(path)
        return path

    def console_errors(self) -> list[str]:
        """The browser console's errors since the last call (Content-Security-Policy
        refusals, script errors, failed loads)."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [str(entry["message"]) for entry in entries if entry.get("level") == "SEVERE"]


def describe(element: WebElement) -> str:
    """An element as ``tag#id[name]"text"`` (for messages)."""
    tag = element.tag_name
    ident = element.get_attribute("id") or ""
    name = element.get_attribute("name") or ""
    text = (element.text or element.get_attribute("value") or "").strip()[:30]
    return f"{tag}{'#' + ident if ident else ''}{f'[{name}]' if name else ''}\"{text}\""


def chromium_options(width: int, height: int) -> webdriver.ChromeOptions:
    """Headless Debian chromium: no sandbox (the tests run as root), no /dev/shm (small in
    containers), the console errors kept for :meth:`Browser.console_errors`."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", "--disable-gpu", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@contextlib.contextmanager
def browser(base_url: str, shots_dir: Path | None = None,
            report: Callable[[str], None] = print) -> Iterator[Browser]:
    """A headless chromium at laptop size on ``base_url``; closed afterwards, when the
    screenshots taken are reported (one line each) through ``report``."""
    missing = browser_available()
    if missing:
        raise RuntimeError(missing)
    # Selenium Manager must never download a driver or a browser: offline, paths given.
    os.environ["SE_OFFLINE"] = "true"
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=chromium_options(*LAPTOP))
    session = Browser(driver, base_url, shots_dir or artifacts_dir())
    try:
        yield session
    finally:
        driver.quit()
        if session.shots:
            report(f"console screenshots in {session.shots_dir}:")
            for path in session.shots:
                report(f"  {path}")
