#!/usr/bin/env bash
# WAN benchmark (issue 15): N queued 4 KiB messages (default 2,000) to ONE MX host behind the
# delay proxy (`smtp-stress proxy`, kernel netem being unavailable here) at several round-trip
# times (default 0, 10, 50 and 100 ms; the proxy delays each direction by half).
#
# MX hosts, one at a time behind the proxy:
#  (a) smtpd --no-fsync (mail lands in a Maildir, counted in new/);
#  (b) a private Postfix instance whose smtpd hands everything to the discard transport
#      (counted by its "status=sent" log lines); Postfix 3.7's smtpd offers CHUNKING (its SMTP
#      client never sends BDAT, so the Postfix sender's rows are DATA).
# Senders, each timed from start until every message has the MX's 250 (the MX's count is then
# checked):
#  - smtp-relay --once, one connection to the MX: messages queued straight into a fresh Maildir
#    in the stored format, MX record from dnsmasq (mx.one.test = 127.0.9.1, the proxy).
#    When `smtp-relay --help` lists $CHUNKING_OFF_FLAG (default --no-chunking), two rows: the
#    default invocation ("CHUNKING where offered") and one with the flag ("DATA only"). Until
#    then smtp-relay speaks DATA only and the CHUNKING row says so.
#  - Postfix as the relay: a private instance (its defaults: up to 20 connections per
#    destination, slow start from 5), the N messages injected with smtp-source and put on hold,
#    released with `postsuper -H ALL` and `postqueue -f`, timed until its queue is empty and the
#    MX has them all. transport_maps sends one.test to smtp:[127.0.9.1]:PROXYPORT.
# Connections: counted by the proxy (one `accepted` line per connection).
# Not modelled: the TCP handshake is not delayed (a new connection costs no extra round trip,
# which favours the sender with many connections), nor bandwidth or loss.
#
# Usage: scripts/bench-wan.sh [N] [RTT_MS...]       e.g. scripts/bench-wan.sh 300 0 10 50 100
#   (root: the private Postfix instances need it). Environment: MXS="smtpd postfix",
#   SENDERS="relay postfix", CHUNKING_OFF_FLAG, KEEP=1 (keep the work dir).
# Prints one line per run and a markdown table.
set -euo pipefail
N=${1:-2000}
shift || true
RTTS=("$@")
[ ${#RTTS[@]} -gt 0 ] || RTTS=(0 10 50 100)
MXS=${MXS:-smtpd postfix}
SENDERS=${SENDERS:-relay postfix}
CHUNKING_OFF_FLAG=${CHUNKING_OFF_FLAG:---no-chunking}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
cargo build -q --release -p smtpd -p smtp-relay -p smtp-stress
RELAY=$PWD/target/release/smtp-relay
SMTPD=$PWD/target/release/smtpd
STRESS=$PWD/target/release/smtp-stress
for t in smtp-source dnsmasq python3 ss postfix postsuper postqueue; do
  command -v $t >/dev/null || { echo "need $t (scripts/install-peers.sh)"; exit 1; }
done

WORK=$(mktemp -d /tmp/bench-wan.XXXXXX)
chmod 755 "$WORK" # the postfix user reads its queues below it
PFS=$WORK/pf-relay # Postfix as the sender
PFM=$WORK/pf-mx    # Postfix as the MX
PIDS=()
PROXY_PID=""
cleanup() {
  pf_stop "$PFS"
  pf_stop "$PFM"
  [ -z "$PROXY_PID" ] || kill "$PROXY_PID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "(work files kept in $WORK)" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DNSPORT=$(free_port); PROXYPORT=$(free_port); SMTPDPORT=$(free_port); PFMPORT=$(free_port); PFSPORT=$(free_port)
dnsmasq --no-daemon --port="$DNSPORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
  --conf-file=/dev/null --local=/test/ --user=root \
  --mx-host=one.test,mx.one.test,10 --host-record=mx.one.test,127.0.9.1 2>/dev/null & PIDS+=($!)

# ---- the MX hosts ----
MXDIR=$WORK/mx-smtpd/Maildir
RUST_LOG=warn "$SMTPD" --maildir "$MXDIR" --listen 127.0.0.1:"$SMTPDPORT" --hostname mx.one.test --no-fsync \
  2>"$WORK/mx-smtpd.log" & PIDS+=($!)
wait_until 10 "smtpd to listen" listening_on "$SMTPDPORT"
pf_instance "$PFM" "$PFMPORT" postfix-wan-mx mx.one.test <<EOF
default_transport = discard
relay_transport = discard
smtpd_peername_lookup = no
EOF
mkdir -p "$PFS/etc"
echo "one.test smtp:[127.0.9.1]:$PROXYPORT" >"$PFS/etc/transport"
pf_instance "$PFS" "$PFSPORT" postfix-wan-relay bench.test <<EOF
smtpd_data_restrictions = check_client_access static:HOLD
smtpd_peername_lookup = no
smtp_helo_name = relay.test
transport_maps = texthash:$PFS/etc/transport
EOF

mx_port() { case $1 in smtpd) echo "$SMTPDPORT" ;; postfix) echo "$PFMPORT" ;; esac; }
# Messages the MX has accepted so far.
mx_got() {
  case $1 in
    smtpd) find "$MXDIR/new" -maxdepth 1 -type f | wc -l ;;
    postfix) { grep -E 'postfix-wan-mx/discard\[[0-9]+\]: .*status=sent' "$PFM/maillog" 2>/dev/null || true; } | wc -l ;;
  esac
}
mx_has() { [ "$(mx_got "$1")" -ge "$2" ]; }
# What the MX offers after EHLO, as the senders see it.
mx_offers() {
  python3 - "$(mx_port "$1")" <<'PY'
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo("probe.test")
print(" ".join(k.upper() for k in ("pipelining", "chunking", "dsn") if s.has_extn(k)))
s.quit()
PY
}

