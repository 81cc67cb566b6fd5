#!/usr/bin/env bash
# keap-relay benchmarks, one command. Writes bench/results/latest.md and latest.json.
#
#   ./bench/run.sh            full: builds the arm64 artifacts (timed), 50 cold starts per
#                             function, 2000 in-process signups, 1000 binary invocations,
#                             storms of 1/8/64/256 processes x 3, criterion at full length
#   ./bench/run.sh --quick    no arm64 build (reuses artifacts found), fewer samples
#
# Needs: cargo, and for the full mode cargo-lambda (.venv/bin) with zig; moto_server (.venv/bin)
# is used when present. Everything runs on loopback; no AWS account, no network.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"

MODE=full
case "${1:-}" in
  "") ;;
  --quick) MODE=quick ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
esac

WORK="$ROOT/target/relay-bench"
LAMBDA_DIR="$WORK/lambda"
mkdir -p "$WORK"
STARTED=$(date +%s)
FUNCTIONS=(oauth signup refresh signup-retry)
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runs a cargo command, logging to $1; sets BUILD_SECONDS and BUILD_CRATES (crates compiled).
timed_build() {
  local log=$1; shift
  local t0=$SECONDS
  if ! "$@" >"$log" 2>&1; then
    grep -v '^{' "$log" | tail -n 40 >&2
    echo "build failed: $* (log: $log)" >&2
    exit 1
  fi
  BUILD_SECONDS=$((SECONDS - t0))
  BUILD_CRATES=$(grep -c '^ *Compiling ' "$log" || true)
}

ARM64_SECONDS="" ARM64_CRATES=""
if [ "$MODE" = full ]; then
  command -v cargo-lambda >/dev/null || { echo "cargo-lambda not found (.venv/bin)" >&2; exit 1; }
  bins=(); for f in "${FUNCTIONS[@]}"; do bins+=(--bin "$f"); done
  say "arm64 release build: cargo lambda build --release --arm64 (as sam build does it)"
  timed_build "$WORK/arm64-build.log" \
    cargo lambda build --release --arm64 --output-format zip --lambda-dir "$LAMBDA_DIR" "${bins[@]}"
  ARM64_SECONDS=$BUILD_SECONDS ARM64_CRATES=$BUILD_CRATES
  # A build with nothing to do says little: keep the last one that compiled something.
  if [ "$ARM64_CRATES" -gt 0 ]; then
    printf '{"seconds": %s, "crates_compiled": %s, "at": "%s"}\n' "$ARM64_SECONDS" "$ARM64_CRATES" \
      "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$WORK/last-arm64-rebuild.json"
  fi
  echo "    ${ARM64_SECONDS} s, ${ARM64_CRATES} crates compiled" >&2
fi

say "native release build: the four functions, the bench harness and its criterion bench"
# One invocation, so the dependencies are compiled once with one feature set (cargo bench would
# build them all again under the bench profile). The criterion bench is then run directly.
timed_build "$WORK/native-build.log" \
  cargo build --release -p oauth -p signup -p refresh -p signup-retry -p relay-bench --bins --bench in_process \
    --message-format=json-render-diagnostics
NATIVE_SECONDS=$BUILD_SECONDS NATIVE_CRATES=$BUILD_CRATES
echo "    ${NATIVE_SECONDS} s, ${NATIVE_CRATES} crates compiled" >&2
CRITERION_BIN=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "in_process" and message.get("executable"):
        print(message["executable"])
' "$WORK/native-build.log")
[ -x "$CRITERION_BIN" ] || { echo "criterion bench executable not found in $WORK/native-build.log" >&2; exit 1; }

say "artifact sizes"
MODE="$MODE" ARM64_SECONDS="$ARM64_SECONDS" ARM64_CRATES="$ARM64_CRATES" \
NATIVE_SECONDS="$NATIVE_SECONDS" NATIVE_CRATES="$NATIVE_CRATES" \
python3 - "$LAMBDA_DIR" "$ROOT/.aws-sam/build" "$ROOT/target/lambda" "$WORK/build.json" "$WORK/last-arm64-rebuild.json" <<'PY'
import datetime, json, os, sys, tempfile, zipfile

lambda_dir, sam_dir, target_lambda, out, last_rebuild = sys.argv[1:6]
sam_names = {"oauth": "OAuthFunction", "signup": "SignupFunction", "refresh": "RefreshFunction", "signup-retry": "SignupRetryFunction"}

