# shellcheck shell=bash
# Helpers shared by the benchmark scripts (sourced, not run): ports, clocks, waiting with a
# deadline, queueing messages into a Maildir in the stored format, and private Postfix instances
# (own config and queue directories under a work dir, `postfix -c DIR start`; /etc/postfix is
# never read or changed). The caller sets `set -euo pipefail` and cleans up its own processes.

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

# Waits until "$@" succeeds, or fails after LIMIT seconds.
wait_until() { # LIMIT WHAT CMD...
  local limit=$1 what=$2; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@"; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timed out waiting for $what" >&2; exit 1; }
    sleep 0.05 # polling interval of a condition with a deadline
  done
}

# True when at least COUNT (default 1) sockets listen on PORT.
listening_on() { # PORT [COUNT]
  [ "$(ss -Htln "( sport = :$1 )" | wc -l)" -ge "${2:-1}" ]
}

# True when no established connection has local port PORT.
idle_port() { # PORT
  [ "$(ss -Htn state established "( sport = :$1 )" | wc -l)" -eq 0 ]
}

# Writes N queued 4 KiB messages in the stored format (Return-Path, X-Original-To, Received,
# message) straight into DIR/new (a fresh Maildir). MODE one: all to u<i>@one.test; ten: spread
# over d1.test .. d10.test.
queue_messages() { # DIR N MODE(one|ten)
  python3 - "$1" "$3" "$2" <<'PY'
import os, sys
root, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for d in ("tmp", "new", "cur"): os.makedirs(os.path.join(root, d), exist_ok=True)
line = b"x" * 70 + b"\r\n"
for i in range(n):
    dom = "one.test" if mode == "one" else "d%d.test" % (i % 10 + 1)
    head = (f"Return-Path: <bench@src.test>\r\nX-Original-To: <u{i}@{dom}>\r\n"
            f"Received: from bench by relay.test with ESMTP id B{i}; Tue, 24 Nov 2026 04:07:30 +0000\r\n"
            f"From: <bench@src.test>\r\nTo: <u{i}@{dom}>\r\nSubject: bench {i}\r\n\r\n").encode()
    body = line * ((4096 - len(head)) // len(line))
    name = f"1795490000.M{i:06d}P1Q{i}.bench"
    with open(os.path.join(root, "tmp", name), "wb") as f: f.write(head + body)
    os.rename(os.path.join(root, "tmp", name), os.path.join(root, "new", name))
PY
}

# Creates and starts a private Postfix instance in DIR (DIR/etc, DIR/spool, DIR/data, log in
# DIR/maillog) whose smtpd listens on 127.0.0.1:PORT, named NAME in its log, with myhostname
# HOST; main.cf lines read from stdin are appended to the common ones (relaying for
# 127.0.0.0/8 only, no TLS, no local delivery). Waits until it listens. DIR's parent must be
# readable by the postfix user.
pf_instance() { # DIR PORT NAME HOST < extra main.cf lines
  local pf=$1 port=$2 name=$3 host=$4 s
  mkdir -p "$pf/etc" "$pf/spool" "$pf/data"
  chown postfix "$pf/data"
  {
    echo "127.0.0.1:$port inet n - n - - smtpd"
    for s in "pickup unix n - n 60 1 pickup" "cleanup unix n - n - 0 cleanup" \
      "qmgr unix n - n 300 1 qmgr" "rewrite unix - - n - - trivial-rewrite" \
      "bounce unix - - n - 0 bounce" "defer unix - - n - 0 bounce" "trace unix - - n - 0 bounce" \
      "verify unix - - n - 1 verify" "flush unix n - n 1000? 0 flush" \
      "proxymap unix - - n - - proxymap" "smtp unix - - n - - smtp" "relay unix - - n - - smtp" \
      "showq unix n - n - - showq" "error unix - - n - - error" "retry unix - - n - - error" \
      "discard unix - - n - - discard" "local unix - n n - - local" "anvil unix - - n - 1 anvil" \
      "scache unix - - n - 1 scache" "postlog unix-dgram n - n - 1 postlogd"; do
      echo "$s"
    done
  } >"$pf/etc/master.cf"
  {
    cat <<EOF
compatibility_level = 3.6
queue_directory = $pf/spool
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = $name
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
myhostname = $host
mydomain = $host
myorigin = $host
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
smtp_tls_security_level = none
EOF
    cat
  } >"$pf/etc/main.cf"
  postfix -c "$pf/etc" check || { echo "postfix check failed ($pf):"; cat "$pf/maillog" 2>/dev/null; exit 1; }
  postfix -c "$pf/etc" start >/dev/null 2>&1 || { echo "postfix start failed ($pf):"; cat "$pf/maillog" 2>/dev/null; exit 1; }
  wait_until 20 "Postfix's private smtpd ($name) to listen" listening_on "$port"
}

# Stops the private instance in DIR if it was created.
pf_stop() { # DIR
  if [ -f "$1/etc/main.cf" ]; then postfix -c "$1/etc" stop >/dev/null 2>&1 || true; fi
}

# Files in one queue of the instance in DIR.
pf_count() { # DIR QUEUE
  find "$1/spool/$2" -type f 2>/dev/null | wc -l
}

# Messages in the instance's queues (incoming, active, deferred, hold, maildrop).
pf_queue() { # DIR
  echo $(( $(pf_count "$1" incoming) + $(pf_count "$1" active) + $(pf_count "$1" deferred) + $(pf_count "$1" hold) + $(pf_count "$1" maildrop) ))
}
