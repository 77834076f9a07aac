#!/usr/bin/env python3
"""Opens up to N idle SMTP connections to HOST:PORT with a ramp (at most RAMP connections
waiting for their greeting at any time, so the server's listen queue never overflows), then
reports the memory of the server: RSS (and PSS, which shares common pages fairly) summed over
the given PIDs and all their descendants (Postfix: pass the master's PID).

A connection counts as admitted once it got a 220 greeting. A server that admits only so many
(Postfix: its process limit) leaves the rest waiting; once no greeting has arrived for STALL
seconds the ramp stops and the script reports what was admitted.

usage: idle_conns.py HOST PORT N PID[,PID...] [--ramp 256] [--stall 3]
prints: admitted=.. refused=.. waiting=.. held=.. procs=.. rss_before_kib=.. rss_kib=..
        pss_before_kib=.. pss_kib=.. open_secs=..
"""
import argparse
import errno
import os
import resource
import selectors
import socket
import time


def tree(roots):
    """The given PIDs and every descendant."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def field(path, name):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(roots):
    pids = tree(roots)
    rss = sum(field(f"/proc/{p}/status", "VmRSS") for p in pids)
    pss = sum(field(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)
    return len(pids), rss, pss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("pids")
    ap.add_argument("--ramp", type=int, default=256)
    ap.add_argument("--stall", type=float, default=3.0)
    a = ap.parse_args()
    roots = [int(p) for p in a.pids.split(",")]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    _, rss_before, pss_before = memory(roots)
    sel = selectors.DefaultSelector()
    greeted, pending = [], {}
    refused = 0
    opened = 0
    t0 = last = time.monotonic()
    while True:
        now = time.monotonic()
        stalled = pending and now - last > a.stall
        if (opened >= a.n or stalled) and (not pending or stalled):
            break
        while opened < a.n and len(pending) < a.ramp and not stalled:
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex((a.host, a.port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                refused += 1
                opened += 1
                continue
            sel.register(s, selectors.EVENT_READ)
            pending[s] = b""
            opened += 1
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(512)
            except OSError:
                data = b""
            buf = pending[s] + data
            if data and b"\n" not in buf:
                pending[s] = buf  # greeting not complete yet
                continue
            sel.unregister(s)
            del pending[s]
            if buf.startswith(b"220"):
                greeted.append(s)
                last = time.monotonic()
            else:
                refused += 1
                s.close()
    open_secs = last - t0
    time.sleep(1.0)  # let the server settle (allocations after the greeting)
    procs, rss, pss = memory(roots)
    # Which admitted connections are still held (not closed or timed out by the server)?
    held = 0
    for s in greeted:
        s.setblocking(False)
        try:
            s.recv(512)  # EOF or a reply (421 timeout): the server let it go
            gone = True
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        held += not gone
    print(f"admitted={len(greeted)} refused={refused} waiting={len(pending)} held={held} "
          f"procs={procs} rss_before_kib={rss_before} rss_kib={rss} pss_before_kib={pss_before} "
          f"pss_kib={pss} "
          f"open_secs={open_secs:.1f}")
    for s in greeted + list(pending):
        s.close()


if __name__ == "__main__":
    main()
