#!/usr/bin/env bash
# What --metrics costs smtpd's intake, in one run: Postfix smtp-source (S sessions, M messages
# of 4 KiB, a new connection per message) against smtpd without --metrics and with --metrics
# scraped every second by curl (as Prometheus would, only more often), alternated for ROUNDS
# rounds so that drift in the machine's load hits both alike. --no-fsync: the intake is then
# CPU-bound, where a per-message cost shows most (with fsync the disk hides it).
# usage: scripts/bench-metrics.sh [SESSIONS] [MESSAGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
S=${1:-50}
M=${2:-10000}
R=${3:-3}
bash scripts/install-peers.sh
cargo build --release -p smtpd --quiet
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/bench-metrics.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# One run: sets RATE (msg/s), CPU (smtpd's CPU time per message, all its threads, in µs: far
# less sensitive than msg/s to what else runs on the machine) and SCRAPES.
run() { # NAME [--metrics]
  local name=$1 metrics=${2:-} p mp dir pid scraper="" t0 t1 scrapes=0
  p=$(free_port)
  dir="$work/$name"
  local extra=()
  if [ -n "$metrics" ]; then
    mp=$(free_port)
    extra=(--metrics "127.0.0.1:$mp")
  fi
  ./target/release/smtpd --maildir "$dir" --listen "127.0.0.1:$p" --no-fsync "${extra[@]}" \
    2>"$work/$name.log" &
  pid=$!
  pids+=("$pid")
  wait_until 10 "smtpd on $p" listening_on "$p"
  if [ -n "$metrics" ]; then
    wait_until 10 "metrics on $mp" listening_on "$mp"
    # Pacing, not synchronisation: one scrape a second while the load runs.
    (while curl -sf -o /dev/null "http://127.0.0.1:$mp/metrics"; do
      echo scrape >>"$work/$name.scrapes"
      sleep 1
    done) &
    scraper=$!
    pids+=("$scraper")
  fi
  t0=$(now)
  /usr/sbin/smtp-source -s "$S" -m "$M" -l 4096 -f bench@bench.test -t rcpt@bench.test \
    "127.0.0.1:$p"
  t1=$(now)
  if [ -n "$scraper" ]; then
    kill "$scraper" 2>/dev/null || true
    wait "$scraper" 2>/dev/null || true
    scrapes=$(wc -l <"$work/$name.scrapes")
    # The counters must have seen every message.
    local text
    text=$(curl -sf "http://127.0.0.1:$mp/metrics")
    grep -q "^smtpd_messages_accepted_total $M\$" <<<"$text" ||
      { echo "metrics do not show $M accepted" >&2; exit 1; }
  fi
  # utime + stime (fields 14 and 15 of /proc/PID/stat, after the command name's parenthesis).
  local ticks hz
  ticks=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')
  hz=$(getconf CLK_TCK)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  stored=$(find "$dir/new" -type f | wc -l)
  [ "$stored" -eq "$M" ] || { echo "$name: $stored of $M stored" >&2; exit 1; }
  rm -rf "$dir"
  RATE=$(python3 -c "print(f'{$M/($t1-$t0):.0f}')")
  CPU=$(python3 -c "print(f'{$ticks/$hz/$M*1e6:.1f}')")
  SCRAPES=$scrapes
}

echo "smtpd --no-fsync intake, $S sessions, $M x 4 KiB per run, $R rounds; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| round | off: msg/s | off: CPU µs/msg | on (scraped every 1 s): msg/s | on: CPU µs/msg | scrapes |"
echo "|---|---|---|---|---|---|"
offs=()
ons=()
offc=()
onc=()
for r in $(seq "$R"); do
  run "off-$r" >/dev/null
  off=$RATE
  offcpu=$CPU
  run "on-$r" --metrics >/dev/null
  offs+=("$off")
  ons+=("$RATE")
  offc+=("$offcpu")
  onc+=("$CPU")
  echo "| $r | $off | $offcpu | $RATE | $CPU | $SCRAPES |"
done
python3 - "${offs[*]}" "${ons[*]}" "${offc[*]}" "${onc[*]}" <<'PY'
import statistics, sys
off, on, offc, onc = ([float(x) for x in a.split()] for a in sys.argv[1:5])
mo, mn = statistics.mean(off), statistics.mean(on)
co, cn = statistics.median(offc), statistics.median(onc)
print(f"| mean / median | {mo:,.0f} | {co:.1f} | {mn:,.0f} | {cn:.1f} | |")
print(f"msg/s on/off {mn / mo:.3f} ({(mn / mo - 1) * 100:+.1f} %); "
      f"CPU per message on/off {cn / co:.3f} ({(cn / co - 1) * 100:+.1f} %)")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
