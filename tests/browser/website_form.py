"""The website form in a real browser (issue 13), run by scripts/check-browser.sh.

Drives Debian's chromium headless through chromedriver (WebDriver, Python selenium) against
`relay-local serve --sandbox`: the example website (examples/website-form/) on its own
origin, the relay, the Keap sandbox and the fake siteverify. Each case submits a form as a
person would and then asks the sandbox (its /_sandbox control API) what reached Keap.

Environment: RELAY_URL, SITE_URL, SANDBOX_URL (from relay-local's output), CHROMIUM,
CHROMEDRIVER, SCREENSHOT (where the thank-you page's screenshot goes), RELAY_LOG (the
relay's log file, to see the CORS preflight answered).
"""

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

RELAY = os.environ["RELAY_URL"]
SITE = os.environ["SITE_URL"]
SANDBOX = os.environ["SANDBOX_URL"]
SCREENSHOT = os.environ["SCREENSHOT"]
RELAY_LOG = os.environ["RELAY_LOG"]
RUN = str(int(time.time()))


def sandbox(path, **query):
    """GET the sandbox's control API; None for a 404 (no such contact or tag)."""
    url = f"{SANDBOX}/_sandbox/{path}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def contact(email):
    return sandbox("contacts", email=email)


def tag_id(name):
    found = sandbox("tags", name=name)
    return found and found.get("id")


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ["CHROMIUM"]
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1000,800",
        f"--user-data-dir={tempfile.mkdtemp(prefix='keap-relay-chromium-')}",
    ]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=os.environ["CHROMEDRIVER"]), options=options)


def fill(driver, email, first="Ada", last="Lovelace"):
    driver.find_element(By.NAME, "email").send_keys(email)
    driver.find_element(By.NAME, "first_name").send_keys(first)
    driver.find_element(By.NAME, "last_name").send_keys(last)
    driver.find_element(By.NAME, "opt_in").click()


def submit(driver):
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def wait_for_url(driver, prefix):
    WebDriverWait(driver, 15).until(lambda d: d.current_url.startswith(prefix))


checks = []


def check(name, condition, detail=""):
    checks.append((name, bool(condition), detail))
    mark = "ok  " if condition else "FAIL"
    print(f"  {mark} {name}" + (f": {detail}" if detail and not condition else ""), flush=True)


def plain_form(driver):
    email = f"plain.{RUN}@example.com"
    driver.get(f"{SITE}/?utm_source=browser-test&utm_campaign=issue-13")
    fill(driver, email)
    submit(driver)
    wait_for_url(driver, f"{SITE}/thanks.html")
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "thanks")))
    check("plain form: 303 followed to the thank-you page", driver.current_url == f"{SITE}/thanks.html", driver.current_url)
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    driver.save_screenshot(SCREENSHOT)
    check("plain form: screenshot of the thank-you page kept", os.path.getsize(SCREENSHOT) > 1000, SCREENSHOT)
    found = contact(email)
    check("plain form: the contact is in Keap", found is not None, email)
    if found:
        check("plain form: names as typed", (found["given_name"], found["family_name"]) == ("Ada", "Lovelace"), found)
        check("plain form: the welcome tag is applied", tag_id("Welcome") in found["tag_ids"], found)
        check("plain form: one welcome email", found["emails_received"] == 1, found)
        check("plain form: opted in", found["email_status"] == "SingleOptIn", found)


def fetch_form(driver):
    email = f"fetch.{RUN}@example.com"
    driver.get(f"{SITE}/fetch.html")
    fill(driver, email, "Grace", "Hopper")
    submit(driver)
    status = WebDriverWait(driver, 15).until(
        lambda d: d.find_element(By.ID, "status") if d.find_element(By.ID, "status").get_attribute("data-state") else False
    )
    check("fetch(): the page shows the success", status.get_attribute("data-state") == "ok", status.text)
    check("fetch(): the page did not navigate", driver.current_url == f"{SITE}/fetch.html", driver.current_url)
    found = contact(email)
    check("fetch(): the contact is in Keap", found is not None, email)
    if found:
        check("fetch(): welcome tag and email", tag_id("Welcome") in found["tag_ids"] and found["emails_received"] == 1, found)
    with open(RELAY_LOG, encoding="utf-8", errors="replace") as log:
        preflights = log.read().count("CORS preflight allowed")
    # A JSON body is not a "simple" request: the browser sends OPTIONS first, and only posts
    # when the answer allows its origin.
    check("fetch(): the browser's CORS preflight was answered", preflights >= 1, f"{preflights} in {RELAY_LOG}")


