#!/bin/sh
# Deliveries per second of 4 KiB messages into a Maildir: no fsync, fsync per message, batch
# commit of 64 (and one syncfs per batch for comparison). Prints a markdown table.
#
# Usage: scripts/bench-maildir.sh [SCALE] [BASE_DIR]
# Each run writes into a fresh directory name and deletes it only afterwards: on this
# machine's ext4, creating files right after deleting many is several times slower for a
# minute or more (PEERS.md), so never reuse or pre-clean the directory of a previous run.
set -eu
cd "$(dirname "$0")/.."
scale=${1:-1}
base=${2:-${TMPDIR:-/tmp}}
dir="$base/bench-maildir.$(date +%s).$$"

trap 'rm -rf "$dir"' EXIT
cargo run --release -q -p maildir-core --example bench_delivery -- "$dir" "$scale"
