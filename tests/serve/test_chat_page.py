"""The chat page at / in a real headless browser (Debian's chromium through selenium), against
`serve` on a scripted model that thinks in a loop until a budget cuts it, then answers: the page
streams the thinking apart from the answer, toggles no-think, and stops a reply."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request

import pytest

from edge.runtime.engine import Engine
from tests.scripted_model import SCRIPT_ANSWER_TEXT
from tests.serve.test_server import serving

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("chromium and chromedriver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def port(looping_gguf):
    with Engine.load(looping_gguf, n_ctx=4096) as engine, serving(engine, model_name="looping-model") as p:
        yield p


def wait_for(condition, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the page did not get there in time")


def replies(driver) -> list[dict]:
    return driver.execute_script("""return [...document.querySelectorAll('.assistant')].map(b => ({
        thinking: b.querySelector('details.thinking div').textContent,
        thinking_shown: !b.querySelector('details.thinking').hidden,
        answer: b.querySelector('.answer').textContent,
        reason: b.querySelector('.stats').dataset.reason}))""")


def say(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def test_the_chat_page(browser, port):
    from selenium.webdriver.common.by import By
    browser.get(f"http://127.0.0.1:{port}/")
    wait_for(lambda: browser.find_element(By.ID, "model").text == "looping-model")
    assert "cpu" in browser.find_element(By.ID, "backend").text

    budget = browser.find_element(By.ID, "budget")   # thinking until the budget, then the answer
    budget.send_keys("16")
    say(browser, "Hi")
    wait_for(lambda: replies(browser)[0]["reason"])
    first = replies(browser)[0]
    assert first["reason"] == "stop" and first["thinking_shown"] and first["thinking"].strip()
    assert first["answer"] == SCRIPT_ANSWER_TEXT

    browser.find_element(By.ID, "think").click()      # no-think: the answer alone
    budget.clear()
    say(browser, "Hi again")
    wait_for(lambda: len(replies(browser)) == 2 and replies(browser)[1]["reason"])
    second = replies(browser)[1]
    assert second["answer"] == SCRIPT_ANSWER_TEXT and not second["thinking_shown"]

    browser.find_element(By.ID, "think").click()      # thinking with no budget loops: stop it
    say(browser, "Think forever")
    wait_for(lambda: len(replies(browser)) == 3 and len(replies(browser)[2]["thinking"]) > 40)
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: replies(browser)[2]["reason"])
    assert replies(browser)[2]["reason"] == "stopped" and replies(browser)[2]["answer"] == ""
    health = lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())  # noqa: E731
    wait_for(lambda: health()["busy"] == 0)          # the server stopped the generation too
