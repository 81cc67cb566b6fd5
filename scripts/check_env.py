#!/usr/bin/env python3
"""The template's environment variables against the ones shared/src/config.rs reads.

A misspelt name is silently ignored by the functions (they fall back to a default), so:
- every variable the template sets must be read by config.rs (or be listed in EXTRA below);
- every variable config.rs reads must be set on every function, except LOCAL_ONLY ones and
  those in ONLY_FOR: SIGNUP_QUEUE_URL, which only `signup` (to queue), `signup-retry` (to park
  signups that wait for Keap to be reconnected) and `oauth` (the console) get, and the console's
  and the events function's own.

Usage: check_env.py [TEMPLATE] [CONFIG_RS]
"""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_iam import load_template, translate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Names the template sets that config.rs reads through a helper this script does not follow.
EXTRA = {"KEAP_START_URL"}
# The local run's file store; meaningless on Lambda.
LOCAL_ONLY = {"KEAP_STORE_DIR"}
QUEUE_VAR, QUEUE_USERS = "SIGNUP_QUEUE_URL", {"SignupFunction", "SignupRetryFunction", "OAuthFunction"}
# Variables only some functions get (the console's view of the queues, the event receiver's
# switch); config.rs reads them for everyone, the others run without.
ONLY_FOR = {
    QUEUE_VAR: QUEUE_USERS,
    "SIGNUP_DEAD_LETTER_QUEUE_URL": {"OAuthFunction"},
    "EVENTS_DEAD_LETTER_QUEUE_URL": {"OAuthFunction"},
    "EVENTS_STATE_SECRET_ID": {"OAuthFunction", "EventsFunction"},
}


def main() -> int:
    template_path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "template.yaml"
    config_path = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "shared/src/config.rs"
    read = set(re.findall(r'"((?:KEAP|SIGNUP|EVENTS)_[A-Z0-9_]+)"', config_path.read_text(encoding="utf-8")))
    if not read:
        print(f"no variable names found in {config_path}")
        return 1
    resources = translate(load_template(template_path))["Resources"]
    problems = []
    for function_id, function in sorted(resources.items()):
        if function["Type"] != "AWS::Lambda::Function":
            continue
        env = set(function["Properties"].get("Environment", {}).get("Variables", {}))
        for name in sorted(env - read - EXTRA):
            problems.append(f"{function_id}: sets {name}, which {config_path.name} never reads (misspelt?)")
        wanted = read - LOCAL_ONLY - set(ONLY_FOR) | {v for v, users in ONLY_FOR.items() if function_id in users}
        for name in sorted(wanted - env):
            problems.append(f"{function_id}: does not set {name}, which {config_path.name} reads")
        for name, users in ONLY_FOR.items():
            if function_id not in users and name in env:
                problems.append(f"{function_id}: must not get {name} (only {', '.join(sorted(users))})")
    if problems:
        print("environment check FAILED:")
        print("\n".join(f"  - {p}" for p in problems))
        return 1
    print(f"environment check passed: {len(read - LOCAL_ONLY)} variables of {config_path.name} set as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
