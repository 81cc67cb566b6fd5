#!/usr/bin/env bash
# Checks the README's cargo-lambda path end to end: `cargo lambda watch` serving the four functions
# against the Keap sandbox and a file secret store, and `cargo lambda invoke <fn> --data-file ...`
# with the sample events, each answer checked:
#   oauth         events/oauth-start-unauthorized.json -> 401, events/oauth-start.json -> 302,
#                 the callback of that sign-in (relay-local callback-event) -> 200, events/status.json -> 200 connected
#   signup        events/signup-valid.json re-signed (sign-event) -> 201, the same signed event
#                 again -> 201 marked Idempotent-Replayed, re-signed a second later -> 200,
#                 events/signup-invalid-email.json re-signed -> 400, events/signup-bad-signature.json -> 401;
#                 the website form: events/form-preflight.json -> 204, form-urlencoded.json -> 303,
#                 form-fetch-json.json -> 200, form-foreign-origin.json -> 403, form-honeypot.json -> 303
#   refresh       events/scheduled-refresh.json -> rotated (the maximum refresh-token age is set to 0)
#   signup-retry  events/sqs-signup-batch.json -> only the truncated message reported failed
# It uses tools/relay-local/cargo-lambda.env (what the README points at) with the sandbox's port
# and a temporary store directory swapped in, so a running ./scripts/local.sh is not disturbed.
# Every wait is bounded; everything started here is stopped on exit.
# Env: SANDBOX_PORT (default 9410), INVOKE_PORT (9300), WAIT_SECONDS (per wait, default 900: the
# first build of the functions on 2 cores takes minutes), VENV (default .venv, holds cargo-lambda).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$HOME/.cargo/bin:$PATH"
cd "$ROOT"

SANDBOX_PORT="${SANDBOX_PORT:-9410}"
INVOKE_PORT="${INVOKE_PORT:-9300}"
WAIT_SECONDS="${WAIT_SECONDS:-900}"
SANDBOX="http://127.0.0.1:$SANDBOX_PORT"
SIGNING_KEY="local-signup-signing-key" # the local default the seeded app secret holds

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() { printf 'check-cargo-lambda: %s\n' "$*" >&2; exit 1; }
ok() { printf 'ok: %s\n' "$*"; }
command -v cargo-lambda >/dev/null 2>&1 || fail "cargo-lambda not found (expected in $VENV/bin; scripts/bootstrap.sh installs it)"

