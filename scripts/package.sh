#!/usr/bin/env bash
# Builds the Debian package target/debian/smtpd_*.deb: the binaries, then the man pages and
# shell completions from the clap definitions (packaging/docgen), then `cargo deb` with the
# metadata in server/Cargo.toml (units from packaging/systemd, maintainer scripts from
# packaging/debian). PROFILE=dev packages the debug build (the package test: no release build).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
dir=$profile
[ "$profile" = dev ] && dir=debug
command -v cargo-deb >/dev/null 2>&1 || { echo "package.sh: cargo-deb is required (scripts/install-peers.sh)" >&2; exit 1; }
# SKIP_BUILD=1: the binaries are built already (the package test runs inside cargo test).
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --locked --profile "$profile" --workspace --bins
rm -rf target/docgen
"target/$dir/docgen" target/docgen
gzip -9n target/docgen/man/*.8
mkdir -p target/debian
cargo deb -p smtpd --no-build --profile "$profile" --locked -o target/debian/
