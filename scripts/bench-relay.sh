#!/usr/bin/env bash
# Benchmark smtp-relay against Postfix, in the same run, relaying the same load to the same sinks.
#
# Load: N queued 4 KiB messages (default 10,000), (a) all for one MX host, (b) spread over ten MX
# hosts (127.0.9.1-10). Sinks: Postfix's smtp-sink on each address, one port, with -c counters
# (sessions and messages, read before and after each measurement).
#  - smtp-relay: messages written straight into a fresh Maildir/new in the stored format; MX
#    records from dnsmasq; timed from start to exit of `smtp-relay --once`.
#  - Postfix: a private instance (own config_directory and queue_directory under the work dir,
#    `postfix -c DIR start`; /etc/postfix is never read or changed). It has a private smtpd on a
#    free 127.0.0.1 port whose mail goes on hold (smtpd_data_restrictions = static:HOLD); the N
#    messages are injected with smtp-source (4 KiB each, same recipients), released with
#    `postsuper -H ALL` (hold -> deferred), and timed from `postqueue -f` until the queue is empty.
#    transport_maps send each domain to smtp:[127.0.9.x]:PORT (no DNS), smtp_tls_security_level
#    = none, defaults otherwise (up to 20 connections per destination, one message per
#    transaction, connection reuse only while a backlog exists).
# Connections: smtp-sink session counter deltas, read once no connection to the sinks is left.
# Prints one line per run and a markdown table of medians.
# Usage: scripts/bench-relay.sh [N] [RUNS]        (needs root for the Postfix instance)
set -euo pipefail
N=${1:-10000}
RUNS=${2:-3}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
cargo build -q --release -p smtp-relay
RELAY=$PWD/target/release/smtp-relay
for t in smtp-sink smtp-source dnsmasq python3 ss postfix postsuper postqueue; do
  command -v $t >/dev/null || { echo "need $t (scripts/install-peers.sh)"; exit 1; }
