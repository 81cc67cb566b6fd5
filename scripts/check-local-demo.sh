#!/usr/bin/env bash
# CI check of the README's quick start: runs `./scripts/local.sh --no-serve` exactly as the README
# says (default ports 9000 and 9400, secrets under .local/secrets) and passes only if the
# walkthrough's every check held (exit 0 and its "All N checks passed." line).
# Usage: scripts/check-local-demo.sh [extra relay-local demo flags, e.g. --port 0 --sandbox-port 0]
# Env: LOCAL_DEMO_TIMEOUT (seconds, default 1800: the first build on 2 cores takes minutes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT

status=0
timeout --kill-after=10 "${LOCAL_DEMO_TIMEOUT:-1800}" ./scripts/local.sh --no-serve "$@" | tee "$OUT" || status=$?
if [ "$status" -ne 0 ]; then
  echo "check-local-demo: ./scripts/local.sh --no-serve failed (exit $status)" >&2
  exit 1
fi
if ! grep -Eq '^All [0-9]+ checks passed\.$' "$OUT"; then
  echo "check-local-demo: the walkthrough exited 0 without reporting that every check passed" >&2
  exit 1
fi
echo "check-local-demo: ok"
