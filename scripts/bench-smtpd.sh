#!/usr/bin/env bash
# Intake benchmark, side by side in one run: Postfix smtp-source (S sessions, M messages of
# 4 KiB, a new connection per message) against smtpd durable, smtpd --no-fsync and Postfix's
# smtp-sink (which discards); then smtpd's RSS holding 10,000 idle connections.
# usage: scripts/bench-smtpd.sh [SESSIONS] [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-50}
M=${2:-20000}
bash scripts/install-peers.sh
cargo build --release -p smtpd --quiet
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/bench-smtpd.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

run_source() { # name port
  local t0 t1
  t0=$(date +%s.%N)
  /usr/sbin/smtp-source -s "$S" -m "$M" -l 4096 -f bench@bench.test -t rcpt@bench.test 127.0.0.1:"$2"
  t1=$(date +%s.%N)
  python3 -c "import sys; e=$t1-$t0; print(f'| $1 | {e:.2f} | {$M/e:,.0f} |')"
}

echo "| server ($S sessions, $M x 4 KiB) | seconds | msg/s |"
echo "|---|---|---|"
p=$(port); ./target/release/smtpd --maildir "$work/durable" --listen 127.0.0.1:$p 2>"$work/durable.log" & pids+=($!)
wait_port $p; run_source "smtpd (fsync before 250)" $p
p=$(port); ./target/release/smtpd --maildir "$work/nofsync" --listen 127.0.0.1:$p --no-fsync 2>"$work/nofsync.log" & pids+=($!)
wait_port $p; run_source "smtpd --no-fsync" $p
p=$(port); /usr/sbin/smtp-sink -u nobody 127.0.0.1:$p 1000 & pids+=($!)
wait_port $p; run_source "Postfix smtp-sink (discards)" $p
echo
echo "stored: durable $(ls "$work/durable/new" | wc -l), no-fsync $(ls "$work/nofsync/new" | wc -l)"

p=$(port); ./target/release/smtpd --maildir "$work/idle" --listen 127.0.0.1:$p 2>"$work/idle.log" & pids+=($!)
wait_port $p
echo "smtpd idle connections: $(python3 scripts/idle_rss.py 127.0.0.1 $p 10000 ${pids[-1]})"
cleanup
# Delete later, not now: deleting then creating many files slows ext4 for a minute.
echo "(work files in $work; remove when done)"
