#!/usr/bin/env bash
# The launch-spike benchmark (bench/README.md, "Launch spike"): 5,000 signups arriving in 60 s
# through the real signup and signup-retry binaries (the load test's Lambda Runtime API pool)
# against the Keap sandbox at the OAuth client's quota (1,500/min, 25/s) and moto's SQS.
# Not a timed test: `cargo test` skips it (#[ignore]); this runs it. Several minutes.
#
#   ./bench/launch-spike.sh                      # 5,000 in 60 s
#   SPIKE_SIGNUPS=600 SPIKE_SECONDS=10 ./bench/launch-spike.sh   # a quick look
#
# Prints the report and writes target/launch-spike/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
exec nice -n 19 cargo test -p relay-tests --test launch_spike -- --ignored --nocapture
