#!/usr/bin/env bash
# TLS benchmark for smtpd (issue 7), side by side with a private Postfix instance in one run:
#  1. handshakes per second: connect + EHLO + QUIT in plaintext (baseline), with STARTTLS,
#     and on the implicit TLS port; for smtpd also its CPU time per connection;
#  2. throughput of 4 KiB messages, plaintext against STARTTLS: S sessions of M messages each
#     (connection reused), then a new connection (and handshake) per message;
#  3. latency of plain transactions (connect .. 250 after DATA .. QUIT) while 200 clients
#     reach `220 Ready to start TLS` and handshake all at once, round after round; an idle
#     second smtpd, probed alternately, shows what machine-wide CPU contention alone costs.
# Clients are tests/py/tls_load.py (Python ssl, multiprocess); they share the machine's cores
# with the servers, so absolute rates are client-bound; compare rows, not machines.
# Certificates are made here with openssl (P-256, self-signed). Postfix is skipped with
# NO_POSTFIX=1 or when not installed.
# usage: scripts/bench-tls.sh [SECS] [SESSIONS] [MESSAGES_PER_SESSION]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
S=${2:-20}
M=${3:-100}
PROCS=4
STORM=200
root=$PWD
load() { python3 "$root/tests/py/tls_load.py" "$@"; }
cargo build --release -p smtpd --quiet
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/bench-tls.XXXXXX)
chmod 755 "$work"
pids=()
pf=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$pf" ]; then postfix -c "$pf/etc" stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; return 1; }
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=mx.test -addext subjectAltName=DNS:mx.test \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# smtpd: durable (fsync before 250), STARTTLS on P, implicit TLS on Q; a plain control on R.
P=$(port); Q=$(port); R=$(port)
./target/release/smtpd --maildir "$work/smtpd" --listen 127.0.0.1:$P --tls-listen 127.0.0.1:$Q \
  --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" 2>"$work/smtpd.log" & pids+=($!)
SPID=$!
./target/release/smtpd --maildir "$work/control" --listen 127.0.0.1:$R 2>"$work/control.log" & pids+=($!)
wait_port $P; wait_port $Q; wait_port $R

servers=("smtpd:$P:$Q:$SPID")
if [ "${NO_POSTFIX:-0}" != 1 ] && [ -x /usr/sbin/postfix ]; then
  pf="$work/postfix"; PP=$(port); PQ=$(port)
  mkdir -p "$pf/etc" "$pf/data" "$pf/queue"
  chown postfix "$pf/data"
  cat >"$pf/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pf.bench.test
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = bench.test
default_transport = discard
relay_transport = discard
local_transport = discard
alias_maps =
alias_database =
smtpd_tls_cert_file = $work/cert.pem
smtpd_tls_key_file = $work/key.pem
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 300
maillog_file = /dev/stdout
EOF
  sed -e "s|^smtp      inet.*|127.0.0.1:$PP inet n - n - - smtpd\n127.0.0.1:$PQ inet n - n - - smtpd -o smtpd_tls_wrappermode=yes|" \
    /etc/postfix/master.cf >"$pf/etc/master.cf"
  postfix -c "$pf/etc" start-fg >"$pf/maillog" 2>&1 &
  wait_port $PP && wait_port $PQ && servers+=("postfix:$PP:$PQ:0")
fi

echo "## Handshakes ($PROCS client processes, ${SECS} s each; connect, EHLO, [TLS,] EHLO, QUIT)"
echo "| server | plaintext conn/s | STARTTLS handshakes/s | implicit TLS handshakes/s | server CPU per conn: plain / STARTTLS |"
echo "|---|---|---|---|---|"
for s in "${servers[@]}"; do
  IFS=: read -r name p q pid <<<"$s"
  a=$(load handshake 127.0.0.1 "$p" --procs $PROCS --secs "$SECS" --plain --pid "$pid")
  b=$(load handshake 127.0.0.1 "$p" --procs $PROCS --secs "$SECS" --pid "$pid")
  c=$(load handshake 127.0.0.1 "$q" --procs $PROCS --secs "$SECS" --implicit --pid "$pid")
  cpu="-"
  [ "$pid" != 0 ] && cpu="$(kv "$a" server_cpu_us_per_handshake) µs / $(kv "$b" server_cpu_us_per_handshake) µs"
  echo "| $name | $(kv "$a" per_s) | $(kv "$b" per_s) | $(kv "$c" per_s) | $cpu |"
done
echo
echo "## Throughput, 4 KiB messages ($S sessions x $M messages)"
echo "| server | plaintext msg/s | STARTTLS msg/s | plaintext, conn per msg | STARTTLS, conn+handshake per msg |"
echo "|---|---|---|---|---|"
for s in "${servers[@]}"; do
  IFS=: read -r name p q pid <<<"$s"
  row="| $name |"
  for flags in "" "--tls" "--per-conn" "--tls --per-conn"; do
    # shellcheck disable=SC2086
    r=$(load send 127.0.0.1 "$p" --procs "$S" --msgs "$M" $flags)
    row+=" $(kv "$r" per_s) |"
  done
  echo "$row"
done
echo
echo "## Plain transaction latency (ms) while $STORM clients handshake at once (${SECS}x2 s)"
echo "| server | storm | handshakes/s | p50 | p90 | p99 | max | idle control p50 / p99 / max |"
echo "|---|---|---|---|---|---|---|---|"
for s in "${servers[@]}"; do
  IFS=: read -r name p q pid <<<"$s"
  for storm in 0 $STORM; do
    r=$(load probe 127.0.0.1 "$p" --secs $((SECS * 2)) --storm $storm --control $R)
    echo "| $name | $storm | $(kv "$r" storm_handshakes_per_s) | $(kv "$r" stormed_p50_ms) | $(kv "$r" stormed_p90_ms) | $(kv "$r" stormed_p99_ms) | $(kv "$r" stormed_max_ms) | $(kv "$r" control_p50_ms) / $(kv "$r" control_p99_ms) / $(kv "$r" control_max_ms) |"
    [ "$(kv "$r" storm_errors)" = 0 ] || echo "(storm errors: $(kv "$r" storm_errors))"
  done
done
echo
echo "stored by smtpd: $(ls "$work/smtpd/new" | wc -l); smtpd warnings: $(grep -c WARN "$work/smtpd.log" || true)"
cleanup
# Delete later, not now: deleting then creating many files slows ext4 for a minute.
echo "(work files in $work; remove when done)"
