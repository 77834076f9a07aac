#!/usr/bin/env bash
# One-command side-by-side benchmark (issue 5). Builds release, installs the peers, and prints
# one markdown report on stdout, also written to bench-results/bench-<date>.md (gitignored),
# with a plot beside it, bench-<date>.svg (scripts/bench_plot.py: throughput against sessions
# per server, and the transaction latency histogram).
#
#  1. Intake: Postfix smtp-source, 4 KiB messages, 1 / 20 / 200 sessions, a new connection per
#     message (and -d, connection reuse, for the servers fast enough for it to matter), against
#     smtpd (fsync before 250), smtpd --sync filesystem, smtpd --no-fsync, Postfix smtp-sink (discards), a full private
#     Postfix instance delivering to Maildir (smtpd -> cleanup -> qmgr -> virtual; rate = files
#     in the Maildir over time from the first connection to the last delivery), and aiosmtpd's
#     Mailbox handler (Python mailbox.Maildir, no fsync). Every run gets a fresh server process,
#     port and Maildir name; what was stored is counted afterwards.
#  2. Relay: scripts/bench-relay.sh (smtp-relay vs Postfix to smtp-sink MX hosts); its table.
#  3. Memory: RSS (and PSS) of the server holding N idle connections, opened with a ramp of at
#     most 100 waiting greetings (scripts/idle_conns.py; asyncio's listen backlog is 100); Postfix summed over master and all its
#     children, with its default process limit (100 smtpd processes), so it admits 100.
#  4. Latency: smtp-stress, 200 connections, error rate 0, against smtpd durable.
#
# usage: scripts/bench.sh [--quick]      (root: the private Postfix instances need it)
#   --quick: 2,000 messages per intake run, 2,000 idle connections, 1,000 relayed, 5 s stress.
# knobs (environment): MSGS, SLOW_MSGS (runs against Postfix and aiosmtpd, which manage a few
#   hundred msg/s: 5,000 keeps the whole run near 10 minutes), IDLE, STRESS_SECS, RELAY_N, RELAY_RUNS, KEEP=1 (keep the work dir),
#   STORE_FS=loop (smtpd's Maildirs on a fresh ext4 image, loop device with direct I/O; STORE_FS_SIZE, 6G).
# Work files go to /tmp/bench.XXXXXX, deleted at the very end, after every measurement (deleting
# many files slows file creation on this machine's ext4 for a minute: PEERS.md).
# Only 127.0.0.0/8 is used. The machine is shared: the load average is printed with the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
if [ $QUICK = 1 ]; then
  : "${MSGS:=2000}" "${SLOW_MSGS:=500}" "${IDLE:=2000}" "${STRESS_SECS:=5}" "${RELAY_N:=1000}" "${RELAY_RUNS:=1}"
else
  : "${MSGS:=20000}" "${SLOW_MSGS:=5000}" "${IDLE:=10000}" "${STRESS_SECS:=20}" "${RELAY_N:=10000}" "${RELAY_RUNS:=1}"
fi
SESSIONS=(1 20 200)
T_START=$(date +%s)
log() { echo "[bench $(($(date +%s) - T_START))s] $*" >&2; }

log "installing peers, building release"
bash scripts/install-peers.sh >&2
cargo build --release --quiet -p smtpd -p smtp-relay -p smtp-stress >&2
ulimit -n "$(ulimit -Hn)"
SMTPD=$ROOT/target/release/smtpd
STRESS=$ROOT/target/release/smtp-stress

WORK=$(mktemp -d /tmp/bench.XXXXXX)
chmod 755 "$WORK" # Postfix's users read and write below it
# smtpd's Maildirs for the intake runs: a directory beside the others, or with STORE_FS=loop a
# fresh ext4 made for this run (a preallocated image, loop device with direct I/O), so that
# runs do not depend on what earlier ones left on the file system. The report names which.
STORES=$WORK/stores
LOOPDEV=""
mkdir -p "$STORES"
if [ "${STORE_FS:-}" = loop ]; then
  fallocate -l "${STORE_FS_SIZE:-6G}" "$WORK/stores.img"
  mkfs.ext4 -q -F "$WORK/stores.img"
  LOOPDEV=$(losetup --direct-io=on -f --show "$WORK/stores.img")
  mount "$LOOPDEV" "$STORES"
