#!/usr/bin/env bash
# Local delivery benchmark (issue 12): Postfix smtp-source, 20 sessions, 4 KiB messages, 1 and
# 5 recipients per message (smtp-source -r), a new connection per message, side by side in one
# run:
#   - Postfix (private instance: smtpd -> cleanup -> qmgr -> virtual) delivering to virtual
#     Maildirs (virtual_mailbox_maps), one Maildir per recipient; rate = messages whose every
#     copy is in its Maildir, from the first connection to the last delivery;
#   - smtpd local delivery (--local-domain/--mailboxes/--users/--aliases, durable): one copy
#     per recipient in <mailboxes>/<user>/new before the 250 (a smtpd without --local-domain
#     gets a column saying so);
#   - smtpd's relay-queue intake (durable) of the same load: one queue file per message.
# Every run gets a fresh server process, port and directory names; files are counted afterwards.
#
# usage: scripts/bench-local.sh [--quick]   (root: the private Postfix instance needs it)
# knobs (environment): MSGS (smtpd runs), SLOW_MSGS (Postfix runs), KEEP=1 (keep the work dir).
# Work files go to /tmp/bench-local.XXXXXX, deleted at the end (deleting many files slows file
# creation on this machine's ext4 for a minute: PEERS.md). Only 127.0.0.0/8 is used.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
if [ $QUICK = 1 ]; then
  : "${MSGS:=2000}" "${SLOW_MSGS:=500}"
else
  : "${MSGS:=10000}" "${SLOW_MSGS:=3000}"
fi
SESSIONS=20
RCPTS=(1 5)
T_START=$(date +%s)
log() { echo "[bench-local $(($(date +%s) - T_START))s] $*" >&2; }

log "installing peers, building release"
bash scripts/install-peers.sh >&2
cargo build --release --quiet -p smtpd >&2
ulimit -n "$(ulimit -Hn)"
SMTPD=$ROOT/target/release/smtpd
LOCAL_OK=0
"$SMTPD" --help 2>/dev/null | grep -q -- '--local-domain' && LOCAL_OK=1

WORK=$(mktemp -d /tmp/bench-local.XXXXXX)
chmod 755 "$WORK" # Postfix's users read and write below it
mkdir -p "$ROOT/bench-results"
OUT=$ROOT/bench-results/bench-local-$(date +%Y%m%d-%H%M%S).md
PIDS=()
PF=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$PF" ] && [ -f "$PF/etc/main.cf" ]; then postfix -c "$PF/etc" stop >/dev/null 2>&1 || true; fi
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
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

# smtp-source -t NAME@D -r N sends to NAME@D, 2NAME@D, ..., NNAME@D.
rcpt_names() { # base n
  echo "$1"
  for i in $(seq 2 "$2"); do echo "$i$1"; done
}
# Files in new/ summed over the Maildirs of the run's recipients, under $1/<name>$2.
count_copies() { # root suffix base n
  local total=0 name
  for name in $(rcpt_names "$3" "$4"); do total=$((total + $(nfiles "$1/$name$2/new"))); done
  echo $total
}

declare -A R NOTE
LOADS=("start: $(loadavg)")

