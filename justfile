# Everyday recipes. `just` is optional: each recipe is one plain command.

# The whole test suite (finds or starts PostgreSQL).
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# Format and lint as CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# The billing simulation on a fresh embedded ledger.
demo *ARGS:
    cargo run --release -p recur-gateway --bin recur -- demo {{ARGS}}

# The ledger benchmark; BACKEND is postgres or sqlite.
bench-ledger BACKEND="postgres" WORKLOAD="all" ROUNDS="3":
    cargo run --release -p recur-gateway --bin recur -- bench ledger --backend {{BACKEND}} --workload {{WORKLOAD}} --rounds {{ROUNDS}}

# Verify the ledger at DATABASE_URL (or ./recur.sqlite).
verify:
    cargo run --release -p recur-gateway --bin recur -- ledger verify

# The command API benchmark; BACKEND is postgres or sqlite.
bench-api BACKEND="postgres" ITERATIONS="500":
    cargo run --release -p recur-gateway --bin recur -- bench api --backend {{BACKEND}} --iterations {{ITERATIONS}}

# The projections benchmark (a 1,000,000-event demo ledger, made once and kept); BACKEND is postgres or sqlite.
bench-projections BACKEND="sqlite":
    cargo run --release -p recur-gateway --bin recur -- bench projections --backend {{BACKEND}}

# Serve the command API on a test clock (set RECUR_ADMIN_KEY first).
serve *ARGS:
    cargo run --release -p recur-gateway --bin recur -- serve --test-clock {{ARGS}}
