#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real peers the tests talk to, checks
# formatting and lints, builds the binaries, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-peers.sh
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# Integration tests spawn the real binaries: build them first.
cargo build --workspace --bins --locked
# A short run of every fuzz target (cargo-fuzz; installed under CI). FUZZ_SECONDS=0 skips it.
if [ "${FUZZ_SECONDS:-10}" != 0 ]; then
    FUZZ_SECONDS=${FUZZ_SECONDS:-10} bash scripts/fuzz-smoke.sh
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every peer was installed above: a test that finds one missing fails instead of skipping.
export REQUIRE_PEERS=1
set +e
# --no-fail-fast: a failing test binary must not hide the ones after it; the closing line
# counts the whole suite.
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary, the last often a
# doc-test run with nothing in it).
# A test binary that crashed (a signal, an abort) prints no result line: it counts as one failure.
awk '/^test result:/ { p += $4; f += $6; i += $8; if ($3 == "FAILED.") fr++ }
     /^error: test failed, to rerun pass/ { errs++ }
     END { if (errs > fr) f += errs - fr
           printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