# ---------- the private Postfix instance delivering to virtual Maildirs ----------
PF=$WORK/postfix
PFMAIL=$WORK/pf-mail
mkdir -p "$PF/etc" "$PF/spool" "$PF/data" "$PFMAIL"
chown postfix "$PF/data"
chown nobody:nogroup "$PFMAIL"
PFPORTS=()
for _ in "${RCPTS[@]}"; do PFPORTS+=("$(port)"); done # one listener per run
{
  for p in "${PFPORTS[@]}"; do echo "127.0.0.1:$p inet n - n - - smtpd"; done
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
# Run k sends to rk@bench.test, 2rk@bench.test, ...: each its own fresh Maildir.
{
  echo "bench@bench.test bench/Maildir/"
  for k in $(seq 1 ${#RCPTS[@]}); do
    for name in $(rcpt_names "r$k" 5); do echo "$name@bench.test $name/Maildir/"; done
  done
} >"$PF/etc/vmailbox"
cat >"$PF/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench-local
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
for p in "${PFPORTS[@]}"; do wait_port "$p"; done

source_run() { # port msgs rcpt-base nrcpt
  local t0 t1
  t0=$(now)
  if /usr/sbin/smtp-source -s $SESSIONS -m "$2" -l 4096 -r "$4" -f bench@bench.test -t "$3@bench.test" 127.0.0.1:"$1" >>"$WORK/source.log" 2>&1; then
    t1=$(now); echo "$t0 $t1"
  else
    echo "ERR"
  fi
}

run_postfix() { # run-index nrcpt
  local k=$1 n=$2 m=$SLOW_MSGS key="pf,$2" p t0 t1 limit end last=0 got=0 t
  p=${PFPORTS[$((k - 1))]}
  log "Postfix virtual, $n recipient(s), $m messages (load $(loadavg))"
  read -r t0 t1 <<<"$(source_run "$p" $m "r$k" "$n")"
  if [ "$t0" = ERR ]; then R[$key]="smtp-source failed"; return; fi
  limit=$((60 + m * n / 20)); end=$(($(date +%s) + limit)); t=$(now)
  while got=$(count_copies "$PFMAIL" /Maildir "r$k" "$n"); [ "$got" -lt $((m * n)) ] && [ "$(date +%s)" -lt "$end" ]; do
    [ "$got" = "$last" ] || { last=$got; t=$(now); }
    sleep 0.2
  done
  [ "$got" = "$last" ] || t=$(now)
  R[$key]=$(rate $((got / n)) "$t0" "$t")
  NOTE[$key]=" delivered; $(rate $m "$t0" "$t1")/s accepted"
  [ "$got" = $((m * n)) ] || NOTE[$key]+="; only $got/$((m * n)) copies in ${limit}s"
}

run_queue() { # nrcpt: smtpd relay-queue intake of the same load (one file per message)
  local n=$1 m=$MSGS key="queue,$1" p pid dir t0 t1 stored
  dir=$WORK/queue-$n
  p=$(port)
  log "smtpd relay-queue intake, $n recipient(s), $m messages (load $(loadavg))"
  "$SMTPD" --maildir "$dir" --listen 127.0.0.1:$p 2>>"$WORK/smtpd-queue.log" &
  pid=$!; PIDS+=($pid); wait_port $p
  read -r t0 t1 <<<"$(source_run $p $m "q$n" "$n")"
  stop $pid
  if [ "$t0" = ERR ]; then R[$key]="smtp-source failed"; return; fi
  stored=$(nfiles "$dir/new")
  R[$key]=$(rate $m "$t0" "$t1")
  [ "$stored" = "$m" ] || NOTE[$key]=" stored $stored/$m"
}

run_local() { # nrcpt: smtpd local delivery (issue 12 phase 2)
  local n=$1 m=$MSGS key="local,$1" p pid dir t0 t1 got name
  if [ $LOCAL_OK = 0 ]; then R[$key]="(phase 2: smtpd has no --local-domain yet)"; return; fi
  dir=$WORK/local-$n
  mkdir -p "$dir"
  : >"$dir/users"
  for name in $(rcpt_names "l$n" "$n"); do echo "$name:*::::" >>"$dir/users"; done
  echo "postmaster: l$n" >"$dir/aliases"
  p=$(port)
  log "smtpd local delivery, $n recipient(s), $m messages (load $(loadavg))"
  "$SMTPD" --maildir "$dir/queue" --listen 127.0.0.1:$p --local-domain bench.test \
    --mailboxes "$dir/mailboxes" --users "$dir/users" --aliases "$dir/aliases" 2>>"$WORK/smtpd-local.log" &
  pid=$!; PIDS+=($pid); wait_port $p
  read -r t0 t1 <<<"$(source_run $p $m "l$n" "$n")"
  stop $pid
  if [ "$t0" = ERR ]; then R[$key]="smtp-source failed"; return; fi
  got=$(count_copies "$dir/mailboxes" "" "l$n" "$n")
  R[$key]=$(rate $m "$t0" "$t1")
  [ "$got" = $((m * n)) ] || NOTE[$key]=" stored $got/$((m * n)) copies"
  [ "$(nfiles "$dir/queue/new")" = 0 ] || NOTE[$key]+=" (queue not empty!)"
}

k=0
for n in "${RCPTS[@]}"; do
  k=$((k + 1))
  run_local "$n"
  run_queue "$n"
  run_postfix $k "$n"
done
LOADS+=("end: $(loadavg)")

{
  echo "## Local delivery: 20 sessions, 4 KiB, new connection per message ($(date -u +%F), $(nproc) cores)"
  echo
  echo "smtp-source -s $SESSIONS -l 4096 -r N; smtpd runs ${MSGS} messages, Postfix ${SLOW_MSGS}. msg/s = messages"
  echo "with every recipient's copy durable (smtpd: at the last 250; Postfix: last file in the Maildirs)."
  echo
  echo "| recipients per message | smtpd local delivery | smtpd relay-queue intake | Postfix → virtual Maildirs | smtpd local / Postfix |"
  echo "|---|---|---|---|---|"
  for n in "${RCPTS[@]}"; do
    ratio="–"
    if [[ "${R[local,$n]:-}" =~ ^[0-9]+$ && "${R[pf,$n]:-}" =~ ^[0-9]+$ && "${R[pf,$n]}" -gt 0 ]]; then
      ratio=$(python3 -c "print(f'{${R[local,$n]}/${R[pf,$n]}:.1f}×')")
    fi
    echo "| $n | ${R[local,$n]:-}${NOTE[local,$n]:-} | ${R[queue,$n]:-}${NOTE[queue,$n]:-} | ${R[pf,$n]:-}${NOTE[pf,$n]:-} | $ratio |"
  done
  echo
  echo "Postfix $(postconf -d -h mail_version). Load average: ${LOADS[*]}."
} | tee "$OUT"
log "report written to $OUT"
