#!/usr/bin/env bash
# Runs Recur's whole test suite: `bash scripts/test.sh [extra cargo test args]`.
#
# The Postgres tests need a server whose URL may CREATE DATABASE (each test
# makes its own uniquely named database). This script finds or starts one so
# that a fresh Debian 12 machine with only Rust installed can run everything:
#
#   1. DATABASE_URL, if set, is used as is.
#   2. Otherwise a server on 127.0.0.1:5432 that lets user `postgres` in
#      without a password (the CI machine's setup) is used.
#   3. Otherwise a throwaway PostgreSQL is started in a temp dir on a free
#      port (installing Debian's packages first if needed), and removed on
#      exit whatever the outcome.
#
# The backup tests run pg_dump, pg_restore, psql and sqlite3: they are
# installed (postgresql-client, sqlite3) if missing. The update-card page's
# test drives headless Chromium: Debian's `chromium` is installed if missing
# and RECUR_TEST_CHROMIUM is exported (the test fails without it).
#
# Environment knobs:
#   RECUR_TEST_THROWAWAY_PG=1  always use a throwaway server, ignoring
#                              DATABASE_URL and the server on 5432 (isolated
#                              runs, and testing this script).
#   RECUR_TEST_NATS=0          do not provide NATS (NATS_URL); by default it is
#                              found or started like PostgreSQL (the relay tests need it).
#   RECUR_TEST_STRIPE=0        do not provide the local Stripe fake (STRIPE_API_BASE,
#                              STRIPE_SECRET_KEY); by default localstripe is installed
#                              in a venv under target/ and our launcher
#                              (scripts/localstripe/launcher.py) is started on
#                              127.0.0.1 for the Stripe tests, and stopped on exit.
#   RECUR_TEST_SMTP=0          do not provide the SMTP test server (RECUR_TEST_SMTP_URL,
#                              RECUR_TEST_SMTP_DIR); by default aiosmtpd is installed in
#                              the same venv and our sink (scripts/smtp/sink.py) is
#                              started on 127.0.0.1 for the email tests, storing each
#                              message as a file in a temp dir, and stopped on exit.
#                              Both variables set in the environment: used as they are.
#   RECUR_TEST_CMD='...'       run this bash command instead of the cargo
#                              commands, with DATABASE_URL (and NATS_URL)
#                              exported. For testing this script itself, e.g.
#                              RECUR_TEST_CMD='psql "$DATABASE_URL" -c "select 1"'
#
# Exit status is the test command's; cleanup runs regardless.
set -euo pipefail

# Run from the repo root whatever the caller's cwd, so cargo finds the workspace.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- cleanup ---------------------------------------------------------------
# Everything we start is recorded here so a single EXIT trap can undo it,
# including after a test failure or Ctrl-C.
WORK_DIR=""     # temp dir holding the throwaway servers' data, sockets, logs
PG_BIN=""       # bin dir of the PostgreSQL we start (Debian keeps it off PATH)
PG_DATA=""      # set just before our throwaway postgres is started
NATS_PID=""     # set once our throwaway nats-server has been started
STRIPE_PID=""   # set once our localstripe launcher has been started
SMTP_PID=""     # set once our SMTP sink has been started

