#!/usr/bin/env bash
# Runs every keap-relay test on a fresh machine: installs what it needs (scripts/bootstrap.sh),
# then the format and lint gates (cargo fmt --check, clippy -D warnings), the Rust suites (unit, property, sandbox, moto, storms, handlers with sample events,
# end-to-end local flow), the template checks, the hostile-input checks and the website form in a real browser.
# Ends with one summary line: "N passed, N failed".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh all

LOG_DIR="${TEST_LOG_DIR:-$ROOT/target/test-logs}"
mkdir -p "$LOG_DIR"
passed=0
failed=0
failures=()

# step NAME COMMAND...: runs one stage, remembers whether it passed.
timings=()
step() {
  local name="$1"; shift
  say "$name"
  local started=$SECONDS
  if "$@" 2>&1 | tee "$LOG_DIR/$name.log"; then
    passed_stage=1
  else
    passed_stage=0
    failures+=("$name")
  fi
  # cargo prints one "test result:" line per test binary; count its tests.
  local p f
  read -r p f < <(sed -nE 's/.*test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$LOG_DIR/$name.log" \
    | awk '{p += $1; f += $2} END {print p + 0, f + 0}')
  if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
    # a stage that is a single check, not a test runner
    if [ "$passed_stage" -eq 1 ]; then p=1; else f=1; fi
  elif [ "$passed_stage" -eq 0 ] && [ "$f" -eq 0 ]; then
    f=1 # it failed to build or crashed before reporting
  fi
  passed=$((passed + p))
  failed=$((failed + f))
  timings+=("$name $((SECONDS - started))s")
}

# The template check's `sam build` uses a quick release profile (the bench builds the real one);
# CHECK_TEMPLATE_QUICK_PROFILE=0 builds it with the release profile as deployed.
export CHECK_TEMPLATE_QUICK_PROFILE="${CHECK_TEMPLATE_QUICK_PROFILE:-1}"

step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
step rust-tests cargo test --workspace --locked --no-fail-fast
for extra in scripts/check-template.sh scripts/check-hostile.sh scripts/check-local-demo.sh scripts/check-cargo-lambda.sh scripts/check-browser.sh scripts/check-deps.sh; do
  if [ -x "$extra" ]; then step "$(basename "$extra" .sh)" "$extra"; fi
done

say "stage times: ${timings[*]} (total ${SECONDS}s)"
if [ "${#failures[@]}" -gt 0 ]; then
  # The end of each failed stage's log again, next to the summary: a CI that keeps only the
  # last screens of output still shows why.
  for name in "${failures[@]}"; do
    say "the last 60 lines of the failed stage $name ($LOG_DIR/$name.log)"
    tail -n 60 "$LOG_DIR/$name.log" || true
  done
  say "failed stages: ${failures[*]} (logs in $LOG_DIR)"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
