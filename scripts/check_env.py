#!/usr/bin/env python3
"""The template's environment variables against the ones shared/src/config.rs reads.

A misspelt name is silently ignored by the functions (they fall back to a default), so:
- every variable the template sets must be read by config.rs (or be listed in EXTRA below);
- every variable config.rs reads must be set on every function, except LOCAL_ONLY ones and
  the ONLY_FOR ones, which exactly the functions named there get (SIGNUP_QUEUE_URL: `signup`
  to queue, `signup-retry` to park, `oauth` for the console; the console's and the events
  function's own; the state table: replays, and the notices the console shows);
- every website-form variable shared/src/forms.rs reads (FORM_*, FORMS_JSON) must be set on
  `signup`, the function that answers the form routes, and on no other.

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
# Read by shared/src/keap/pacing.rs (PacingSettings::from_env_with, called from config.rs).
EXTRA |= {
    "KEAP_PACING_PROCESSES",
    "KEAP_LIVE_HEADROOM_PERCENT",
    "KEAP_DAILY_RESERVE_PERCENT",
    "KEAP_QUOTA_PER_SECOND",
    "KEAP_QUOTA_PER_MINUTE",
    "KEAP_QUOTA_PER_DAY",
}
# The local run's file store; meaningless on Lambda.
LOCAL_ONLY = {"KEAP_STORE_DIR"}
ONLY_FOR = {
    # `signup` queues; `signup-retry` parks signups that wait for Keap to be reconnected; the
    # console (`oauth`) counts and redrives.
    "SIGNUP_QUEUE_URL": {"SignupFunction", "SignupRetryFunction", "OAuthFunction"},
    # The relay's state table: `signup`'s replay records (docs/security.md, item 3); the welcome
    # goal's notice, written by `signup` and `signup-retry`, read by the console (`oauth`).
    "SIGNUP_REPLAY_TABLE": {"SignupFunction", "SignupRetryFunction", "OAuthFunction"},
    # The console's view of the queues and the event receiver's switch.
    "SIGNUP_DEAD_LETTER_QUEUE_URL": {"OAuthFunction"},
    "EVENTS_DEAD_LETTER_QUEUE_URL": {"OAuthFunction"},
    "EVENTS_STATE_SECRET_ID": {"OAuthFunction", "EventsFunction"},
}
FORMS_USER = "SignupFunction"


def main() -> int:
    template_path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "template.yaml"
    config_path = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "shared/src/config.rs"
    read = set(re.findall(r'"((?:KEAP|SIGNUP|EVENTS)_[A-Z0-9_]+)"', config_path.read_text(encoding="utf-8")))
    if not read:
        print(f"no variable names found in {config_path}")
        return 1
    forms_path = config_path.parent / "forms.rs"
    forms = set(re.findall(r'"(FORMS?_[A-Z0-9_]+)"', forms_path.read_text(encoding="utf-8")))
    if not forms:
        print(f"no variable names found in {forms_path}")
        return 1
    resources = translate(load_template(template_path))["Resources"]
    problems = []
    for function_id, function in sorted(resources.items()):
        if function["Type"] != "AWS::Lambda::Function":
            continue
        env = set(function["Properties"].get("Environment", {}).get("Variables", {}))
        if function_id == FORMS_USER:
            for name in sorted(forms - env):
                problems.append(f"{function_id}: does not set {name}, which {forms_path.name} reads")
            env -= forms
        for name in sorted(env & forms):
            problems.append(f"{function_id}: must not get {name} (only {FORMS_USER} answers the form routes)")
        env -= forms
        for name in sorted(env - read - EXTRA):
            problems.append(f"{function_id}: sets {name}, which {config_path.name} never reads (misspelt?)")
        own = {name for name, users in ONLY_FOR.items() if function_id in users}
        wanted = (read - LOCAL_ONLY - set(ONLY_FOR)) | own
        for name in sorted(wanted - env):
            problems.append(f"{function_id}: does not set {name}, which {config_path.name} reads")
        for name in sorted((set(ONLY_FOR) - own) & env):
            problems.append(f"{function_id}: must not get {name} (only {', '.join(sorted(ONLY_FOR[name]))})")
    if problems:
        print("environment check FAILED:")
        print("\n".join(f"  - {p}" for p in problems))
        return 1
    print(
        f"environment check passed: {len(read - LOCAL_ONLY)} variables of {config_path.name} and "
        f"{len(forms)} of {forms_path.name} set as expected"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