fi
mkdir -p "$ROOT/bench-results"
OUT=$ROOT/bench-results/bench-$(date +%Y%m%d-%H%M%S).md
PIDS=()
PF=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$PF" ] && [ -f "$PF/etc/main.cf" ]; then postfix -c "$PF/etc" stop >/dev/null 2>&1 || true; fi
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$LOOPDEV" ]; then umount "$STORES" 2>/dev/null || true; losetup -d "$LOOPDEV" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else echo "(work files kept in $WORK)" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 400); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; return 1; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
now() { date +%s.%N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
nfiles() { if [ -d "$1" ]; then find "$1" -maxdepth 1 -type f | wc -l; else echo 0; fi; }
rate() { python3 -c "print(round($1/($3-$2)))"; }
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
fmt() { python3 -c "print(f'{int($1):,}')"; }

declare -A R    # R[server,mode] = msg/s, or a note
declare -A NOTE # extra text in a cell
LOADS=()

# ---------- the private Postfix instance (intake to Maildir, and idle connections) ----------
PF=$WORK/postfix
PFMAIL=$WORK/pf-mail
mkdir -p "$PF/etc" "$PF/spool" "$PF/data" "$PFMAIL"
chown postfix "$PF/data"
chown nobody:nogroup "$PFMAIL"
PFPORTS=()
for _ in 1 2 3 4; do PFPORTS+=("$(port)"); done # one listener per run (fresh TIME_WAIT space)
PFIDLE=$(port)                                     # and one for the idle connections
{
  for p in "${PFPORTS[@]}" $PFIDLE; do echo "127.0.0.1:$p inet n - n - - smtpd"; done
  for s in "pickup unix n - n 60 1 pickup" "cleanup unix n - n - 0 cleanup" \
    "qmgr unix n - n 300 1 qmgr" "rewrite unix - - n - - trivial-rewrite" \
    "bounce unix - - n - 0 bounce" "defer unix - - n - 0 bounce" "trace unix - - n - 0 bounce" \
    "verify unix - - n - 1 verify" "flush unix n - n 1000? 0 flush" \
    "proxymap unix - - n - - proxymap" "smtp unix - - n - - smtp" "relay unix - - n - - smtp" \
    "showq unix n - n - - showq" "error unix - - n - - error" "retry unix - - n - - error" \
    "discard unix - - n - - discard" "local unix - n n - - local" "virtual unix - n n - - virtual" \
    "anvil unix - - n - 1 anvil" "scache unix - - n - 1 scache" "postlog unix-dgram n - n - 1 postlogd"; do
    echo "$s"
  done
} >"$PF/etc/master.cf"
# Every run sends to its own recipient rN@bench.test, stored in its own fresh Maildir rN/;
# the sender is local too, so that a bounce (if any) never waits for DNS.
{ echo "bench@bench.test bench/Maildir/"; for i in $(seq 1 9); do echo "r$i@bench.test r$i/Maildir/"; done; } >"$PF/etc/vmailbox"
cat >"$PF/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
myhostname = pf.bench.test
mydomain = bench.test
myorigin = bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_tls_security_level = none
default_process_limit = 100
virtual_mailbox_domains = bench.test
virtual_mailbox_base = $PFMAIL
virtual_mailbox_maps = texthash:$PF/etc/vmailbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
EOF
postfix -c "$PF/etc" check
postfix -c "$PF/etc" start >/dev/null 2>&1 || { echo "postfix start failed:" >&2; cat "$PF/maillog" >&2; exit 1; }
for p in "${PFPORTS[@]}" $PFIDLE; do wait_port "$p"; done
PFRUN=0

# ---------- 1. intake ----------
LOADS+=("intake start: $(loadavg)")
# Runs smtp-source; prints "SECONDS" or "ERR".
source_run() { # port sessions msgs rcpt [-d]
  local t0 t1
  t0=$(now)
  if /usr/sbin/smtp-source -s "$2" -m "$3" -l 4096 ${5:-} -f bench@bench.test -t "$4" 127.0.0.1:"$1" >>"$WORK/source.log" 2>&1; then
    t1=$(now); echo "$t0 $t1"
  else
    echo "ERR"
  fi
}
record() { # key msgs stored t0 t1 [extra]
  if [ "$4" = ERR ]; then R[$1]="smtp-source failed"; return; fi
  R[$1]=$(rate "$2" "$4" "$5")
  [ "$3" = "$2" ] || NOTE[$1]+=" stored $3/$2"
  [ -z "${6:-}" ] || NOTE[$1]+=" $6"
}

intake() { # server sessions reuse(""|-d)
  local srv=$1 s=$2 d=$3 m=$MSGS key="$1,$2$3" p pid dir t stored
  case $srv in pf|aio) m=$SLOW_MSGS ;; esac
  dir=$WORK/$srv-$s$d # a fresh name for every run
  log "intake: $srv, $s sessions${d:+ $d}, $m messages (load $(loadavg))"
  case $srv in
    durable|nofsync|syncfs)
      p=$(port)
      local opt=()
      case $srv in nofsync) opt=(--no-fsync) ;; syncfs) opt=(--sync filesystem) ;; esac
      dir=$STORES/$srv-$s$d
      "$SMTPD" --maildir "$dir" --listen 127.0.0.1:$p "${opt[@]}" 2>>"$WORK/smtpd-$srv.log" &
      pid=$!; PIDS+=($pid); wait_port $p
      read -r t0 t1 <<<"$(source_run $p "$s" $m rcpt@dst.test "$d")"
      stop $pid
      record "$key" $m "$(nfiles "$dir/new")" "$t0" "${t1:-}" ;;
    sink)
      p=$(port)
      /usr/sbin/smtp-sink -u nobody 127.0.0.1:$p 4096 2>>"$WORK/sink.log" &
      pid=$!; PIDS+=($pid); wait_port $p
      read -r t0 t1 <<<"$(source_run $p "$s" $m rcpt@dst.test "$d")"
      stop $pid
      record "$key" $m $m "$t0" "${t1:-}" ;;
    aio)
      p=$(port)
      python3 -m aiosmtpd -n -l 127.0.0.1:$p -c aiosmtpd.handlers.Mailbox "$dir" 2>>"$WORK/aiosmtpd.log" &
      pid=$!; PIDS+=($pid); wait_port $p
      read -r t0 t1 <<<"$(source_run $p "$s" $m rcpt@dst.test "$d")"
      stop $pid
      record "$key" $m "$(nfiles "$dir/new")" "$t0" "${t1:-}" ;;
    pf)
      PFRUN=$((PFRUN + 1))
      p=${PFPORTS[$(( (PFRUN - 1) % ${#PFPORTS[@]} ))]}
      local box="$PFMAIL/r$PFRUN/Maildir/new" limit=$((60 + m / 20)) end last=0 n=0
      read -r t0 t1 <<<"$(source_run $p "$s" $m "r$PFRUN@bench.test" "$d")"
      if [ "$t0" = ERR ]; then R[$key]="smtp-source failed"; return; fi
      end=$(($(date +%s) + limit))
      t=$(now)
      while n=$(nfiles "$box"); [ "$n" -lt "$m" ] && [ "$(date +%s)" -lt "$end" ]; do
        [ "$n" = "$last" ] || { last=$n; t=$(now); }
        sleep 0.2
      done
      [ "$n" = "$last" ] || t=$(now)
      R[$key]=$(rate "$n" "$t0" "$t")
      NOTE[$key]+=" delivered; $(rate $m "$t0" "$t1")/s accepted"
      [ "$n" = "$m" ] || NOTE[$key]+="; delivered only $n/$m in ${limit}s" ;;
  esac
}

for s in "${SESSIONS[@]}"; do
  for srv in durable syncfs nofsync sink pf aio; do intake $srv "$s" ""; done
done
for s in 20 200; do
  for srv in durable syncfs nofsync sink; do intake $srv "$s" -d; done
done
LOADS+=("intake end: $(loadavg)")

# ---------- 3. memory with idle connections ----------
declare -A MEM
idle() { # name port pids
  log "idle connections: $1 (load $(loadavg))"
  # At most 100 connections wait for their greeting at a time: asyncio's listen backlog is 100,
  # and a connection beyond a full accept queue (SYN cookies) can hang for good.
  MEM[$1]=$(python3 "$ROOT/scripts/idle_conns.py" 127.0.0.1 "$2" "$IDLE" "$3" --ramp 100 2>>"$WORK/idle.log" || echo failed)
}
LOADS+=("memory start: $(loadavg)")
p=$(port); "$SMTPD" --maildir "$WORK/idle-smtpd" --listen 127.0.0.1:$p 2>>"$WORK/smtpd-idle.log" &
pid=$!; PIDS+=($pid); wait_port $p; idle smtpd $p $pid; stop $pid
p=$(port); python3 -m aiosmtpd -n -l 127.0.0.1:$p -c aiosmtpd.handlers.Mailbox "$WORK/idle-aio" 2>>"$WORK/aiosmtpd.log" &
pid=$!; PIDS+=($pid); wait_port $p; idle aiosmtpd $p $pid; stop $pid
# A fresh start, so that no smtpd process left over from the intake runs counts.
postfix -c "$PF/etc" stop >/dev/null 2>&1
for _ in $(seq 100); do
  mp=$(tr -d ' \n' <"$PF/spool/pid/master.pid" 2>/dev/null || true)
  [ -n "$mp" ] && kill -0 "$mp" 2>/dev/null || break
  sleep 0.1
done
postfix -c "$PF/etc" start >/dev/null 2>&1
wait_port $PFIDLE
sleep 1
idle postfix $PFIDLE "$(tr -d ' \n' <"$PF/spool/pid/master.pid")"
postfix -c "$PF/etc" stop >/dev/null 2>&1 || true

# ---------- 4. latency under 200 concurrent sessions ----------
LOADS+=("latency start: $(loadavg)")
log "smtp-stress: 200 connections, ${STRESS_SECS}s (load $(loadavg))"
# smtp-stress sends some messages to the bare <postmaster> and expects 250 (RFC 5321 4.5.1).
p=$(port); "$SMTPD" --maildir "$WORK/stress" --listen 127.0.0.1:$p --postmaster postmaster@bench.test 2>>"$WORK/smtpd-stress.log" &
pid=$!; PIDS+=($pid); wait_port $p
STRESS_OUT=$("$STRESS" --connections 200 --duration "$STRESS_SECS" --error-rate 0 --maildir "$WORK/stress" --latencies "$WORK/latencies.txt" 127.0.0.1:$p 2>>"$WORK/stress.err" || echo "exit status $?")
stop $pid
echo "$STRESS_OUT" >"$WORK/stress.out"

# ---------- 2. relay (last: it deletes its queues, which slows file creation afterwards) ----------
LOADS+=("relay start: $(loadavg)")
log "relay: scripts/bench-relay.sh $RELAY_N $RELAY_RUNS (load $(loadavg))"
RELAY_OUT=$(bash scripts/bench-relay.sh "$RELAY_N" "$RELAY_RUNS" 2>&1) || RELAY_OUT+=$'\n'"(bench-relay.sh failed: exit $?)"
echo "$RELAY_OUT" >"$WORK/relay.out"
LOADS+=("end: $(loadavg)")

# ---------- the report ----------
cell() { # key
  local v=${R[$1]:-} base=${R[durable,${1#*,}]:-}
  if [ -z "$v" ]; then echo "—"; return; fi
  if [[ "$v" =~ ^[0-9]+$ ]]; then
    local ratio=""
    [[ "$base" =~ ^[0-9]+$ ]] && [ "$base" -gt 0 ] && ratio=" ($(python3 -c "print(f'{$v/$base:.2f}')")×)"
    echo "$(fmt "$v")$ratio${NOTE[$1]:-}"
  else
    echo "$v"
  fi
}
name() {
  case $1 in
    durable) echo "smtpd (fsync before 250)" ;;
    syncfs) echo "smtpd --sync filesystem (syncfs before 250)" ;;
    nofsync) echo "smtpd --no-fsync" ;;
    sink) echo "Postfix smtp-sink (discards)" ;;
    pf) echo "Postfix smtpd → virtual → Maildir" ;;
    aio) echo "aiosmtpd Mailbox → Maildir (no fsync)" ;;
  esac
}
STORES_DESC="$([ -n "$LOOPDEV" ] && echo "a fresh ext4 made for this run (loop device, direct I/O)" || echo "a directory on the work file system") ($(findmnt -n -o SOURCE,FSTYPE --target "$STORES" | tr -s ' '))"
report() {
  echo "# smtpd side-by-side benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(. /etc/os-release; echo "$PRETTY_NAME"); \
commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- server client maildir-core || echo '+dirty'); \
Postfix $(postconf -d -h mail_version), aiosmtpd $(python3 -c 'import aiosmtpd; print(aiosmtpd.__version__)'). \
$([ $QUICK = 1 ] && echo '**--quick run.** ')Shared machine: load average (1/5/15 min) ${LOADS[*]}."
  echo
  echo "## 1. Intake: msg/s (ratio to smtpd durable)"
  echo
  echo "Postfix smtp-source, ${MSGS} messages of 4 KiB per run (against Postfix and aiosmtpd: ${SLOW_MSGS}, to keep the run short), \
new connection per message unless -d (one connection per session). Postfix: delivered to Maildir \
(first connection to last file in new/), with the accepted rate (smtp-source's run time) beside it. \
smtpd's Maildirs: $STORES_DESC."
  echo
  echo "| server | 1 session | 20 sessions | 200 sessions | 20 sessions, -d | 200 sessions, -d |"
  echo "|---|---|---|---|---|---|"
  for srv in durable syncfs nofsync sink pf aio; do
    echo "| $(name $srv) | $(cell "$srv,1") | $(cell "$srv,20") | $(cell "$srv,200") | $(cell "$srv,20-d") | $(cell "$srv,200-d") |"
  done
  echo
  echo "## 2. Relay (scripts/bench-relay.sh $RELAY_N $RELAY_RUNS)"
  echo
  if grep -q '^|' <<<"$RELAY_OUT"; then
    # The last table in its output.
    awk '/^\|/ {if (!t) {buf=""}; t=1; buf=buf $0 "\n"; next} {t=0} END {printf "%s", buf}' <<<"$RELAY_OUT"
  else
    echo '```'; tail -5 <<<"$RELAY_OUT"; echo '```'
  fi
  echo
  echo "## 3. Memory with $(fmt "$IDLE") idle connections (ramp: ≤ 100 waiting for the greeting)"
  echo
  echo "| server | admitted | processes | RSS before → with connections | PSS before → with | per admitted connection: ΔRSS / ΔPSS |"
  echo "|---|---|---|---|---|---|"
  for s in smtpd aiosmtpd postfix; do
    local m=${MEM[$s]:-failed} label
    case $s in smtpd) label="smtpd" ;; aiosmtpd) label="aiosmtpd" ;; postfix) label="Postfix (master + all children, process limit 100)" ;; esac
    if [ "$m" = failed ] || [ -z "$(kv "$m" admitted)" ]; then echo "| $label | failed | | | | |"; continue; fi
    local a rb r ps pb held w
    a=$(kv "$m" admitted); rb=$(kv "$m" rss_before_kib); r=$(kv "$m" rss_kib); ps=$(kv "$m" pss_kib); pb=$(kv "$m" pss_before_kib)
    held=$(kv "$m" held); w=$(kv "$m" waiting)
    local adm
    adm="$(fmt "$a")"
    [ "$held" = "$a" ] || adm+=" ($held still held at measurement)"
    [ "$w" = 0 ] || adm+="; $w left waiting, ramp stopped"
    echo "| $label | $adm | $(kv "$m" procs) | $(python3 -c "print(f'{$rb/1024:.1f} → {$r/1024:.1f} MiB | {$pb/1024:.1f} → {$ps/1024:.1f} MiB | {($r-$rb)/max($a,1):.2f} / {($ps-$pb)/max($a,1):.2f} KiB')") |"
  done
  echo
  echo "## 4. Latency: smtp-stress, 200 connections, ${STRESS_SECS} s, error rate 0, smtpd durable"
  echo
  local tx
  tx=$(grep -E '^ +transaction ' <<<"$STRESS_OUT" || true)
  if [ -n "$tx" ]; then
    read -r _ c p50 p99 mx <<<"$tx"
    echo "| transactions | p50 | p99 | max | messages delivered | mismatches |"
    echo "|---|---|---|---|---|---|"
    echo "| $(fmt "$c") | $p50 ms | $p99 ms | $mx ms | $(sed -nE 's/.*messages delivered ([0-9]+ \([0-9.]+\/s\)).*/\1/p' <<<"$STRESS_OUT") | $(sed -nE 's/^mismatches: //p' <<<"$STRESS_OUT") |"
    echo
    echo "A transaction (MAIL to the reply after the dot) takes as many round trips as it has commands:"
    echo "1 recipient for 70 %, 6 to 29 for 5 %, pipelined or not, so its spread is mostly the workload's. Each reply:"
    echo
    echo "| reply to | count | p50 | p99 | p99 / p50 |"
    echo "|---|---|---|---|---|"
    local row what
    for what in transaction MAIL RCPT DATA message; do
      row=$(grep -E "^ +$what " <<<"$STRESS_OUT" || true)
      [ -n "$row" ] || continue
      read -r _ c p50 p99 mx <<<"$row"
      echo "| $what | $(fmt "$c") | $p50 ms | $p99 ms | $(python3 -c "print(f'{$p99/max($p50,1e-9):.1f}')") |"
    done
  else
    echo '```'; echo "$STRESS_OUT" | tail -5; echo '```'
  fi
  echo
  echo "Total time $(($(date +%s) - T_START)) s. Command: scripts/bench.sh$([ $QUICK = 1 ] && echo ' --quick')."
}
# The plot beside the report (issue 17): throughput against sessions per server, and the
# latency histogram (scripts/bench_plot.py, matplotlib).
PLOT=${OUT%.md}.svg
plot() {
  local srv s d
  for srv in durable nofsync sink pf aio; do
    for s in "${SESSIONS[@]}"; do printf '%s\t%s\tnew\t%s\n' "$(name $srv)" "$s" "${R[$srv,$s]:-}"; done
    for s in 20 200; do printf '%s\t%s\treuse\t%s\n' "$(name $srv)" "$s" "${R[$srv,$s-d]:-}"; done
  done >"$WORK/intake.tsv"
  touch "$WORK/latencies.txt"
  python3 "$ROOT/scripts/bench_plot.py" --intake "$WORK/intake.tsv" --latencies "$WORK/latencies.txt" \
    --out "$PLOT" --title "smtpd benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')$([ $QUICK = 1 ] && echo ', --quick')" >&2
}
plot || { echo "(plot failed)" >&2; PLOT=""; }
{ report; [ -z "$PLOT" ] || { echo; echo "Plot: $(basename "$PLOT") (throughput against sessions, latency histogram)."; }; } | tee "$OUT"
log "report written to $OUT; deleting $WORK"
