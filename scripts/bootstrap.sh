#!/usr/bin/env bash
# Installs what keap-relay's tests and local run need, idempotently, into the project only:
# a Python virtual environment at .venv (moto, cargo-lambda, the SAM CLI, selenium) and the arm64 Rust target;
# as root (CI), Debian's chromium and chromium-driver with apt for the browser test (scripts/check-browser.sh).
# Sourced by the other scripts; safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
WANT="${1:-all}" # all | moto | lambda

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the Python virtual environment $VENV"
  python3 -m venv "$VENV"
fi
need=()
case "$WANT" in
  moto) [ -x "$VENV/bin/moto_server" ] || need+=("moto[server]") ;;
  *)
    [ -x "$VENV/bin/moto_server" ] || need+=("moto[server]")
    [ -x "$VENV/bin/cargo-lambda" ] || need+=("cargo-lambda")
    [ -x "$VENV/bin/sam" ] || need+=("aws-sam-cli")
    # The browser tests (scripts/check-browser.sh) drive Chromium over WebDriver.
    "$VENV/bin/python" -c 'import selenium' 2>/dev/null || need+=("selenium>=4.20,<5")
    ;;
esac
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]} into $VENV (first run only; takes a minute or two)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${need[@]}"
fi
# Headless Chromium and its WebDriver for the browser test: Debian's packages, as root (or sudo).
if [ "$WANT" = all ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
  say "installing chromium and chromium-driver (apt-get; for scripts/check-browser.sh)"
  if ! { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2; }; then
    say "could not install chromium and chromium-driver; the browser test needs them (apt-get install chromium chromium-driver)"
  fi
fi
if [ "$WANT" = all ] && ! rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu; then
  say "adding the aarch64-unknown-linux-gnu Rust target (for Lambda arm64 builds)"
  rustup target add aarch64-unknown-linux-gnu >&2
fi
export PATH="$VENV/bin:$PATH"
export MOTO_SERVER="$VENV/bin/moto_server"
export SAM_CLI_TELEMETRY=0
