#!/usr/bin/env bash
# POP3 benchmark (issue 13), smtpd's POP3 and Dovecot's POP3 side by side in one run, on copies
# of the same Maildir:
#   - RETR throughput: one user with MSGS (10,000) messages of 4 KiB (Maildir files as smtpd's
#     local delivery writes them); one client logs in and RETRs every message, 32 commands
#     pipelined (scripts/pop3_load.py, raw sockets, the same client for both); each RETR also
#     marks the message seen (smtpd and Dovecot both rename it into cur/ with S). The first
#     login's maildrop listing is reported apart. Fresh copies of the Maildir for each run.
#   - login rate: LOGINS logins (USER/PASS/QUIT, a new connection each, CLIENTS at a time, each
#     client its own user u<i>: smtpd allows one session per maildrop) with {ARGON2ID}
#     passwords in the users file (the same file for both servers);
#     Dovecot's auth cache is off (its default), so both verify argon2 every time.
# smtpd runs --release with --pop3-listen on the same users file; Dovecot runs as a plain
# process with a generated configuration (no system service).
#
# usage: scripts/bench-pop3.sh [--quick]
# knobs (environment): MSGS, LOGINS, CLIENTS, KEEP=1 (keep the work dir).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib/bench.sh
if [ "${1:-}" = --quick ]; then
  : "${MSGS:=2000}" "${LOGINS:=40}"
else
  : "${MSGS:=10000}" "${LOGINS:=200}"
fi
: "${CLIENTS:=4}"
T_START=$(date +%s)
log() { echo "[bench-pop3 $(($(date +%s) - T_START))s] $*" >&2; }

log "installing peers, building release"
bash scripts/install-peers.sh >&2
cargo build --release --quiet -p smtpd >&2
SMTPD=$ROOT/target/release/smtpd

