#!/usr/bin/env bash
# The pages people see, in a real browser, called by scripts/test.sh:
#   1. the website form (issue 13): tests/browser/website_form.py, below;
#   2. the operator console (issue 15): tests/browser/console.py logs in to `relay-local demo`,
#      sees "connected", forces a needs_reauth in the sandbox, sees the banner, reconnects
#      through the consent page, and redrives a dead letter until the queue drains
#      (screenshots under target/browser-test/).
#
# Starts `relay-local serve --sandbox` (API-key mode, files under a scratch directory, the
# human check on with the local fake siteverify, a named form "elsewhere" the example site may
# not post to) and runs tests/browser/website_form.py: headless chromium through chromedriver
# fills and submits the example website's plain form and its fetch() variant, and shows that a
# disallowed origin, a filled honeypot and a failed human check create nothing in the sandbox.
# The thank-you page's screenshot is kept at target/browser/thank-you.png.
#
# Needs Debian's chromium and chromium-driver (scripts/bootstrap.sh installs them with apt when
# run as root) and selenium in the virtual environment (installed here when missing).
# Knobs: CHROMIUM, CHROMEDRIVER (paths), BROWSER_TIMEOUT (seconds, default 300).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"
CHROMEDRIVER="${CHROMEDRIVER:-$(command -v chromedriver || echo /usr/bin/chromedriver)}"
WORK="$(mktemp -d)"
RELAY_PID=""

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
cleanup() {
  if [ -n "$RELAY_PID" ]; then kill "$RELAY_PID" 2>/dev/null || true; wait "$RELAY_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "$CHROMIUM" ] || [ ! -x "$CHROMEDRIVER" ]; then
  echo "check-browser: chromium and chromedriver are needed (apt-get install chromium chromium-driver; scripts/bootstrap.sh does it as root)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the Python virtual environment $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import selenium' 2>/dev/null; then
  say "installing selenium into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "selenium>=4.20,<5"
fi

say "building relay-local"
cargo build --locked -q -p relay-local

say "starting relay-local serve --sandbox with the example website"
# Only this run's settings: none of the caller's FORM_*/KEAP_* variables leak in.
env -u FORM_ALLOWED_ORIGINS -u FORM_THANK_YOU_URL -u FORM_ERROR_URL -u FORM_CAPTCHA_VERIFY_URL \
  -u KEAP_API_URL -u KEAP_TOKEN_URL -u KEAP_AUTHORIZE_URL -u KEAP_TOKEN_SECRET_ID -u KEAP_APP_SECRET_ID \
  KEAP_AUTH_MODE=api-key \
  KEAP_STORE=file \
  KEAP_STORE_DIR="$WORK/secrets" \
  FORM_CAPTCHA_PROVIDER=turnstile \
  FORM_RATE_LIMIT_PER_MINUTE=100 \
  FORMS_JSON='{"elsewhere": {"allowed_origins": ["https://www.example.com"]}}' \
  RUST_LOG=info \
  target/debug/relay-local serve --sandbox --port 0 --sandbox-port 0 --site-port 0 \
  >"$WORK/relay.out" 2>"$WORK/relay.log" &
RELAY_PID=$!
url_of() { grep -Eo "$1 http://127\.0\.0\.1:[0-9]+" "$WORK/relay.out" | head -1 | awk '{print $NF}'; }
for _ in $(seq 100); do
  grep -q 'example website on' "$WORK/relay.out" 2>/dev/null && break
  kill -0 "$RELAY_PID" 2>/dev/null || { cat "$WORK/relay.out" "$WORK/relay.log" >&2; exit 1; }
  sleep 0.2
done
RELAY_URL="$(url_of 'relay on')"
SITE_URL="$(url_of 'example website on')"
SANDBOX_URL="$(url_of 'sandbox \(in-process\) on')"
if [ -z "$RELAY_URL" ] || [ -z "$SITE_URL" ] || [ -z "$SANDBOX_URL" ]; then
  echo "check-browser: relay-local did not report its URLs" >&2
  cat "$WORK/relay.out" "$WORK/relay.log" >&2
  exit 1
fi
say "relay $RELAY_URL, example website $SITE_URL, Keap sandbox $SANDBOX_URL"

say "driving headless chromium ($("$CHROMIUM" --version 2>/dev/null | head -1))"
status=0
RELAY_URL="$RELAY_URL" SITE_URL="$SITE_URL" SANDBOX_URL="$SANDBOX_URL" \
  CHROMIUM="$CHROMIUM" CHROMEDRIVER="$CHROMEDRIVER" RELAY_LOG="$WORK/relay.log" \
  SCREENSHOT="$ROOT/target/browser/thank-you.png" \
  timeout --kill-after=10 "${BROWSER_TIMEOUT:-300}" "$VENV/bin/python" tests/browser/website_form.py || status=$?
if [ "$status" -ne 0 ]; then
  echo "check-browser: failed; the relay's log follows" >&2
  tail -40 "$WORK/relay.log" >&2
  exit 1
fi
say "website form checks passed; screenshot at target/browser/thank-you.png"
kill "$RELAY_PID" 2>/dev/null || true
wait "$RELAY_PID" 2>/dev/null || true
RELAY_PID=""

say "the operator console (tests/browser/console.py)"
timeout --kill-after=10 "${BROWSER_TIMEOUT:-300}" "$VENV/bin/python" tests/browser/console.py "$ROOT/target/debug/relay-local"
say "browser checks passed"
