#!/usr/bin/env bash
# The API's contract, checked by independent tools against a running server:
#   1. openapi-spec-validator validates GET /openapi.json (OpenAPI 3.1);
#   2. schemathesis generates requests from that document and fails on any 5xx
#      or any response that contradicts the document.
# Called by scripts/test.sh after `cargo test` (which builds target/debug/recur).
# Prints one `test result:` line per check, like cargo, so the suite total counts them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'api_contract.sh: %s\n' "$*" >&2; }
result() { # name, status
    if [[ $2 == 0 ]]; then echo "test result: ok. 1 passed; 0 failed; ($1)"; else echo "test result: FAILED. 0 passed; 1 failed; ($1)"; fi
}

VALIDATOR_VERSION=0.9.0
SCHEMATHESIS_VERSION=4.32.5
VENV=target/api-contract-venv
BIN=target/debug/recur
[[ -x $BIN ]] || cargo build --locked -p recur-gateway --bin recur

if [[ ! -x $VENV/bin/schemathesis ]]; then
    log "installing openapi-spec-validator $VALIDATOR_VERSION and schemathesis $SCHEMATHESIS_VERSION into $VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian keeps venv in a separate package.
        if [[ $(id -u) == 0 ]]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        else
            sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        fi
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q "openapi-spec-validator==$VALIDATOR_VERSION" "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d /tmp/recur-api-contract.XXXXXX)
server_pid=""
cleanup() {
    # Keep the checks' status: the server's own (killed) status must not replace it.
    local rc=$?
    set +e
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
    rm -rf -- "$work"
    exit "$rc"
}
trap cleanup EXIT

key="contract-admin-key-$(date +%s%N)"
# The rate limits stay on (their 429 is in the document) but far above what
# schemathesis sends with one key from one address, so they never refuse it.
RECUR_ADMIN_KEY=$key "$BIN" serve --listen 127.0.0.1:0 --test-clock \
    --rate-limit-per-key-per-s 1000000 --rate-limit-per-key-burst 1000000 \
    --rate-limit-per-address-per-s 1000000 --rate-limit-per-address-burst 1000000 \
    --database "sqlite:$work/contract.sqlite" --create >"$work/out.txt" 2>"$work/err.txt" &
server_pid=$!
for _ in $(seq 1 100); do
    grep -q "listening on" "$work/out.txt" 2>/dev/null && break
    sleep 0.1
done
base=$(sed -n 's#.*listening on \(http://[^ ]*\).*#\1#p' "$work/out.txt" | head -n 1)
[[ -n $base ]] || { cat "$work/err.txt" >&2; log "recur serve did not start"; exit 1; }
# Python rather than curl: the venv is there anyway, curl may not be.
"$VENV/bin/python" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \
    "$base/openapi.json" >"$work/openapi.json"

set +e
"$VENV/bin/openapi-spec-validator" "$work/openapi.json"
validated=$?
# Run from the scratch folder: schemathesis keeps a cache in its working directory.
(cd "$work" && "$OLDPWD/$VENV/bin/schemathesis" run "$base/openapi.json" --url "$base" \
    -H "Authorization: Bearer $key" \
    --checks not_a_server_error,response_schema_conformance \
    --max-examples 25 --seed 20261125 --no-color)
fuzzed=$?
set -e
result "openapi-spec-validator" "$validated"
result "schemathesis" "$fuzzed"
[[ $validated == 0 && $fuzzed == 0 ]]
