#!/usr/bin/env bash
# Rotation bench: builds the contender and bench binaries (release) and prints a Markdown
# report: store calls per request at steady state, Keap token calls, new secret versions and
# time from expiry until the last contender holds the new token, for 1, 8 and 64 contenders.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release -p relay-tests --bin rotation-contender --bin rotation-bench
exec target/release/rotation-bench "$@"
