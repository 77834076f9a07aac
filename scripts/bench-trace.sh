#!/usr/bin/env bash
# The cost of the live trace (issue 14, test 6), in one run: smtp-stress with 200 connections
# and no error against smtpd --no-fsync (CPU-bound, where a cost would show), once with no
# control client and once with `smtpctl trace` attached and reading (its output to a file), in
# ROUNDS rounds of alternating order (off/on, then on/off: drift of a shared machine's load
# hits both sides). Each run gets a fresh smtpd, port and Maildir, and the same seed.
# Prints a markdown table: delivered msg/s and operations/s per run, trace lines received and
# events dropped, the means, and on/off; plus the load average before and after.
# usage: scripts/bench-trace.sh [SECS=10] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-10}
ROUNDS=${2:-2}
SEED=0x5eed
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
cargo build --release --quiet -p smtpd -p smtp-stress >&2
ulimit -n "$(ulimit -Hn)"
SMTPD=$ROOT/target/release/smtpd
SMTPCTL=$ROOT/target/release/smtpctl
STRESS=$ROOT/target/release/smtp-stress

WORK=$(mktemp -d /tmp/bench-trace.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

declare -A SUM=([off]=0 [on]=0)
ROWS=()
run() { # ROUND MODE
  local r=$1 mode=$2 p md out rate ops lines dropped tpid=""
  p=$(free_port)
  md=$WORK/$r-$mode
  "$SMTPD" --maildir "$md" --listen 127.0.0.1:"$p" --no-fsync --postmaster postmaster@bench.test \
    2>"$WORK/smtpd-$r-$mode.log" &
  local spid=$!
  PIDS+=("$spid")
  wait_until 20 "smtpd to listen" listening_on "$p"
  if [ "$mode" = on ]; then
    wait_until 20 "the control socket" test -S "$md/.smtpd/control"
    "$SMTPCTL" --maildir "$md" trace >"$WORK/trace-$r.txt" &
    tpid=$!
    PIDS+=("$tpid")
    wait_until 20 "smtpctl trace to subscribe" grep -q '^-- tracing' "$WORK/trace-$r.txt"
  fi
  out=$("$STRESS" --connections 200 --duration "$SECS" --error-rate 0 --seed "$SEED" \
    --maildir "$md" 127.0.0.1:"$p" 2>>"$WORK/stress.err")
  rate=$(sed -nE 's/.*messages delivered [0-9]+ \(([0-9.]+)\/s\).*/\1/p' <<<"$out")
  ops=$(sed -nE 's/.*operations [0-9]+ \(([0-9.]+) ops\/s\).*/\1/p' <<<"$out")
  grep -q '^mismatches: 0$' <<<"$out" || { echo "smtp-stress saw mismatches:" >&2; echo "$out" >&2; exit 1; }
  lines=- dropped=-
  if [ -n "$tpid" ]; then
    kill "$tpid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
    lines=$(grep -c '^[0-9]' "$WORK/trace-$r.txt" || true)
    dropped=$(sed -nE 's/^-- dropped ([0-9]+) events.*/\1/p' "$WORK/trace-$r.txt" | awk '{s+=$1} END {print s+0}')
  fi
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  rm -rf "$md" "$WORK/trace-$r.txt"
  SUM[$mode]=$(python3 -c "print(${SUM[$mode]} + $rate)")
  ROWS+=("| $r | $mode | $rate | $ops | $lines | $dropped |")
}

L0=$(loadavg)
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run "$r" off; run "$r" on; else run "$r" on; run "$r" off; fi
done
L1=$(loadavg)

echo "## smtpd intake with and without a trace subscriber (smtp-stress, 200 connections, ${SECS} s per run, --no-fsync)"
echo
echo "| round | trace | msg/s | ops/s | trace lines | dropped |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
python3 - "${SUM[off]}" "${SUM[on]}" "$ROUNDS" <<'PY'
import sys
off, on, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(f"mean msg/s: off {off/n:,.0f}, on {on/n:,.0f}; on/off = {on/off:.3f}")
PY
echo "load average: before $L0, after $L1 (a shared machine: compare the two sides of one run only)"
