"""The Prefect web UI driven the way a person uses it: headless Chromium through Selenium.

Inputs: the UI's base URL (a `prefect server` started with its UI) and Debian's `chromium`
and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`, or the paths in
`UF_CHROMIUM` / `UF_CHROMEDRIVER`). Outputs: `PrefectUI`, whose methods click through
pages (a deployment's Run -> Custom run form, a parameter field, Submit, a flow run's
Retry) and return what a person would read off the page (the new flow run's id).

Every step waits explicitly for the element it needs (no sleeps), so a slow page only
costs time up to `timeout_s`. When the UI shows an error toast for a request the server
refused (a 503 when its SQLite file is busy: Prefect's Python client retries those, the UI
does not), a step closes the toasts and tries again, as a person would, up to 5 times
(as many as Prefect's client retries by default).
`shot_on_failure(name)` saves a PNG of the page and prints its console errors and failed
requests when a step fails.

Selectors follow the UI's own components (Prefect 3.9's UI): the Run menu button
`button.run-menu__run-button`, menu items `button.p-overflow-menu-item`, parameter
fields as `div.p-label` blocks titled by `span.schema-form-property__label`, modals as
`div.p-modal`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
MISSING = ("headless Chromium is not installed: apt-get install -y chromium chromium-driver "
           "(scripts/test.sh does this when apt-get is available)")
_LABEL = "span[contains(concat(' ', @class, ' '), ' schema-form-property__label ')]"
_FIELD = "ancestor::div[contains(concat(' ', @class, ' '), ' p-label ')][1]"
_INPUT = ".p-label__body input, .p-label__body textarea, .p-label__body select"


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) executables, or None when either is missing."""
    chromium = os.environ.get("UF_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_CANDIDATES)), None)
    driver = os.environ.get("UF_CHROMEDRIVER") or shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@contextlib.contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A Selenium WebDriver on the system Chromium; quit at exit."""
    paths = browser_paths()
    if paths is None:
        raise RuntimeError(MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    # the page's console and network events, printed when a step fails
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class PrefectUI:
    """Pages of one Prefect UI at `base_url`, driven through `driver`."""

    def __init__(self, driver, base_url: str, shots: Path, timeout_s: float = 60.0):
        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.shots = Path(shots)
        # a Vue page re-renders elements under our feet: a stale one just means "look again"
        self.wait = WebDriverWait(driver, timeout_s, poll_frequency=0.2,
                                  ignored_exceptions=(StaleElementReferenceException,))

    def screenshot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    @contextlib.contextmanager
    def shot_on_failure(self, name: str) -> Iterator[None]:
        """When the block raises: save `name`.png (what the page showed) and print the page's console errors."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                print(f"screenshot of the failing page: {self.screenshot(name)}")
                for line in self.failures():
                    print(line)
            raise

    def failures(self) -> list[str]:
        """The page's console errors and its failed requests (HTTP >= 400, network errors) so far."""
        lines = [f"console {e['level']}: {e['message'][:500]}" for e in self.driver.get_log("browser")
                 if e.get("level") in ("SEVERE", "WARNING")]
        urls = {}
        for entry in self.driver.get_log("performance"):
            event = json.loads(entry["message"])["message"]
            params = event.get("params", {})
            if event.get("method") == "Network.requestWillBeSent":
                urls[params["requestId"]] = f"{params['request']['method']} {params['request']['url']}"
            elif event.get("method") == "Network.responseReceived" and params["response"]["status"] >= 400:
                status, url = params["response"]["status"], params["response"]["url"]
                lines.append(f"HTTP {status}: {urls.get(params['requestId'], url)}")
            elif event.get("method") == "Network.loadingFailed":
                lines.append(f"request failed ({params.get('errorText')}): {urls.get(params['requestId'], '?')}")
        return lines

    def _click(self, css: str, text: str | None = None, within=None, pointer: bool = False) -> None:
        """Click the element `_clickable` finds, again while the page re-renders or covers it;
        `pointer`: when chromedriver refuses, click that spot with the pointer instead."""
        def click(_):
            try:
                element = self._clickable(css, text, within)
                try:
                    element.click()
                except ElementClickInterceptedException:
                    if not pointer:
                        return False  # covered (a toast, a page going away): try again
                    # chromedriver's hit test rejects the toast's buttons (it reports the button's own
                    # content as covering it); a pointer click at the same spot is what a person does
                    ActionChains(self.driver).move_to_element(element).click().perform()
                return True
            except StaleElementReferenceException:
                return False

        self.wait.until(click, f"{css!r} showing {text!r} stayed covered on {self.driver.current_url}")

    def _clickable(self, css: str, text: str | None = None, within=None):
        """The first displayed, enabled element matching `css` (and showing `text`), once there is one."""
        def find(_):
            for el in (within or self.driver).find_elements(By.CSS_SELECTOR, css):
                if el.is_displayed() and el.is_enabled() and (text is None or el.text.strip() == text):
                    return el
            return False

        return self.wait.until(find, f"no clickable {css!r} showing {text!r} on {self.driver.current_url}")

    def open_custom_run(self, deployment_id: str) -> None:
        """Deployment page -> Run -> Custom run; returns when the parameter form is filled in."""
        self.driver.get(f"{self.base_url}/deployments/deployment/{deployment_id}")
        self._click("button.run-menu__run-button", "Run")
        self._click("button.p-overflow-menu-item", "Custom run")
        self.wait.until(lambda d: "/run" in d.current_url and self._fields("Quota (Optional)"),
                        "the Custom run form did not show its parameter fields")

    def _fields(self, label: str) -> list:
        """The input elements of every form field titled `label`, in page order."""
        spans = self.driver.find_elements(By.XPATH, f"//{_LABEL}[normalize-space()='{label}']")
        inputs = []
        for span in spans:
            found = span.find_element(By.XPATH, f"./{_FIELD}").find_elements(By.CSS_SELECTOR, _INPUT)
            inputs.extend(found[:1])
        return inputs

    def source_quota(self, source: str):
        """The Quota input of the `sources` item whose Name is `source`."""
        for quota in self._fields("Quota (Optional)"):
            item = quota.find_element(By.XPATH, f"./ancestor::div[.//{_LABEL}[normalize-space()='Name']][1]")
            names = [el.get_property("value") for el in item.find_elements(By.CSS_SELECTOR, "textarea")]
            if source in names:
                return quota
        raise AssertionError(f"no source named {source!r} in the Custom run form")

    def set_source_quota(self, source: str, value: int) -> None:
        """Type `value` into the source's Quota field as a person does: select all, type."""
        field = self.source_quota(source)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value))
        self.wait.until(lambda _: self.source_quota(source).get_property("value") == str(value),
                        f"the {source} quota field does not show {value}")

    def submit_run(self) -> str:
        """Submit the Custom run form, then the toast's "View run"; the id of the flow run it opens."""
        def submit():
            button = self._clickable("button[type=submit]", "Submit")
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
            self._click("button[type=submit]", "Submit")

        # the UI goes back to the deployment page and announces the new run in a toast
        self._until_done(submit, lambda: self._toast("button.toast-flow-run-create__button"),
                         refused="create a flow run", what="create the flow run")
        self._click("button.toast-flow-run-create__button", "View run", pointer=True)
        pattern = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")
        self.wait.until(lambda d: pattern.search(d.current_url), "the UI did not open the new flow run")
        return pattern.search(self.driver.current_url).group(1)

    def retry(self, flow_run_id: str) -> None:
        """Flow run page -> Retry -> confirm Retry in the dialog; returns when the dialog closes."""
        self.driver.get(f"{self.base_url}/runs/flow-run/{flow_run_id}")
        self._click("button.p-button", "Retry")
        modal = self._clickable("div.p-modal")

        def closed() -> bool:
            try:
                return not modal.is_displayed()
            except StaleElementReferenceException:
                return True

        self._until_done(lambda: self._click("button.p-button", "Retry", within=modal), closed,
                         refused="Failed to retry flow run", what="retry the flow run")

    def _until_done(self, act, done, refused: str, what: str, attempts: int = 5) -> None:
        """`act`, then wait until `done()` or an error toast containing `refused`; again after a refusal.

        A server busy on its SQLite file answers 503; Prefect's Python client retries those, the
        UI shows an error toast and keeps the form or dialog, and a person tries again: so does
        this, up to `attempts` times, printing the failed requests each time.
        """
        for attempt in range(1, attempts + 1):
            act()
            if self.wait.until(lambda _: done() or self._refused(refused), f"the UI did not {what}") is True:
                return
            print(f"the UI could not {what} (attempt {attempt}): {self.failures()}")
            self._close_toasts()  # they may cover the button
        raise AssertionError(f"the UI could not {what} in {attempts} attempts")

    def _toast(self, css: str) -> bool:
        """Whether a displayed toast holds an element matching `css`."""
        for card in self.driver.find_elements(By.CSS_SELECTOR, ".p-toast__card"):
            with contextlib.suppress(WebDriverException):  # a toast may vanish while read
                if card.is_displayed() and card.find_elements(By.CSS_SELECTOR, css):
                    return True
        return False

    def _refused(self, text: str) -> str | bool:
        """"refused" when a displayed toast says `text`, else False."""
        for card in self.driver.find_elements(By.CSS_SELECTOR, ".p-toast__card"):
            with contextlib.suppress(WebDriverException):
                if card.is_displayed() and text in card.text:
                    return "refused"
        return False

    def _close_toasts(self) -> None:

        for button in self.driver.find_elements(By.CSS_SELECTOR, ".p-toast__card .p-toast__close-btn"):
            with contextlib.suppress(WebDriverException):  # one may close by itself meanwhile
                button.click()
        self.wait.until(lambda d: not [c for c in d.find_elements(By.CSS_SELECTOR, ".p-toast__card")
                                       if c.is_displayed()], "the toasts did not close")
