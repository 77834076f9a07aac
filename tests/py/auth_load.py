"""Many concurrent SMTP AUTH logins while one client measures NOOP round trips.

Usage: auth_load.py PORT LOGINS USER PASSWORD

First 200 NOOPs on an idle server (the baseline), then LOGINS clients connect and send
`AUTH PLAIN` at once (smtplib, one thread each, released together) while the measuring
client sends NOOP after NOOP until every login has its answer. Prints one JSON object:
idle and busy NOOP p50/p99 (ms), logins ok, and how long the logins took (s).
"""
import json
import smtplib
import sys
import threading
import time

port, logins, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))] * 1000.0


probe = smtplib.SMTP("127.0.0.1", port, timeout=60)
probe.ehlo("probe.test")


def noop():
    t = time.perf_counter()
    code, _ = probe.noop()
    assert code == 250, code
    return time.perf_counter() - t


idle = [noop() for _ in range(200)]

clients = []
for _ in range(logins):
    c = smtplib.SMTP("127.0.0.1", port, timeout=120)
    c.ehlo("load.test")
    clients.append(c)

start = threading.Barrier(logins + 1)
ok = []
lock = threading.Lock()


def login(c):
    start.wait()
    try:
        c.esmtp_features["auth"] = "PLAIN"
        c.login(user, password)
        with lock:
            ok.append(1)
    except smtplib.SMTPException as e:
        print("login failed:", e, file=sys.stderr)


threads = [threading.Thread(target=login, args=(c,)) for c in clients]
for t in threads:
    t.start()
start.wait()
t0 = time.perf_counter()
busy = []
while any(t.is_alive() for t in threads):
    busy.append(noop())
took = time.perf_counter() - t0
for t in threads:
    t.join()
for c in clients:
    c.quit()
probe.quit()
print(json.dumps({
    "idle_p50": pct(idle, 50), "idle_p99": pct(idle, 99),
    "busy_p50": pct(busy, 50), "busy_p99": pct(busy, 99), "busy_noops": len(busy),
    "logins_ok": len(ok), "logins_s": took,
}))
