#!/usr/bin/env bash
# Checks the Prometheus alert rules in deploy/prometheus/ with promtool:
#   1. `promtool check rules`: the file parses and every expression is valid PromQL;
#   2. `promtool test rules`: each alert fires on a bad series and stays quiet on
#      a good one (deploy/prometheus/recur-alerts.test.yml).
# That the rules name only metrics the server exports is checked by tests/api.rs
# (`the_alert_rules_name_only_metrics_the_server_exports`), against a live scrape.
# Called by scripts/test.sh. Prints one `test result:` line per check, like cargo.
#
# promtool comes from Debian's `prometheus` package. Installing that package would
# also set up a Prometheus service, so its .deb is downloaded and only unpacked
# into target/promtool/ (no root needed once apt's lists are there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'check_alerts.sh: %s\n' "$*" >&2; }
result() { # name, status
    if [[ $2 == 0 ]]; then echo "test result: ok. 1 passed; 0 failed; ($1)"; else echo "test result: FAILED. 0 passed; 1 failed; ($1)"; fi
}

UNPACKED=target/promtool
promtool=$(command -v promtool || true)
if [[ -z $promtool && -x $UNPACKED/usr/bin/promtool ]]; then
    promtool=$UNPACKED/usr/bin/promtool
fi
if [[ -z $promtool ]]; then
    log "promtool not found; unpacking Debian's prometheus package into $UNPACKED"
    download=$(mktemp -d /tmp/recur-promtool.XXXXXX)
    trap 'rm -rf -- "$download"' EXIT
    if ! (cd "$download" && apt-get download prometheus >&2 2>/dev/null); then
        # No package lists yet (a fresh machine): fetch them, then try again.
        sudo=()
        [[ $(id -u) == 0 ]] || sudo=(sudo)
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        (cd "$download" && apt-get download prometheus >&2)
    fi
    mkdir -p "$UNPACKED"
    dpkg-deb -x "$download"/prometheus_*.deb "$UNPACKED"
    promtool=$UNPACKED/usr/bin/promtool
fi
promtool=$(realpath "$promtool")
log "using $("$promtool" --version 2>&1 | head -n 1)"

set +e
"$promtool" check rules deploy/prometheus/recur-alerts.yml
checked=$?
# Run from the rules' folder: the test file names the rules file relative to itself.
(cd deploy/prometheus && "$promtool" test rules recur-alerts.test.yml) 2>&1
tested=$?
set -e
result "promtool check rules" "$checked"
result "promtool test rules" "$tested"
[[ $checked == 0 && $tested == 0 ]]