WORK=$(mktemp -d /tmp/bench-pop3.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$ROOT/bench-results"
OUT=$ROOT/bench-results/bench-pop3-$(date +%Y%m%d-%H%M%S).md
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else echo "(work files kept in $WORK)" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PASSWORD="bench password"
HASH=$(printf '%s\n' "$PASSWORD" | "$SMTPD" hash-password)
{
  printf 'alice:%s::::\n' "$HASH"
  for i in $(seq 0 $((CLIENTS - 1))); do printf 'u%d:%s::::\n' "$i" "$HASH"; done
} >"$WORK/users"
printf 'postmaster: alice\n' >"$WORK/aliases"

# The master copy of alice's Maildir: MSGS messages of 4 KiB in new/, named and written like
# smtpd's local delivery (Return-Path, Delivered-To, X-Original-To, Received, message; CRLF).
log "writing $MSGS messages"
python3 - "$WORK/master/alice" "$MSGS" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in ("tmp", "new", "cur"): os.makedirs(os.path.join(root, d), exist_ok=True)
line = b"x" * 70 + b"\r\n"
for i in range(n):
    head = (f"Return-Path: <bench@src.test>\r\nDelivered-To: alice@example.test\r\n"
            f"X-Original-To: alice@example.test\r\n"
            f"Received: from bench by mx.test with ESMTP id B{i}; Tue, 24 Nov 2026 04:07:30 +0000\r\n"
            f"From: <bench@src.test>\r\nTo: <alice@example.test>\r\nSubject: bench {i}\r\n\r\n").encode()
    body = line * ((4096 - len(head)) // len(line))
    data = head + body
    name = f"1795490000.M{i:06d}P1Q{i}.bench,S={len(data)}"
    with open(os.path.join(root, "new", name), "wb") as f: f.write(data)
PY

# Mail processes of Dovecot run as nobody when we are root (it refuses uid 0).
if [ "$(id -u)" = 0 ]; then OWNER=65534:65534; LOGIN_USER=nobody; INTERNAL=root; else OWNER=$(id -u):$(id -g); LOGIN_USER=$(id -un); INTERNAL=$LOGIN_USER; fi
fresh() { # DIR: a fresh copy of the master Maildirs
  rm -rf "$1"; cp -a "$WORK/master" "$1"; chown -R "$OWNER" "$1"
}

start_smtpd() { # MAILBOXES -> sets SPID, SPORT
  local smtp; smtp=$(free_port); SPORT=$(free_port)
  "$SMTPD" --maildir "$WORK/queue" --listen "127.0.0.1:$smtp" --local-domain example.test \
    --mailboxes "$1" --users "$WORK/users" --aliases "$WORK/aliases" \
    --pop3-listen "127.0.0.1:$SPORT" 2>>"$WORK/smtpd.log" &
  SPID=$!; PIDS+=("$SPID")
  wait_until 20 "smtpd POP3" listening_on "$SPORT"
}

start_dovecot() { # MAILBOXES -> sets DPID, DPORT
  DPORT=$(free_port)
  local d=$WORK/dovecot-$DPORT; mkdir -p "$d"
  local uid=${OWNER%:*} gid=${OWNER#*:}
  cat >"$d/dovecot.conf" <<CONF
base_dir = $d/base
state_dir = $d/state
instance_name = bench-pop3-$DPORT
listen = 127.0.0.1
protocols = pop3
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = $d/dovecot.log
mail_location = maildir:$1/%u
mail_uid = $uid
mail_gid = $gid
first_valid_uid = $uid
first_valid_gid = $gid
default_login_user = $LOGIN_USER
default_internal_user = $INTERNAL
pop3_uidl_format = %f
passdb {
  driver = passwd-file
  args = username_format=%u $WORK/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $WORK/users
  default_fields = home=$1/%u
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $DPORT
  }
  inet_listener pop3s {
    port = 0
  }
}
CONF
  dovecot -F -c "$d/dovecot.conf" &
  DPID=$!; PIDS+=("$DPID")
  wait_until 20 "Dovecot POP3" listening_on "$DPORT"
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

retr_run() { # NAME PORT -> a table row
  local r; r=$(python3 scripts/pop3_load.py retr "$2" alice "$PASSWORD" 32)
  set -- "$1" $r
  python3 -c 'import sys
name, n, octets, login_s, retr_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print("| %s | %d | %.2f | %.0f | %.1f |" % (name, n, login_s, n / retr_s, octets / retr_s / 2**20))' "$@"
}

login_run() { # NAME PORT -> a table row
  local r; r=$(python3 scripts/pop3_load.py login "$2" u "$PASSWORD" "$LOGINS" "$CLIENTS")
  set -- "$1" $r
  python3 -c 'import sys
name, n, secs, fails = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print("| %s | %d | %d | %.1f | %d |" % (name, n, int(sys.argv[5]), n / secs, fails))' "$@" "$CLIENTS"
}

{
  echo "# POP3 benchmark $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "$(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg); $MSGS messages of 4 KiB; smtpd $(git rev-parse --short HEAD), $(dovecot --version)"
  echo
  echo "## RETR of every message (one client, 32 RETRs pipelined)"
  echo
  echo "| server | messages | login + listing (s) | messages/s | MiB/s |"
  echo "|---|---|---|---|---|"
} | tee "$OUT"
for round in 1 2; do
  log "RETR round $round"
  fresh "$WORK/mb-smtpd"; start_smtpd "$WORK/mb-smtpd"
  retr_run "smtpd (round $round)" "$SPORT" | tee -a "$OUT"
  stop "$SPID"
  fresh "$WORK/mb-dovecot"; start_dovecot "$WORK/mb-dovecot"
  retr_run "Dovecot (round $round)" "$DPORT" | tee -a "$OUT"
  stop "$DPID"
done
{
  echo
  echo "## Logins ({ARGON2ID} users file, USER/PASS/QUIT, a new connection each)"
  echo
  echo "| server | logins | clients at a time | logins/s | failures |"
  echo "|---|---|---|---|---|"
} | tee -a "$OUT"
fresh "$WORK/mb-smtpd"; start_smtpd "$WORK/mb-smtpd"
fresh "$WORK/mb-dovecot"; start_dovecot "$WORK/mb-dovecot"
login_run smtpd "$SPORT" | tee -a "$OUT"
login_run Dovecot "$DPORT" | tee -a "$OUT"
echo | tee -a "$OUT"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
log "results in $OUT"
