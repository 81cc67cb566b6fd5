#!/usr/bin/env bash
# keap-relay on this machine with no AWS and no Keap account: builds and runs `relay-local demo`,
# which starts the Keap sandbox, a file secret store under .local/secrets (gitignored) and the four
# functions' handlers, walks through connect -> signups -> token rotation -> status, then keeps
# serving until Ctrl-C; the example website form (examples/website-form/) is served on its own
# port (9100) and posts to the relay's /form.
# Usage: ./scripts/local.sh [--no-serve] [--port N] [--sandbox-port N] [--site-port N] [--events DIR]
#        (all of `cargo run -p relay-local -- --help`; --no-serve exits 0 only if every check held)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
printf '\033[1m==> %s\033[0m\n' "building and starting relay-local (the first build takes a few minutes; later runs start in seconds)" >&2
exec cargo run -p relay-local -- demo "$@"