# The proxy in front of MX $1 with a round trip of $2 ms; its log in $WORK/proxy-$3.log.
start_proxy() { # MX RTT_MS NAME
  local half
  half=$(python3 -c "print(f'{$2/2:g}ms')")
  "$STRESS" proxy --delay "$half" 127.0.9.1:"$PROXYPORT" 127.0.0.1:"$(mx_port "$1")" \
    >"$WORK/proxy.out" 2>"$WORK/proxy-$3.log" &
  PROXY_PID=$!
  wait_until 10 "the proxy to listen" grep -q '^listening on' "$WORK/proxy.out"
}
stop_proxy() {
  kill "$PROXY_PID" 2>/dev/null || true
  wait "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=""
}
proxy_conns() { grep -c ' accepted$' "$WORK/proxy-$1.log" || true; }

HAVE_FLAG=0
if "$RELAY" --help | grep -q -- "$CHUNKING_OFF_FLAG"; then HAVE_FLAG=1; fi
# smtp-relay rows: MODE chunking (default invocation) and data ($CHUNKING_OFF_FLAG), or only
# data (default invocation) while the relay has no CHUNKING.
RELAY_MODES=(data)
[ $HAVE_FLAG = 0 ] || RELAY_MODES=(chunking data)

declare -A RES # RES[sender,mx,rtt] = "msg/s conns"
rate() { python3 -c "print(round($1/($3-$2)))"; }
secs() { python3 -c "print(round($2-$1, 3))"; }
# Generous deadline for one run: a second per message at 1 RTT each, plus two minutes.
limit_for() { python3 -c "print(int(120 + $N * max($1, 5) / 1000 * 3))"; }

run_relay() { # MX RTT MODE
  local mx=$1 rtt=$2 mode=$3 name="relay-$3-$1-$2" flags=() md base out t0 t1
  [ "$mode" = data ] && [ $HAVE_FLAG = 1 ] && flags=("$CHUNKING_OFF_FLAG")
  md=$WORK/$name/Maildir # a fresh directory each run (PEERS.md on ext4 after deletes)
  queue_messages "$md" "$N" one
  sync
  start_proxy "$mx" "$rtt" "$name"
  base=$(mx_got "$mx")
  t0=$(now)
  out=$(RUST_LOG=warn "$RELAY" --maildir "$md" --once --dns 127.0.0.1:"$DNSPORT" --port "$PROXYPORT" \
    --helo relay.test "${flags[@]}")
  t1=$(now) # every message has its 250 (the check below only verifies)
  wait_until 60 "the MX to have $N messages" mx_has "$mx" $((base + N))
  wait_until 60 "the connections to close" idle_port "$PROXYPORT"
  stop_proxy
  RES[relay-$mode,$mx,$rtt]="$(rate "$N" "$t0" "$t1") $(proxy_conns "$name")"
  echo "smtp-relay ($mode) -> $mx, RTT $rtt ms: $N msgs in $(secs "$t0" "$t1") s = ${RES[relay-$mode,$mx,$rtt]% *} msg/s over $(proxy_conns "$name") connection(s)  [$out]"
}