cleanup() {
    local rc=$?
    # Cleanup must never mask the tests' exit status, so nothing here may fail.
    set +e
    if [[ -n $PG_DATA ]]; then
        as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DATA" stop -m fast -w >/dev/null 2>&1 \
            || log "warning: could not stop throwaway postgres ($PG_DATA)"
    fi
    if [[ -n $NATS_PID ]]; then
        kill "$NATS_PID" 2>/dev/null
        wait "$NATS_PID" 2>/dev/null
    fi
    if [[ -n $STRIPE_PID ]]; then
        kill "$STRIPE_PID" 2>/dev/null
        wait "$STRIPE_PID" 2>/dev/null
    fi
    if [[ -n $SMTP_PID ]]; then
        kill "$SMTP_PID" 2>/dev/null
        wait "$SMTP_PID" 2>/dev/null
    fi
    if [[ -n $WORK_DIR ]]; then
        rm -rf -- "$WORK_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
# Turn signals into a normal exit so the EXIT trap runs (bash does not run it
# on a fatal signal by itself).
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- helpers ---------------------------------------------------------------
is_root() { [[ $(id -u) -eq 0 ]]; }

# apt needs root; a normal user is expected to have sudo. `env` carries
# DEBIAN_FRONTEND through sudo's environment reset.
apt_install() {
    local -a sudo=()
    if ! is_root; then
        command -v sudo >/dev/null || die "need root or sudo to apt-get install $*"
        sudo=(sudo)
    fi
    log "installing Debian packages: $*"
    # apt's chatter goes to stderr: callers may run inside $(...) to capture a path.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}

# initdb and postgres refuse to run as root; as root we borrow the `postgres`
# system user that Debian's packages create. A normal user runs them directly.
# cd into the work dir so the postgres user isn't stuck in an unreadable cwd.
as_pg_user() {
    if is_root; then
        (cd "$WORK_DIR" && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# True if something accepts TCP connections on 127.0.0.1:$1. Uses bash's
# /dev/tcp so it works on minimal images without ss or python3.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# First port from $1 upward that nothing listens on. Racy in theory, but the
# range is far from the usual services and servers fail loudly if it's taken.
free_port() {
    local p
    for ((p = $1; p < $1 + 200; p++)); do
        port_in_use "$p" || { echo "$p"; return 0; }
    done
    die "no free port in $1..$(($1 + 199))"
}

ensure_work_dir() {
    [[ -n $WORK_DIR ]] && return 0
    # Always under /tmp rather than $TMPDIR: the postgres user must be able to
    # reach it when we run as root, and the unix socket path has a ~100 byte limit.
    WORK_DIR=$(mktemp -d /tmp/recur-test.XXXXXX)
}

# URL for logs: drop any password, in the userinfo or as a query parameter.
redact_url() {
    sed -E -e 's#^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*):[^@/]*@#\1@#' \
        -e 's#&password=[^&]*##g' -e 's#\?password=[^&]*&?#?#' <<<"$1"
}

# --- PostgreSQL ------------------------------------------------------------

# Succeeds if $1 connects without a password prompt and may create databases,
# i.e. is good enough for the tests.
pg_url_usable() {
    local ok
    ok=$(PGCONNECT_TIMEOUT=5 psql "$1" -w -X -A -t -q -c \
        "select rolcreatedb or rolsuper from pg_roles where rolname = current_user" \
        2>/dev/null) || return 1
    [[ $ok == t ]]
}

# Probe for the CI setup: a server on 127.0.0.1:5432 with trust auth for
# `postgres`. CI runs it without necessarily exporting DATABASE_URL.
probe_local_pg() {
    local url=postgres://postgres@127.0.0.1:5432/postgres
    port_in_use 5432 || return 1
    if ! command -v psql >/dev/null; then
        # Something listens but we can't talk to it yet; the client is small.
        apt_install postgresql-client
    fi
    if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432 -t 5; then
        log "127.0.0.1:5432 is open but not accepting PostgreSQL connections"
        return 1
    fi
    if ! pg_url_usable "$url"; then
        log "PostgreSQL on 127.0.0.1:5432 does not let user postgres in without a password (or lacks CREATEDB); not using it"
        return 1
    fi
    log "found PostgreSQL on 127.0.0.1:5432 with trust auth; using it (set DATABASE_URL to override)"
    export DATABASE_URL=$url
}

# Directory with initdb/pg_ctl (newest installed version); installs Debian's
# server packages if there is none. Those packages may also create and start
# a system cluster on 5432 (with password auth over TCP); we leave it alone and
# don't use it, rather than editing the machine's postgresql-common config.
pg_bindir() {
    local -a found
    shopt -s nullglob
    found=(/usr/lib/postgresql/*/bin/initdb)
    if ((${#found[@]} == 0)); then
        apt_install postgresql
        found=(/usr/lib/postgresql/*/bin/initdb)
    fi
    shopt -u nullglob
    ((${#found[@]} > 0)) || die "initdb still not found under /usr/lib/postgresql/*/bin"
    dirname "$(printf '%s\n' "${found[@]}" | sort -V | tail -n 1)"
}

start_throwaway_pg() {
    local bindir port
    bindir=$(pg_bindir)
    PG_BIN=$bindir
    if is_root; then
        id -u postgres >/dev/null 2>&1 \
            || die "running as root but there is no 'postgres' user to run the server as"
    fi
    ensure_work_dir
    mkdir -p "$WORK_DIR/pg-sock"
    if is_root; then
        chown -R postgres: "$WORK_DIR"
    fi

    # UTF8 with the C locale: deterministic ordering, whatever the host locale.
    # --no-sync and the fsync settings below: durability is pointless for a
    # database deleted minutes later, and they speed the tests up.
    as_pg_user "$bindir/initdb" -D "$WORK_DIR/pg-data" -U postgres -A trust \
        -E UTF8 --no-locale --no-sync >"$WORK_DIR/initdb.log" 2>&1 \
        || { cat "$WORK_DIR/initdb.log" >&2; die "initdb failed"; }

    port=$(free_port 55432)
    # Recorded before starting: if start half-fails, cleanup still tries a stop
    # before deleting the data dir from under a live server.
    PG_DATA=$WORK_DIR/pg-data
    # Own socket dir so we never collide with a system server's /var/run/postgresql.
    if ! as_pg_user "$bindir/pg_ctl" -D "$WORK_DIR/pg-data" -l "$WORK_DIR/postgres.log" -w \
        -o "-p $port -k $WORK_DIR/pg-sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null; then
        tail -n 30 "$WORK_DIR/postgres.log" >&2 || true
        die "throwaway PostgreSQL failed to start on port $port"
    fi
    export DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres
    log "started throwaway PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $WORK_DIR, removed on exit)"
}

ensure_pg() {
    if [[ ${RECUR_TEST_THROWAWAY_PG:-} == 1 ]]; then
        log "RECUR_TEST_THROWAWAY_PG=1: using a throwaway PostgreSQL"
        start_throwaway_pg
    elif [[ -n ${DATABASE_URL:-} ]]; then
        log "using DATABASE_URL from the environment"
    elif ! probe_local_pg; then
        log "no usable PostgreSQL on 127.0.0.1:5432; starting a throwaway one"
        start_throwaway_pg
    fi
    log "DATABASE_URL=$(redact_url "$DATABASE_URL")"
}

# --- backup tools (tests/backup_restore.rs runs them as docs/operations.md does)

# pg_dump, pg_restore and psql (Debian: postgresql-client) and the sqlite3 shell;
# installed if missing. A pg_dump older than the server refuses to dump it, so
# that is checked here, with a clear message, rather than deep in a test.
ensure_backup_tools() {
    local tool server_major dump_major
    for tool in pg_dump pg_restore psql; do
        command -v "$tool" >/dev/null || { apt_install postgresql-client; break; }
    done
    command -v sqlite3 >/dev/null || apt_install sqlite3
    for tool in pg_dump pg_restore psql sqlite3; do
        command -v "$tool" >/dev/null || die "$tool not found after install (the backup tests need it)"
    done
    server_major=$(psql "$DATABASE_URL" -w -X -A -t -q -c "show server_version_num") \
        || die "cannot ask the PostgreSQL server for its version"
    server_major=$((server_major / 10000))
    dump_major=$(pg_dump --version | sed -E 's/^[^0-9]*([0-9]+).*/\1/')
    ((dump_major >= server_major)) \
        || die "pg_dump $dump_major is older than the PostgreSQL $server_major server; install postgresql-client-$server_major"
    log "backup tools: pg_dump $dump_major (server $server_major), sqlite3 $(sqlite3 --version | cut -d' ' -f1)"
}

# --- Chromium (tests/update_card.rs renders the page in headless Chromium) ---

# RECUR_TEST_CHROMIUM, if set, is used as is; else Debian's chromium, installed
# if missing. Only the binary is needed: the test runs it with --headless.
ensure_chromium() {
    local bin
    if [[ -n ${RECUR_TEST_CHROMIUM:-} ]]; then
        [[ -x $RECUR_TEST_CHROMIUM ]] || die "RECUR_TEST_CHROMIUM=$RECUR_TEST_CHROMIUM is not an executable"
        log "using RECUR_TEST_CHROMIUM from the environment: $RECUR_TEST_CHROMIUM"
        return 0
    fi
    bin=$(command -v chromium || true)
    if [[ -z $bin ]]; then
        apt_install chromium
        bin=$(command -v chromium) || die "chromium not found after install"
    fi
    export RECUR_TEST_CHROMIUM=$bin
    log "headless browser: $("$bin" --version 2>/dev/null | head -n 1) ($bin)"
}

# --- NATS (the relay tests; RECUR_TEST_NATS=0 skips providing it) ----------

# True if a JetStream-enabled NATS server answers on 127.0.0.1:$1: the server
# greets every client with an INFO line, which says whether JetStream is on.
nats_answers() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        IFS= read -r -t 2 line <&3
        [[ $line == INFO* && $line == *'"jetstream":true'* ]]
    ) 2>/dev/null
}

ensure_nats() {
    local bin port i
    if [[ -n ${NATS_URL:-} ]]; then
        log "using NATS_URL from the environment: $(redact_url "$NATS_URL")"
        return 0
    fi
    if nats_answers 4222; then
        export NATS_URL=nats://127.0.0.1:4222
        log "found NATS with JetStream on 127.0.0.1:4222; using it (set NATS_URL to override)"
        return 0
    fi
    # Debian puts nats-server in /usr/sbin, which a normal user's PATH lacks.
    bin=$(PATH=$PATH:/usr/sbin:/sbin command -v nats-server || true)
    if [[ -z $bin ]]; then
        apt_install nats-server
        bin=$(PATH=$PATH:/usr/sbin:/sbin command -v nats-server) || die "nats-server not found after install"
    fi
    ensure_work_dir
    mkdir -p "$WORK_DIR/nats"
    port=$(free_port 54222)
    "$bin" -js -a 127.0.0.1 -p "$port" -sd "$WORK_DIR/nats" -l "$WORK_DIR/nats.log" &
    NATS_PID=$!
    # Wait up to ~10s for it to accept clients, giving up early if it died.
    for ((i = 0; i < 50; i++)); do
        nats_answers "$port" && break
        kill -0 "$NATS_PID" 2>/dev/null || break
        sleep 0.2
    done
    if ! nats_answers "$port"; then
        tail -n 30 "$WORK_DIR/nats.log" >&2 || true
        die "throwaway nats-server failed to start on port $port"
    fi
    export NATS_URL=nats://127.0.0.1:$port
    log "started throwaway nats-server on 127.0.0.1:$port"
}

# --- localstripe (the Stripe tests; RECUR_TEST_STRIPE=0 skips providing it) -

LOCALSTRIPE_VERSION=1.15.10
LOCALSTRIPE_VENV=target/localstripe-venv

# True if the launcher answers an authenticated API call on 127.0.0.1:$1.
stripe_answers() {
    "$LOCALSTRIPE_VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
request = urllib.request.Request(
    'http://127.0.0.1:%s/v1/balance' % sys.argv[1],
    headers={'Authorization': 'Bearer sk_test_recur'})
urllib.request.urlopen(request, timeout=2).read()
PY
}

# Installs PyPI package $1 at version $2 into the test venv (made on first
# use; localstripe and aiosmtpd share it) unless that version is there.
venv_install() {
    if "$LOCALSTRIPE_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; then
        return 0
    fi
    log "installing $1 $2 into $LOCALSTRIPE_VENV"
    if [[ ! -x $LOCALSTRIPE_VENV/bin/python ]] && ! python3 -m venv "$LOCALSTRIPE_VENV" 2>/dev/null; then
        apt_install python3-venv
        python3 -m venv "$LOCALSTRIPE_VENV"
    fi
    "$LOCALSTRIPE_VENV/bin/pip" install -q "$1==$2" || die "pip could not install $1==$2"
}

ensure_stripe() {
    local port i
    venv_install localstripe "$LOCALSTRIPE_VERSION"
    ensure_work_dir
    port=$(free_port 58420)
    "$LOCALSTRIPE_VENV/bin/python" scripts/localstripe/launcher.py --port "$port" \
        >"$WORK_DIR/localstripe.log" 2>&1 &
    STRIPE_PID=$!
    # Wait up to ~20s for it to answer, giving up early if it died.
    for ((i = 0; i < 100; i++)); do
        stripe_answers "$port" && break
        kill -0 "$STRIPE_PID" 2>/dev/null || break
        sleep 0.2
    done
    if ! stripe_answers "$port"; then
        tail -n 30 "$WORK_DIR/localstripe.log" >&2 || true
        die "the localstripe launcher failed to start on port $port"
    fi
    export STRIPE_API_BASE=http://127.0.0.1:$port
    # Tests that need a fake of their own (the reconciliation reads the whole
    # account) start the launcher with this Python.
    export RECUR_LOCALSTRIPE_PYTHON=$PWD/$LOCALSTRIPE_VENV/bin/python
    # A test key for the fake: never a real account's.
    export STRIPE_SECRET_KEY=sk_test_recur
    log "started localstripe $LOCALSTRIPE_VERSION (scripts/localstripe/launcher.py) on 127.0.0.1:$port"
}

# --- SMTP (the email tests; RECUR_TEST_SMTP=0 skips providing it) ----------

AIOSMTPD_VERSION=1.4.6

# True if an SMTP server greets on 127.0.0.1:$1 (a 220 line).
smtp_answers() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        IFS= read -r -t 2 line <&3
        [[ $line == 220* ]]
    ) 2>/dev/null
}

ensure_smtp() {
    local port i
    if [[ -n ${RECUR_TEST_SMTP_URL:-} && -n ${RECUR_TEST_SMTP_DIR:-} ]]; then
        log "using RECUR_TEST_SMTP_URL and RECUR_TEST_SMTP_DIR from the environment"
        return 0
    fi
    venv_install aiosmtpd "$AIOSMTPD_VERSION"
    ensure_work_dir
    mkdir -p "$WORK_DIR/mail"
    port=$(free_port 52525)
    "$LOCALSTRIPE_VENV/bin/python" scripts/smtp/sink.py --port "$port" --dir "$WORK_DIR/mail" \
        >"$WORK_DIR/smtp.log" 2>&1 &
    SMTP_PID=$!
    # Wait up to ~10s for its greeting, giving up early if it died.
    for ((i = 0; i < 50; i++)); do
        smtp_answers "$port" && break
        kill -0 "$SMTP_PID" 2>/dev/null || break
        sleep 0.2
    done
    if ! smtp_answers "$port"; then
        tail -n 30 "$WORK_DIR/smtp.log" >&2 || true
        die "the SMTP sink (aiosmtpd) failed to start on port $port"
    fi
    export RECUR_TEST_SMTP_URL=smtp://127.0.0.1:$port
    export RECUR_TEST_SMTP_DIR=$WORK_DIR/mail
    log "started aiosmtpd $AIOSMTPD_VERSION (scripts/smtp/sink.py) on 127.0.0.1:$port, mail in $RECUR_TEST_SMTP_DIR"
}

# --- main ------------------------------------------------------------------

if [[ -n ${RECUR_TEST_CMD:-} ]]; then
    ensure_pg
    if [[ ${RECUR_TEST_NATS:-1} == 1 ]]; then ensure_nats; fi
    if [[ ${RECUR_TEST_STRIPE:-1} == 1 ]]; then ensure_stripe; fi
    if [[ ${RECUR_TEST_SMTP:-1} == 1 ]]; then ensure_smtp; fi
    log "RECUR_TEST_CMD set: running it instead of cargo"
    bash -c "$RECUR_TEST_CMD"
    exit
fi

# rustup's installer only edits shell profiles; a non-login shell (sudo, CI)
# may not have ~/.cargo/bin on PATH yet.
if ! command -v cargo >/dev/null && [[ -f ${CARGO_HOME:-$HOME/.cargo}/env ]]; then
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
fi
if ! command -v cargo >/dev/null; then
    log "error: cargo not found. Install Rust with rustup:"
    log "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y"
    log "  . \"\$HOME/.cargo/env\""
    exit 1
fi
for c in fmt clippy; do
    cargo "$c" --version >/dev/null 2>&1 \
        || die "cargo $c is missing; install it with: rustup component add rustfmt clippy"
done

# Formatting needs neither a build nor a database: fail fast on it.
cargo fmt --all -- --check
# The database comes before clippy in case compile-time checked queries
# (sqlx macros) ever need it during the build.
ensure_pg
ensure_backup_tools
ensure_chromium
if [[ ${RECUR_TEST_NATS:-1} == 1 ]]; then ensure_nats; fi
if [[ ${RECUR_TEST_STRIPE:-1} == 1 ]]; then ensure_stripe; fi
if [[ ${RECUR_TEST_SMTP:-1} == 1 ]]; then ensure_smtp; fi
# The Stripe gateway is a cargo feature of the `recur` binary, off by default
# (its build is long); the suite builds, lints and tests it.
FEATURES=(--features recur-gateway/stripe)
cargo clippy --workspace --all-targets --locked "${FEATURES[@]}" -- -D warnings
# …and the lean build without it (its "built without Stripe support" paths).
cargo clippy -p recur-gateway --all-targets --locked -- -D warnings
# The suite's status becomes the script's (the EXIT trap preserves it). Cargo
# closes on the last test binary's own line (often a crate with no doc tests),
# so a total for the whole suite is printed last.
test_log=$(mktemp /tmp/recur-cargo-test.XXXXXX)
set +e
cargo test --workspace --locked "${FEATURES[@]}" "$@" 2>&1 | tee "$test_log"
status=${PIPESTATUS[0]}
if [[ $status == 0 ]]; then
    # The API contract, by independent tools against a running `recur serve`.
    bash scripts/api_contract.sh 2>&1 | tee -a "$test_log"
    status=${PIPESTATUS[0]}
fi
if [[ $status == 0 ]]; then
    # The alert rules in deploy/, by promtool.
    bash scripts/check_alerts.sh 2>&1 | tee -a "$test_log"
    status=${PIPESTATUS[0]}
fi
set -e
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
rm -f -- "$test_log"
exit "$status"