TMP="$(mktemp -d)"
group_leaders=()
cleanup() {
  local pid
  for pid in "${group_leaders[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${group_leaders[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start LOG COMMAND...: runs COMMAND in a process group of its own (so cleanup stops its children
# too), output in LOG; its pid in $started.
start() {
  local log="$1"; shift
  setsid "$@" >"$log" 2>&1 &
  started=$!
  group_leaders+=("$started")
}

# wait_until WHAT PID COMMAND...: polls COMMAND until it succeeds, at most WAIT_SECONDS, failing at
# once (with the log) if the process PID died.
wait_until() {
  local what="$1" pid="$2" log="$3"; shift 3
  local deadline=$((SECONDS + WAIT_SECONDS))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$log" >&2; fail "$what stopped before it was ready"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$log" >&2; fail "$what not ready after ${WAIT_SECONDS}s"; }
    sleep 1
  done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
! port_in_use "$SANDBOX_PORT" || fail "port $SANDBOX_PORT is in use; set SANDBOX_PORT"
! port_in_use "$INVOKE_PORT" || fail "port $INVOKE_PORT is in use; set INVOKE_PORT"

say "building the sandbox, relay-local, sign-event and the four functions (minutes the first time)"
timeout "$WAIT_SECONDS" cargo build -q -p keap-sandbox -p relay-local -p signup -p oauth -p refresh -p signup-retry

say "starting the Keap sandbox on $SANDBOX (auto-approve)"
start "$TMP/sandbox.log" cargo run -q -p keap-sandbox -- --port "$SANDBOX_PORT" --auto-approve
wait_until "the sandbox" "$started" "$TMP/sandbox.log" curl -sf "$SANDBOX/_sandbox/stats"

say "seeding a file store in $TMP/secrets with the local app secret"
sed -e "s#127.0.0.1:9400#127.0.0.1:$SANDBOX_PORT#g" -e "s#^KEAP_STORE_DIR=.*#KEAP_STORE_DIR=$TMP/secrets#" \
  tools/relay-local/cargo-lambda.env >"$TMP/lambda.env"
grep -q "^KEAP_STORE_DIR=$TMP/secrets\$" "$TMP/lambda.env" || fail "tools/relay-local/cargo-lambda.env has no KEAP_STORE_DIR line"
# A maximum refresh-token age of 0 s: the scheduled refresh below rotates at once (a long lead
# alone would not: it is capped at half the pair's life).
echo "KEAP_REFRESH_MAX_AGE_SECONDS=0" >>"$TMP/lambda.env"
KEAP_STORE=file KEAP_STORE_DIR="$TMP/secrets" KEAP_APP_SECRET_ID=keap-relay/local/app \
  cargo run -q -p relay-local -- app-secret --local-defaults

say "starting cargo lambda watch on 127.0.0.1:$INVOKE_PORT"
start "$TMP/watch.log" cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$INVOKE_PORT" --env-file "$TMP/lambda.env"
wait_until "cargo lambda watch" "$started" "$TMP/watch.log" port_in_use "$INVOKE_PORT"

# invoke FUNCTION EVENT_FILE OUT_FILE: one bounded invocation (the first one of a function waits for
# its build), the answer in OUT_FILE.
invoke() {
  local function="$1" event="$2" out="$3"
  timeout "$WAIT_SECONDS" cargo lambda invoke "$function" --invoke-address 127.0.0.1 --invoke-port "$INVOKE_PORT" \
    --data-file "$event" --output-format json >"$out" 2>"$TMP/invoke.err" \
    || { cat "$TMP/invoke.err" >&2; tail -n 30 "$TMP/watch.log" >&2; fail "cargo lambda invoke $function --data-file $event failed"; }
}

# json FILE PYTHON_EXPRESSION: evaluates the expression with `a` bound to the parsed file.
json() {
  python3 -c 'import json, sys; a = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# expect_status FUNCTION EVENT_FILE STATUS WHAT: an API Gateway invocation answering STATUS.
expect_status() {
  local out="$TMP/answer.json"
  invoke "$1" "$2" "$out"
  local status
  status="$(json "$out" 'a.get("statusCode")')"
  [ "$status" = "$3" ] || { cat "$out" >&2; fail "$4: expected $3, got $status"; }
  ok "$4 -> $status"
}

sign() { SIGNUP_SIGNING_KEY="$SIGNING_KEY" cargo run -q -p signup --bin sign-event -- "$1" >"$2"; }

say "oauth"
expect_status oauth events/oauth-start-unauthorized.json 401 "oauth: GET /oauth/start without the admin password"
expect_status oauth events/oauth-start.json 302 "oauth: GET /oauth/start as the administrator"
cp "$TMP/answer.json" "$TMP/start.json"
cargo run -q -p relay-local -- callback-event "$TMP/start.json" >"$TMP/callback.json"
expect_status oauth "$TMP/callback.json" 200 "oauth: GET /oauth/callback with the sandbox's code and state"
expect_status oauth events/status.json 200 "oauth: GET /status"
[ "$(json "$TMP/answer.json" 'json.loads(a["body"])["connected"]')" = True ] || fail "status does not say connected"

say "signup"
sign events/signup-valid.json "$TMP/signup-valid.json"
sign events/signup-invalid-email.json "$TMP/signup-invalid-email.json"
expect_status signup "$TMP/signup-valid.json" 201 "signup: a new contact"
expect_status signup "$TMP/signup-valid.json" 201 "signup: the same signed request replayed gets the first answer"
[ "$(json "$TMP/answer.json" 'a["headers"].get("idempotent-replayed")')" = true ] || fail "the replay is not marked Idempotent-Replayed"
sleep 1 # a new signature (another second) makes it a new request
sign events/signup-valid.json "$TMP/signup-again.json"
expect_status signup "$TMP/signup-again.json" 200 "signup: the same person signing up again"
expect_status signup "$TMP/signup-invalid-email.json" 400 "signup: an invalid email"
expect_status signup events/signup-bad-signature.json 401 "signup: a bad signature"
curl -sf "$SANDBOX/_sandbox/contacts?email=ada.lovelace@example.com" >"$TMP/contact.json" || fail "Keap has no contact for the signup"
curl -sf "$SANDBOX/_sandbox/tags?name=Welcome" >"$TMP/tag.json" || fail "Keap has no Welcome tag"
welcome_tag="$(json "$TMP/tag.json" 'a["id"]')"
[ "$(json "$TMP/contact.json" "$welcome_tag in a['tag_ids']")" = True ] || fail "the contact lacks the Welcome tag"
[ "$(json "$TMP/contact.json" 'a["emails_received"]')" = 1 ] || fail "expected exactly one welcome email"
ok "Keap (the sandbox) holds the contact, tagged, with one welcome email"

say "signup: the website form"
expect_status signup events/form-preflight.json 204 "signup: OPTIONS /form from the allowed origin"
expect_status signup events/form-urlencoded.json 303 "signup: POST /form, a plain form"
[ "$(json "$TMP/answer.json" 'a["headers"].get("location")')" = https://www.example.com/thanks ] \
  || { cat "$TMP/answer.json" >&2; fail "the plain form was not sent on to the thank-you page"; }
expect_status signup events/form-fetch-json.json 200 "signup: POST /form, fetch() with JSON"
expect_status signup events/form-foreign-origin.json 403 "signup: POST /form from another origin"
expect_status signup events/form-honeypot.json 303 "signup: POST /form with the honeypot filled"
curl -sf "$SANDBOX/_sandbox/contacts?email=grace.hopper@example.com" >/dev/null || fail "Keap has no contact for the form post"
curl -sf "$SANDBOX/_sandbox/contacts?email=dorothy.vaughan@example.com" >/dev/null || fail "Keap has no contact for the fetch() post"
if curl -sf "$SANDBOX/_sandbox/contacts?email=victim@example.com" >/dev/null \
  || curl -sf "$SANDBOX/_sandbox/contacts?email=bot@example.com" >/dev/null; then
  fail "a refused or honeypot form post reached Keap"
fi
ok "Keap holds the form posts' contacts, and nothing from the foreign origin or the honeypot"

say "refresh"
invoke refresh events/scheduled-refresh.json "$TMP/refresh.json"
[ "$(json "$TMP/refresh.json" 'a["action"], a["status"]')" = "('rotated', 'ok')" ] || { cat "$TMP/refresh.json" >&2; fail "refresh did not rotate"; }
curl -sf "$SANDBOX/_sandbox/stats" >"$TMP/stats.json"
[ "$(json "$TMP/stats.json" 'a["refreshes_served"]')" = 1 ] || fail "expected exactly one refresh at the sandbox"
ok "refresh: scheduled event -> rotated, one refresh at Keap"

say "signup-retry"
invoke signup-retry events/sqs-signup-batch.json "$TMP/retry.json"
failed="$(json "$TMP/retry.json" '[f["itemIdentifier"] for f in a["batchItemFailures"]]')"
[ "$failed" = "['0a5c2d8e-1f3b-4c6d-9e7f-000000000002']" ] || { cat "$TMP/retry.json" >&2; fail "unexpected batch failures: $failed"; }
ok "signup-retry: SQS batch -> only the truncated message failed"

echo "check-cargo-lambda: ok"
