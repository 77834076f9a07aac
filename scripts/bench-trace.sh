#!/usr/bin/env bash
# The cost of the live trace and the metrics (issue 14, test 6 and "Measure"), in one run:
# smtp-stress with 200 connections and no error against smtpd --no-fsync (CPU-bound, where a
# cost would show), with no control client and no exporter (off), with `smtpctl trace` attached
# and reading, its output to a file (trace), and with the trace plus `--metrics` scraped by curl
# every second (all), in ROUNDS rounds of rotating order (drift of a shared machine's load hits
# every side). Each run gets a fresh smtpd, port and Maildir, and the same seed.
# Prints a markdown table: delivered msg/s and operations/s per run, trace lines received and
# events dropped, scrapes, the means, and trace/off and all/off; plus the load average.
# usage: scripts/bench-trace.sh [SECS=10] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-10}
ROUNDS=${2:-3}
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

declare -A SUM=([off]=0 [trace]=0 [all]=0)
ROWS=()
run() { # ROUND MODE
  local r=$1 mode=$2 p mp md out rate ops lines dropped scrapes=- tpid="" cpid="" metrics=()
  p=$(free_port)
  md=$WORK/$r-$mode
  if [ "$mode" = all ]; then
    mp=$(free_port)
    metrics=(--metrics 127.0.0.1:"$mp")
  fi
  "$SMTPD" --maildir "$md" --listen 127.0.0.1:"$p" --no-fsync --postmaster postmaster@bench.test \
    "${metrics[@]}" 2>"$WORK/smtpd-$r-$mode.log" &
  local spid=$!
  PIDS+=("$spid")
  wait_until 20 "smtpd to listen" listening_on "$p"
  if [ "$mode" = all ]; then
    wait_until 20 "the metrics exporter" curl -sf -o /dev/null "http://127.0.0.1:$mp/metrics"
    : >"$WORK/scrapes-$r"
    ( while curl -sf -o /dev/null "http://127.0.0.1:$mp/metrics"; do echo >>"$WORK/scrapes-$r"; sleep 1; done ) &
    cpid=$!
    PIDS+=("$cpid")
  fi
  if [ "$mode" != off ]; then
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
  if [ -n "$cpid" ]; then
    kill "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    scrapes=$(wc -l <"$WORK/scrapes-$r")
  fi
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
  ROWS+=("| $r | $mode | $rate | $ops | $lines | $dropped | $scrapes |")
}

L0=$(loadavg)
for r in $(seq "$ROUNDS"); do
  case $((r % 3)) in
    1) run "$r" off; run "$r" trace; run "$r" all ;;
    2) run "$r" trace; run "$r" all; run "$r" off ;;
    *) run "$r" all; run "$r" off; run "$r" trace ;;
  esac
done
L1=$(loadavg)

echo "## smtpd intake with and without a trace subscriber and metrics (smtp-stress, 200 connections, ${SECS} s per run, --no-fsync)"
echo
echo "| round | mode | msg/s | ops/s | trace lines | dropped | scrapes |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
python3 - "${SUM[off]}" "${SUM[trace]}" "${SUM[all]}" "$ROUNDS" <<'PY'
import sys
off, trace, all_ = (float(a) for a in sys.argv[1:4])
n = int(sys.argv[4])
print(f"mean msg/s: off {off/n:,.0f}, trace {trace/n:,.0f}, trace + metrics {all_/n:,.0f}; "
      f"trace/off = {trace/off:.3f}, all/off = {all_/off:.3f}")
PY
echo "load average: before $L0, after $L1 (a shared machine: compare the two sides of one run only)"
