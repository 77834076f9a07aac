#!/usr/bin/env bash
# Benchmark smtp-relay over STARTTLS vs plaintext to the same peer: N queued 4 KiB messages
# (default 5,000) relayed to smtpd (--no-fsync, STARTTLS with a throw-away P-256 certificate)
# for (a) one MX host, (b) ten MX hosts (smtpd listening on 127.0.9.1-10). `--tls may` (STARTTLS
# used) against `--tls none`. Prints msg/s from the relay's summary line.
# Usage: scripts/bench-relay-tls.sh [N] [RUNS]
set -euo pipefail
N=${1:-5000}
RUNS=${2:-3}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh # free_port, queue_messages
cargo build -q --release -p smtp-relay -p smtpd
RELAY=target/release/smtp-relay
for t in dnsmasq python3 openssl; do command -v $t >/dev/null || { echo "need $t (scripts/install-peers.sh)"; exit 1; }; done
WORK=$(mktemp -d /tmp/bench-relay-tls.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=mx.test \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
DNSPORT=$(free_port); PORT=$(free_port)
MX=(--mx-host=one.test,mx.one.test,10 --host-record=mx.one.test,127.0.9.1)
LISTEN=()
for i in $(seq 1 10); do
  MX+=(--mx-host=d$i.test,mx.d$i.test,10 --host-record=mx.d$i.test,127.0.9.$i)
  LISTEN+=(--listen 127.0.9.$i:"$PORT")
done
dnsmasq --no-daemon --port="$DNSPORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
  --conf-file=/dev/null --local=/test/ --user=root "${MX[@]}" 2>/dev/null & PIDS+=($!)
RUST_LOG=warn target/release/smtpd --maildir "$WORK/sink/Maildir" "${LISTEN[@]}" --no-fsync \
  --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" & PIDS+=($!)
sleep 0.5 # tools start; not synchronisation of results


for mode in one ten; do
  for tls in none may; do
    for r in $(seq 1 "$RUNS"); do
      MD="$WORK/$mode-$tls-$r/Maildir"   # a fresh directory each run (PEERS.md: ext4 after deletes)
      queue_messages "$MD" "$N" "$mode"
      sync
      OUT=$(RUST_LOG=warn "$RELAY" --maildir "$MD" --once --dns 127.0.0.1:"$DNSPORT" --port "$PORT" \
            --helo relay.test --tls "$tls")
      SECS=$(sed -E 's/.*; ([0-9.]+) s\)$/\1/' <<<"$OUT")
      RATE=$(python3 -c "print(round($N/$SECS))")
      echo "$mode MX host(s), --tls $tls, run $r: $N msgs in $SECS s = $RATE msg/s  [$OUT]"
    done
  done
done
