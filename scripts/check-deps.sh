#!/usr/bin/env bash
# The dependency tree against deny.toml (docs/security.md, item 9), with cargo-deny:
#   bans      one TLS stack (rustls; no openssl, native-tls or ring), one hyper major (1.x)
#   licenses  permissive licences only
#   sources   crates.io only
#   advisories RustSec's database (needs GitHub; when this machine cannot reach it the check
#             is skipped with a loud notice: the other three need no network)
# Installs cargo-deny with cargo (minutes on 2 cores, once) into .local/tools unless it is on PATH.
# Env: DENY_ADVISORIES=require fails instead of skipping when the database cannot be fetched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="$ROOT/.local/tools"
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  say "installing cargo-deny $CARGO_DENY_VERSION into $TOOLS (once)"
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --root "$TOOLS"
fi

say "cargo deny: bans, licenses, sources"
cargo deny --locked check bans licenses sources

say "cargo deny self-test: a crate with hyper 0.14 and native-tls must be refused"
SELF_TEST="$(mktemp -d)"
FETCH_LOG="$(mktemp)"
trap 'rm -rf "$SELF_TEST" "$FETCH_LOG"' EXIT
cp -r scripts/deny-self-test/. "$SELF_TEST/" && cp deny.toml "$SELF_TEST/"
if cargo deny --manifest-path "$SELF_TEST/Cargo.toml" check bans >"$SELF_TEST/out.log" 2>&1; then
  cat "$SELF_TEST/out.log" >&2
  echo "check-deps: deny.toml let a second hyper major and a second TLS stack through" >&2
  exit 1
fi
for banned in "hyper = 0.14" "native-tls" "openssl"; do
  grep -q "crate '$banned" "$SELF_TEST/out.log" || { cat "$SELF_TEST/out.log" >&2; echo "check-deps: '$banned' was not reported as banned" >&2; exit 1; }
done
echo "refused as it should be: hyper 0.14, native-tls, openssl"

say "cargo deny: advisories"
if cargo deny --locked fetch db >"$FETCH_LOG" 2>&1; then
  cargo deny --locked check advisories
elif [ "${DENY_ADVISORIES:-skip}" = require ]; then
  cat "$FETCH_LOG" >&2
  echo "check-deps: the advisory database could not be fetched (DENY_ADVISORIES=require)" >&2
  exit 1
else
  printf '\033[1;33m!! ADVISORIES NOT CHECKED: RustSec'"'"'s database (github.com/rustsec/advisory-db) is unreachable from this machine.\033[0m\n' >&2
  printf '!! Run scripts/check-deps.sh where GitHub is reachable (or DENY_ADVISORIES=require in CI that has it).\n' >&2
fi
echo "dependency checks passed"