done
WORK=$(mktemp -d /tmp/bench-relay.XXXXXX)
chmod 755 "$WORK" # the postfix user reads its queue below it
PF=$WORK/postfix
PIDS=()
cleanup() {
  pf_stop "$PF"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

DNSPORT=$(free_port); SINKPORT=$(free_port); PFPORT=$(free_port)

MX=(--mx-host=one.test,mx.one.test,10 --host-record=mx.one.test,127.0.9.1)
for i in $(seq 1 10); do MX+=(--mx-host=d$i.test,mx.d$i.test,10 --host-record=mx.d$i.test,127.0.9.$i); done
dnsmasq --no-daemon --port="$DNSPORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
  --conf-file=/dev/null --local=/test/ --user=root "${MX[@]}" 2>/dev/null & PIDS+=($!)
for i in $(seq 1 10); do
  smtp-sink -c -u nobody 127.0.9.$i:"$SINKPORT" 1024 >"$WORK/sink.$i.out" 2>&1 & PIDS+=($!)
done
wait_until 10 "smtp-sink to listen" listening_on "$SINKPORT" 10

# Sessions and messages counted by all sinks so far: "SESS MESG".
counters() {
  local s=0 m=0 line
  for i in $(seq 1 10); do
    line=$(tr '\r' '\n' <"$WORK/sink.$i.out" | grep 'sess=' | tail -1 || true)
    [ -n "$line" ] || continue
    s=$((s + $(sed -E 's/.*sess=([0-9]+).*/\1/' <<<"$line")))
    m=$((m + $(sed -E 's/.*mesg=([0-9]+).*/\1/' <<<"$line")))
  done
  echo "$s $m"
}
sinks_idle() { idle_port "$SINKPORT"; }

# ---- the private Postfix instance ----
mkdir -p "$PF/etc"
{
  echo "one.test smtp:[127.0.9.1]:$SINKPORT"
  for i in $(seq 1 10); do echo "d$i.test smtp:[127.0.9.$i]:$SINKPORT"; done
} >"$PF/etc/transport"
pf_instance "$PF" "$PFPORT" postfix-bench bench.test <<EOF
smtpd_data_restrictions = check_client_access static:HOLD
smtp_helo_name = relay.test
transport_maps = texthash:$PF/etc/transport
EOF
held_all() { [ "$(pf_count "$PF" hold)" -eq "$N" ] && [ "$(pf_count "$PF" incoming)" -eq 0 ] && [ "$(pf_count "$PF" active)" -eq 0 ]; }
pf_empty() { [ "$(pf_queue "$PF")" -eq 0 ]; }

# Injects N 4 KiB messages into Postfix (they go on hold), the same recipients' domains.
pf_inject() { # MODE
  if [ "$1" = one ]; then
    smtp-source -s 20 -m "$N" -l 4096 -d -f bench@src.test -t u@one.test 127.0.0.1:"$PFPORT"
  else
    local p=() i
    for i in $(seq 1 10); do
      smtp-source -s 2 -m $((N / 10)) -l 4096 -d -f bench@src.test -t "u@d$i.test" 127.0.0.1:"$PFPORT" & p+=($!)
    done
    for i in "${p[@]}"; do wait "$i"; done
  fi
}

declare -A RES
echo "N=$N messages of 4 KiB, $RUNS run(s) each; sinks 127.0.9.1-10:$SINKPORT; Postfix $(postconf -d -h mail_version) in $PF"
for mode in one ten; do
  for r in $(seq 1 "$RUNS"); do
    # smtp-relay
    MD="$WORK/$mode-$r/Maildir" # a fresh directory each run (see PEERS.md on ext4 after deletes)
    queue_messages "$MD" "$N" "$mode"
    sync
    read -r s0 m0 < <(counters)
    T0=$(now)
    OUT=$(RUST_LOG=warn "$RELAY" --maildir "$MD" --once --dns 127.0.0.1:"$DNSPORT" --port "$SINKPORT" --helo relay.test)
    T1=$(now)
    wait_until 60 "the sinks to be idle" sinks_idle
    read -r s1 m1 < <(counters)
    RATE=$(python3 -c "print(round($N/($T1-$T0)))")
    echo "smtp-relay $mode MX: $N msgs in $(python3 -c "print(round($T1-$T0,3))") s = $RATE msg/s, $((s1 - s0)) connection(s), sinks got $((m1 - m0))  [$OUT]"
    RES[relay-$mode]+="$RATE:$((s1 - s0)) "

    # Postfix
    pf_inject "$mode" >/dev/null
    wait_until 300 "Postfix to put $N messages on hold" held_all
    postsuper -c "$PF/etc" -H ALL 2>/dev/null
    sync
    read -r s0 m0 < <(counters)
    T0=$(now)
    postqueue -c "$PF/etc" -f
    wait_until 600 "Postfix's queue to empty" pf_empty
    T1=$(now)
    wait_until 60 "the sinks to be idle" sinks_idle
    read -r s1 m1 < <(counters)
    RATE=$(python3 -c "print(round($N/($T1-$T0)))")
    echo "Postfix    $mode MX: $N msgs in $(python3 -c "print(round($T1-$T0,3))") s = $RATE msg/s, $((s1 - s0)) connection(s), sinks got $((m1 - m0))"
    RES[postfix-$mode]+="$RATE:$((s1 - s0)) "
  done
done

median() { # "rate:conns rate:conns ..." -> "median-rate median-conns min-max-rate"
  python3 -c '
import sys, statistics as st
v = [tuple(map(int, x.split(":"))) for x in sys.argv[1].split()]
r = [a for a, _ in v]; c = [b for _, b in v]
print(round(st.median(r)), round(st.median(c)), min(r), max(r))' "$1"
}
echo
echo "| load ($N × 4 KiB, medians of $RUNS) | smtp-relay | Postfix | ratio |"
echo "|---|---|---|---|"
for mode in one ten; do
  read -r rr rc rlo rhi < <(median "${RES[relay-$mode]}")
  read -r pr pc plo phi < <(median "${RES[postfix-$mode]}")
  label=$([ "$mode" = one ] && echo "one MX host" || echo "ten MX hosts")
  echo "| $label | $rr msg/s ($rlo–$rhi) over $rc connection(s) | $pr msg/s ($plo–$phi) over $pc connection(s) | $(python3 -c "print(f'{$rr/$pr:.1f}×')") |"
done
postfix -c "$PF/etc" stop >/dev/null 2>&1
