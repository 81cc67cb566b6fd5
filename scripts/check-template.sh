#!/usr/bin/env bash
# Checks the deployment (template.yaml), in three stages:
#   lint   sam validate --lint, then cfn-lint on the template as SAM translates it (that form
#          shows dependency cycles, which cfn-lint does not see in the SAM source), then the
#          environment variables against shared/src/config.rs (scripts/check_env.py)
#   iam    scripts/check_iam.py: exact least-privilege grants and invokers per function, and a
#          self-test proving that widened copies of the template fail
#   build  sam build (cargo-lambda, release, arm64) into a gitignored build dir; prints the
#          size of each bootstrap and of its zip
# Usage: scripts/check-template.sh [lint] [iam] [build]      (no argument: all three)
# Needs: a venv ($VENV, default .venv) with aws-sam-cli and cargo-lambda (scripts/bootstrap.sh
# installs both), cargo and rustup. No AWS credentials. The build takes minutes on 2 cores.
# Env: SAM_BUILD_DIR (default .aws-sam/build), CHECK_TEMPLATE_SKIP_BUILD=1 skips the build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
BUILD_DIR="${SAM_BUILD_DIR:-$ROOT/.aws-sam/build}"
export PATH="$VENV/bin:$HOME/.cargo/bin:$PATH"
export SAM_CLI_TELEMETRY=0
# SAM and samtranslator want a region to build ARNs; nothing here calls AWS.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"
cd "$ROOT"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() { printf 'check-template: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 not found (expected in $VENV/bin or on PATH; scripts/bootstrap.sh installs it)"; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

stage_lint() {
  need sam
  need cfn-lint
  say "sam validate --lint"
  sam validate --lint --template template.yaml
  say "cfn-lint on the translated template (dependency cycles show only there)"
  "$VENV/bin/python" scripts/check_iam.py template.yaml --translated-out "$TMP/translated.json" --translate-only
  cfn-lint "$TMP/translated.json"
  echo "translated template: no errors"
  say "environment variables against shared/src/config.rs"
  "$VENV/bin/python" scripts/check_env.py template.yaml shared/src/config.rs
}

stage_iam() {
  say "least-privilege IAM check (with self-test)"
  "$VENV/bin/python" scripts/check_iam.py template.yaml --self-test
}

stage_build() {
  if [ "${CHECK_TEMPLATE_SKIP_BUILD:-0}" = 1 ]; then
    say "sam build skipped (CHECK_TEMPLATE_SKIP_BUILD=1)"
    return 0
  fi
  need sam
  need cargo
  need cargo-lambda
  if command -v rustup >/dev/null 2>&1; then
    rustup target add aarch64-unknown-linux-gnu >&2
  fi
  say "sam build (rust-cargolambda, release, arm64) into $BUILD_DIR"
  if [ "${CHECK_TEMPLATE_QUICK_PROFILE:-0}" = 1 ]; then
    # The check is that `sam build` produces the four arm64 bootstraps; what the release
    # profile's thin LTO and single codegen unit add is speed, measured by bench/, not here.
    # They are most of a cold build's minutes on 2 cores.
    say "quick release profile for this check (no LTO, 16 codegen units, opt-level 0)"
    export CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=0
  fi
  local started=$SECONDS
  # rust-cargolambda is a SAM beta feature; the variable answers its prompt in CI.
  SAM_CLI_BETA_RUST_CARGO_LAMBDA=1 sam build --beta-features --template template.yaml --build-dir "$BUILD_DIR"
  echo "sam build took $((SECONDS - started)) s"
  "$VENV/bin/python" - "$BUILD_DIR" <<'PY'
import hashlib, io, sys, zipfile
from pathlib import Path

build = Path(sys.argv[1])
functions = ["OAuthFunction", "SignupFunction", "RefreshFunction", "SignupRetryFunction"]
missing = [f for f in functions if not (build / f / "bootstrap").is_file()]
if missing:
    sys.exit(f"no bootstrap built for {', '.join(missing)}")
print(f"{'function':22} {'bootstrap':>12} {'zip':>12}")
for function in functions:
    bootstrap = build / function / "bootstrap"
    with open(bootstrap, "rb") as f:
        head = f.read(20)
    # ELF, 64-bit, machine 0xB7 = aarch64: what Lambda's arm64 runtime executes
    if head[:4] != b"\x7fELF" or head[4] != 2 or int.from_bytes(head[18:20], "little") != 0xB7:
        sys.exit(f"{bootstrap} is not an aarch64 ELF executable")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:  # as sam package zips it
        z.write(bootstrap, "bootstrap")
    print(f"{function:22} {bootstrap.stat().st_size:>12,} {len(archive.getvalue()):>12,}")
# Four functions, four binaries: a wrong or missing Binary build property shows up as copies.
digests = {hashlib.sha256((build / f / "bootstrap").read_bytes()).hexdigest() for f in functions}
if len(digests) != len(functions):
    sys.exit("some functions got the same bootstrap: check Metadata.BuildProperties.Binary")
PY
}

stages=("$@")
[ "${#stages[@]}" -gt 0 ] || stages=(lint iam build)
for stage in "${stages[@]}"; do
  case "$stage" in
    lint | iam | build) "stage_$stage" ;;
    *) fail "unknown stage '$stage' (lint, iam, build)" ;;
  esac
done
say "template checks passed: ${stages[*]}"
