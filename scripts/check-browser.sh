#!/usr/bin/env bash
# CI check of the operator console in a real browser: builds relay-local and runs
# scripts/browser_test.py (headless Chromium over WebDriver, Python selenium in .venv): log in,
# see "connected", force a needs_reauth in the sandbox, Reconnect through the consent page, and
# redrive a dead letter until the queue drains. Screenshots under target/browser-test/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh all
cargo build -q -p relay-local --locked
timeout --kill-after=10 "${BROWSER_TEST_TIMEOUT:-900}" "$VENV/bin/python" scripts/browser_test.py "$ROOT/target/debug/relay-local"
