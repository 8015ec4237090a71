#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60): the money
# parser, the JSON bodies, the query strings (docs/security.md, "Fuzzing").
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); not
# run by CI, which runs the same parsers as bounded property tests in `cargo test`.
#   scripts/fuzz.sh [SECONDS]
#   FUZZ_BUILD=--dev scripts/fuzz.sh 10   # a quick check: a debug build, faster to build
# A crash leaves its input in fuzz/artifacts/<target>/ and stops the script
# (non-zero exit); replay it with `cargo +nightly fuzz run <target> <file>`.
# The corpora grow in fuzz/corpus/<target>/ (not committed) and are reused.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS]   (a whole number of seconds per target, at least 1)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs the nightly toolchain and cargo-fuzz: rustup toolchain install nightly; cargo install cargo-fuzz" >&2
    exit 2
fi
# Empty, or extra cargo-fuzz build options such as --dev.
read -r -a build <<<"${FUZZ_BUILD:-}"

for target in money json_body query_string; do
    echo "fuzz.sh: $target for ${seconds}s" >&2
    # -max_len bounds an input near the API's 64 KiB body limit's scale without
    # wasting time on huge inputs; -timeout flags an input that runs for seconds.
    cargo +nightly fuzz run "${build[@]}" "$target" -- \
        -max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1
done
echo "fuzz.sh: every target ran ${seconds}s without a crash" >&2