def built_at(path):
    return datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

def machine(head):
    """ELF machine of a bootstrap's first 20 bytes (Lambda arm64 runs aarch64)."""
    if head[:4] != b"\x7fELF":
        return "not ELF"
    return {0xB7: "aarch64", 0x3E: "x86_64"}.get(int.from_bytes(head[18:20], "little"), "other")

def zipped_size(bootstrap):
    """Size of bootstrap zipped as SAM and cargo-lambda zip it (deflate)."""
    with tempfile.TemporaryDirectory() as tmp:
        zipped = os.path.join(tmp, "bootstrap.zip")
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(bootstrap, "bootstrap")
        return os.path.getsize(zipped)

artifacts = []
for function, sam_name in sam_names.items():
    ours = os.path.join(lambda_dir, function, "bootstrap.zip")
    if os.path.isfile(ours):
        with zipfile.ZipFile(ours) as z:
            size = z.getinfo("bootstrap").file_size
            with z.open("bootstrap") as f:
                arch = machine(f.read(20))
        artifacts.append({"function": function, "bootstrap_bytes": size, "zip_bytes": os.path.getsize(ours), "machine": arch,
                          "source": "cargo lambda build --release --arm64", "built_at": built_at(ours)})
        continue
    # Reused in quick mode: what sam build left (its build dir, or cargo-lambda's default output).
    for bootstrap, source in [(os.path.join(sam_dir, sam_name, "bootstrap"), "sam build (.aws-sam/build), zipped here"),
                              (os.path.join(target_lambda, function, "bootstrap"), "sam build's cargo lambda (target/lambda), zipped here")]:
        if os.path.isfile(bootstrap):
            with open(bootstrap, "rb") as f:
                arch = machine(f.read(20))
            artifacts.append({"function": function, "bootstrap_bytes": os.path.getsize(bootstrap), "zip_bytes": zipped_size(bootstrap),
                              "machine": arch, "source": source, "built_at": built_at(bootstrap)})
            break

def build(seconds, crates, note):
    return {"seconds": float(seconds), "crates_compiled": int(crates or 0)} if seconds else {"note": note}

arm64 = build(os.environ["ARM64_SECONDS"], os.environ["ARM64_CRATES"], "skipped in quick mode; artifacts reused")
if os.path.isfile(last_rebuild):
    with open(last_rebuild) as f:
        arm64["last_rebuild"] = json.load(f)
info = {
    "mode": os.environ["MODE"],
    "arm64_build": arm64,
    "native_build": build(os.environ["NATIVE_SECONDS"], os.environ["NATIVE_CRATES"], "not run"),
    "artifacts": artifacts,
}
with open(out, "w") as f:
    json.dump(info, f, indent=2)
for a in artifacts:
    print(f"    {a['function']:13} bootstrap {a['bootstrap_bytes'] / 1e6:6.2f} MB  zip {a['zip_bytes'] / 1e6:5.2f} MB  {a['machine']}  ({a['source']}, {a['built_at']})", file=sys.stderr)
if not artifacts:
    print("    no arm64 artifacts found (run without --quick)", file=sys.stderr)
PY

say "criterion (in-process micro benchmarks)"
if [ "$MODE" = full ]; then
  CRITERION_ARGS=(--warm-up-time 1 --measurement-time 3)
else
  CRITERION_ARGS=(--warm-up-time 0.5 --measurement-time 1 --sample-size 20)
fi
if ! CRITERION_HOME="$WORK/criterion" "$CRITERION_BIN" --bench "${CRITERION_ARGS[@]}" >"$WORK/criterion.log" 2>&1; then
  tail -n 40 "$WORK/criterion.log" >&2
  echo "criterion failed (log: $WORK/criterion.log)" >&2
  exit 1
fi
grep -E '^[a-z_]+/[a-z_]+|^ +time:' "$WORK/criterion.log" >&2 || true

say "whole-process measurements"
QUICK=(); [ "$MODE" = quick ] && QUICK=(--quick)
"$ROOT/target/release/relay-bench" "${QUICK[@]}" \
  --workspace "$ROOT" --out "$ROOT/bench/results" --build-info "$WORK/build.json" \
  --criterion-dir "$WORK/criterion" --since "$STARTED"
echo "total: $(( $(date +%s) - STARTED )) s" >&2
