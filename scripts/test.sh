#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real peers the tests talk to, checks
# formatting and lints, builds the binaries, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-peers.sh
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Integration tests spawn the real binaries: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
