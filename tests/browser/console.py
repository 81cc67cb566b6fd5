#!/usr/bin/env python3
"""The operator console in a real browser (headless Chromium over WebDriver, Python selenium).

Starts `relay-local demo` (the Keap sandbox, the four functions, the in-memory signup queue) on
free ports with a fresh secret store, waits for its walkthrough to pass, then, as the operator:
  1. opens /admin (Basic auth) and sees "connected";
  2. makes Keap refuse the tokens (the sandbox's control API), sends a signup that meets the
     refusal (queued, 202) and sees the "needs re-authorization" banner;
  3. clicks Reconnect, approves on the sandbox's consent page, and sees "connected" again;
  4. puts a message into the local dead-letter queue, clicks Redrive, and sees the queue drain
     (and the contact reach the sandbox).
Meanwhile a receiver at EVENTS_WEBHOOK_URL checks each event's signature and collects the
types: signup.queued, connection.needs_reauth, connection.recovered and signup.delivered must
arrive. Screenshots of each step go to target/browser-test/. Exit 0 only when every step held.

Usage: tests/browser/console.py [path/to/relay-local]  (default target/debug/relay-local)
"""

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/browser/ -> the repository
SHOTS = os.path.join(ROOT, "target", "browser-test")
ADMIN_PASSWORD = "local-admin-password"  # tools/relay-local/src/defaults.rs
SIGNING_KEY = "local-signup-signing-key"  # the same
EVENTS_SIGNING_KEY = "local-events-signing-key"  # the same
STEP_TIMEOUT = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, answer.read().decode()