run_postfix() { # MX RTT
  local mx=$1 rtt=$2 name="postfix-$1-$2" base t0 t1
  smtp-source -s 20 -m "$N" -l 4096 -d -f bench@src.test -t u@one.test 127.0.0.1:"$PFSPORT" >/dev/null
  held_all() { [ "$(pf_count "$PFS" hold)" -eq "$N" ] && [ "$(pf_count "$PFS" incoming)" -eq 0 ] && [ "$(pf_count "$PFS" active)" -eq 0 ]; }
  wait_until 300 "Postfix to put $N messages on hold" held_all
  start_proxy "$mx" "$rtt" "$name"
  postsuper -c "$PFS/etc" -H ALL 2>/dev/null
  sync
  base=$(mx_got "$mx")
  t0=$(now)
  postqueue -c "$PFS/etc" -f
  pf_empty() { [ "$(pf_queue "$PFS")" -eq 0 ]; }
  wait_until "$(limit_for "$rtt")" "Postfix's queue to empty" pf_empty
  t1=$(now) # every message has its 250 (the check below only verifies)
  wait_until 60 "the MX to have $N messages" mx_has "$mx" $((base + N))
  wait_until 60 "the connections to close" idle_port "$PROXYPORT"
  stop_proxy
  RES[postfix,$mx,$rtt]="$(rate "$N" "$t0" "$t1") $(proxy_conns "$name")"
  echo "Postfix -> $mx, RTT $rtt ms: $N msgs in $(secs "$t0" "$t1") s = ${RES[postfix,$mx,$rtt]% *} msg/s over $(proxy_conns "$name") connection(s)"
}

declare -A OFFERS
for mx in $MXS; do OFFERS[$mx]=$(mx_offers "$mx"); done
echo "N=$N messages of 4 KiB to one MX; RTTs ${RTTS[*]} ms; Postfix $(postconf -d -h mail_version); load $(cut -d' ' -f1-3 /proc/loadavg)"
for mx in $MXS; do echo "MX $mx offers: ${OFFERS[$mx]}"; done
for mx in $MXS; do
  for rtt in "${RTTS[@]}"; do
    for s in $SENDERS; do
      case $s in
        relay) for m in "${RELAY_MODES[@]}"; do run_relay "$mx" "$rtt" "$m"; done ;;
        postfix) run_postfix "$mx" "$rtt" ;;
      esac
    done
  done
done

cell() { # KEY
  local v=${RES[$1]:-}
  if [ -z "$v" ]; then echo "—"; return; fi
  read -r r c <<<"$v"
  python3 -c "print(f'{$r:,} msg/s, {$c} conn.')"
}
echo
echo "load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo
header="| sender → MX ($N × 4 KiB) |"; sep="|---|"
for rtt in "${RTTS[@]}"; do header+=" RTT $rtt ms |"; sep+="---|"; done
echo "$header"
echo "$sep"
for mx in $MXS; do
  label=$([ "$mx" = smtpd ] && echo "smtpd --no-fsync" || echo "Postfix → discard")
  for s in $SENDERS; do
    if [ "$s" = relay ]; then
      row="| smtp-relay, CHUNKING where offered → $label |"
      for rtt in "${RTTS[@]}"; do
        if [ $HAVE_FLAG = 1 ]; then row+=" $(cell "relay-chunking,$mx,$rtt") |"; else row+=" not yet |"; fi
      done
      echo "$row"
      row="| smtp-relay, DATA only → $label |"
      for rtt in "${RTTS[@]}"; do row+=" $(cell "relay-data,$mx,$rtt") |"; done
      echo "$row"
    else
      row="| Postfix relay (default concurrency) → $label |"
      for rtt in "${RTTS[@]}"; do row+=" $(cell "postfix,$mx,$rtt") |"; done
      echo "$row"
    fi
  done
done
echo
for mx in $MXS; do echo "MX $mx offers: ${OFFERS[$mx]}"; done
[ $HAVE_FLAG = 1 ] || echo "smtp-relay has no $CHUNKING_OFF_FLAG yet: it speaks DATA only (one round trip per message for the 354)."
echo "Postfix's SMTP client never sends BDAT (only its server has CHUNKING): its rows are DATA."
