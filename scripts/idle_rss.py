#!/usr/bin/env python3
"""Opens N idle SMTP connections to HOST:PORT, then reports the server's RSS (from /proc/PID)
and the latency of one complete transaction made meanwhile by another client.

usage: idle_rss.py HOST PORT N PID
"""
import resource
import smtplib
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return -1


def main():
    host, port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib(pid)
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=30)
        socks.append(s)
    # Every connection got its greeting: the server really holds them all.
    for s in socks:
        if not s.recv(512).startswith(b"220"):
            raise SystemExit("a connection got no greeting")
    lat = []
    for _ in range(20):
        t = time.perf_counter()
        c = smtplib.SMTP(host, port)
        c.sendmail("a@bench.test", ["b@bench.test"], "Subject: x\r\n\r\nhi\r\n")
        c.quit()
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    print(f"rss_before_kib={before} rss_idle_kib={rss_kib(pid)} idle={n} "
          f"txn_p50_ms={lat[len(lat) // 2]:.1f} txn_max_ms={lat[-1]:.1f}")


if __name__ == "__main__":
    main()