def signed_signup(relay_url, email):
    """POST /signup signed as the README says: t=<unix seconds>,v1=HMAC-SHA256(key, "<t>.<body>")."""
    body = json.dumps({"email": email}).encode()
    t = str(int(time.time()))
    signature = hmac.new(SIGNING_KEY.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{relay_url}/signup", data=body, method="POST", headers={
        "content-type": "application/json", "x-signature": f"t={t},v1={signature}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def get_status(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


class EventReceiver:
    """EVENTS_WEBHOOK_URL: verifies X-Signature as the README's receiver does, keeps the types."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received, bad = [], []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                parts = [p.strip().split("=", 1) for p in self.headers.get("x-signature", "").split(",") if "=" in p]
                t = next((v for k, v in parts if k == "t"), "")
                expected = hmac.new(EVENTS_SIGNING_KEY.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
                if not any(k == "v1" and hmac.compare_digest(v.encode(), expected.encode()) for k, v in parts):
                    bad.append(body)
                    self.send_response(401)
                else:
                    received.append(json.loads(body)["type"])
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.received, self.bad = received, bad
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Relay:
    """relay-local demo in its own process group, its output kept for the failure report."""

    def __init__(self, binary, port, sandbox_port, store_dir, events_url):
        env = dict(os.environ, KEAP_STORE_DIR=store_dir, RUST_LOG=os.environ.get("RUST_LOG", "warn"),
                   EVENTS_WEBHOOK_URL=events_url)
        self.lines = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [binary, "demo", "--port", str(port), "--sandbox-port", str(sandbox_port),
             "--refresh-every", "1", "--drain-every", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("All ") and "checks passed" in line:
                self.ready.set()

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def browser(profile_dir):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=412,1400", f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(service=service, options=options)


def wait_for(what, check, timeout=STEP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception as error:  # a page mid-load: try again
            last = error
        else:
            last = None
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))
        time.sleep(0.5)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "relay-local")
    os.makedirs(SHOTS, exist_ok=True)
    port, sandbox_port = free_port(), free_port()
    relay_url, sandbox_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}"
    work = tempfile.mkdtemp(prefix="keap-relay-browser-")
    receiver = EventReceiver()
    relay = Relay(binary, port, sandbox_port, os.path.join(work, "secrets"), receiver.url)
    driver = None
    step = "start relay-local demo"
    try:
        if not relay.ready.wait(timeout=600):
            raise AssertionError("relay-local demo did not report its checks passed")
        driver = browser(os.path.join(work, "profile"))
        driver.set_page_load_timeout(30)

        def shot(name):
            driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))

        def console():
            driver.get(f"{relay_url}/admin")
            return driver.find_element(By.ID, "connection-state").text

        step = "log in and see connected"
        driver.get(f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{port}/admin")
        assert driver.find_element(By.ID, "connection-state").text == "connected", driver.page_source
        shot("1-connected")

        step = "Keap refuses the refresh token: the banner"
        post(f"{sandbox_url}/_sandbox/expire-refresh-tokens", b"")
        post(f"{sandbox_url}/_sandbox/expire-access-tokens", b"")
        # The next call to Keap meets the refusal: Keap's 401, then the refresh it refuses.
        status = signed_signup(relay_url, "after-expiry@example.com")
        assert status == 202, f"the signup should wait in the queue, got {status}"
        wait_for("the needs re-authorization banner", lambda: console() == "needs re-authorization")
        banner = driver.find_element(By.ID, "connection").text
        assert "Since" in banner, banner
        shot("2-needs-reauth")
        # The banner comes from the signup's refusal; the event from the scheduled refresh (every
        # second here), which must meet the refusal before the reconnection ends it.
        wait_for("the connection.needs_reauth event", lambda: "connection.needs_reauth" in receiver.received)

        step = "Reconnect through the sandbox's consent page"
        post(f"{sandbox_url}/_sandbox/auto-approve", {"on": False})
        driver.find_element(By.ID, "reconnect").click()
        wait_for("the consent page", lambda: driver.find_element(By.CSS_SELECTOR, "button[value=approve]"))
        shot("3-consent")
        driver.find_element(By.CSS_SELECTOR, "button[value=approve]").click()
        wait_for("the connected page", lambda: "keap-relay: connected" in driver.page_source)
        shot("4-reconnected")
        assert console() == "connected", driver.page_source

        step = "a dead letter redriven drains"
        email = f"browser-redrive-{int(time.time())}@example.com"
        status, _ = post(f"{relay_url}/_local/dead-letters", {"email": email, "given_name": "Redrive"})
        assert status == 201, status
        console()
        assert driver.find_element(By.ID, "signups-dead-letters").text == "1", driver.page_source
        assert email in driver.page_source
        shot("5-dead-letter")
        driver.find_element(By.CSS_SELECTOR, "button.redrive").click()
        wait_for("the redrive notice", lambda: "sent back to its queue" in driver.find_element(By.ID, "notice").text)

        def drained():
            console()
            counts = [driver.find_element(By.ID, f"signups-{n}").text for n in ("waiting", "in-flight", "dead-letters")]
            return counts == ["0", "0", "0"]

        wait_for("the queue to drain", drained)
        shot("6-drained")
        status = get_status(f"{sandbox_url}/_sandbox/contacts?email={email}")
        assert status == 200, f"the redriven signup did not reach Keap ({status})"

        step = "the product heard of it all, signed"
        wanted = {"signup.queued", "connection.needs_reauth", "connection.recovered", "signup.delivered"}
        wait_for(f"events {sorted(wanted)}", lambda: wanted <= set(receiver.received))
        assert not receiver.bad, f"events with a bad signature: {receiver.bad[:2]}"
        console()
        assert driver.find_element(By.ID, "receiver-state").text == "enabled", driver.page_source
        shot("7-events")
        print(f"events received: {len(receiver.received)} ({', '.join(sorted(set(receiver.received)))})")
        print(f"browser test: ok (screenshots in {SHOTS})")
        return 0
    except Exception as error:
        print(f"browser test FAILED at step '{step}': {error}", file=sys.stderr)
        if driver is not None:
            try:
                driver.save_screenshot(os.path.join(SHOTS, "failure.png"))
            except Exception:
                pass
        print("relay-local output (last 60 lines):\n" + "\n".join(relay.lines[-60:]), file=sys.stderr)
        return 1
    finally:
        if driver is not None:
            driver.quit()
        relay.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