def honeypot(driver):
    email = f"honeypot.{RUN}@example.com"
    driver.get(f"{SITE}/")
    fill(driver, email, "Bot", "Filler")
    # What a form-filling bot does: fill every input, the hidden one too.
    driver.execute_script("document.querySelector('input[name=_gotcha]').value = 'http://spam.example';")
    submit(driver)
    wait_for_url(driver, f"{SITE}/thanks.html")
    check("honeypot: answered exactly as a success (thank-you page)", driver.current_url == f"{SITE}/thanks.html", driver.current_url)
    check("honeypot: nothing reached Keap", contact(email) is None, email)


def failed_human_check(driver):
    email = f"robot.{RUN}@example.com"
    driver.get(f"{SITE}/")
    fill(driver, email, "Robo", "Tester")
    # A forged token in the provider's field (the widget would have put a real one there).
    driver.execute_script("document.querySelector('input[name=\"cf-turnstile-response\"]').value = 'forged';")
    submit(driver)
    wait_for_url(driver, f"{SITE}/error.html")
    check(
        "failed human check: sent on to the error page with its code",
        driver.current_url == f"{SITE}/error.html?error=captcha_failed",
        driver.current_url,
    )
    message = driver.find_element(By.ID, "message").text
    check("failed human check: the page explains", "human check" in message, message)
    check("failed human check: nothing reached Keap", contact(email) is None, email)


def disallowed_origin(driver):
    # The example site is not among the origins of the form "elsewhere".
    email = f"foreign.{RUN}@example.com"
    driver.get(f"{SITE}/")
    fill(driver, email, "Eve", "Elsewhere")
    driver.execute_script(f"document.getElementById('signup').action = {json.dumps(RELAY + '/form/elsewhere')};")
    submit(driver)
    wait_for_url(driver, f"{RELAY}/form/elsewhere")
    body = driver.find_element(By.TAG_NAME, "body").text
    check("disallowed origin (plain form): refused with origin_not_allowed", "origin_not_allowed" in body, body)
    check("disallowed origin (plain form): nothing reached Keap", contact(email) is None, email)

    email = f"foreign.fetch.{RUN}@example.com"
    driver.get(f"{SITE}/fetch.html")
    fill(driver, email, "Eve", "Script")
    driver.execute_script(f"document.getElementById('signup').action = {json.dumps(RELAY + '/form/elsewhere')};")
    submit(driver)
    status = WebDriverWait(driver, 15).until(
        lambda d: d.find_element(By.ID, "status") if d.find_element(By.ID, "status").get_attribute("data-state") else False
    )
    # The preflight is refused (403, no Access-Control-Allow-Origin): the browser never posts.
    check(
        "disallowed origin (fetch): the browser blocks it (CORS)",
        status.get_attribute("data-state") == "error" and status.get_attribute("data-code") == "network",
        f"{status.get_attribute('data-code')}: {status.text}",
    )
    check("disallowed origin (fetch): nothing reached Keap", contact(email) is None, email)


def main():
    driver = browser()
    try:
        for case in (plain_form, fetch_form, honeypot, failed_human_check, disallowed_origin):
            print(f"{case.__name__}:", flush=True)
            try:
                case(driver)
            except Exception as problem:  # a timeout or a missing element is a failed check
                check(f"{case.__name__} ran to the end", False, f"{type(problem).__name__}: {problem}")
    finally:
        driver.quit()
    failed = [name for name, passed, _ in checks if not passed]
    print(f"{len(checks) - len(failed)} of {len(checks)} browser checks passed.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
