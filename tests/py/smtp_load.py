#!/usr/bin/env python3
"""SMTP load for the kill-under-load tests (tests/src/smtp.rs `Load`).

usage: smtp_load.py HOST PORT TOTAL THREADS DOMAIN RCPT...
THREADS smtplib sessions send TOTAL messages between them; message i comes from loadI@DOMAIN to
every RCPT (a `%d` in one is replaced by i), with a body of its own (Subject "load i", lines
starting with a dot, "END i" last). Prints `ACK i <reply>` for every 250 after DATA, `NAK ...`
for a refusal (that session then stops), `ERR ...` for an exception, and `DONE` at the end.
"""
import smtplib, sys, threading

host, port, total, nthreads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
domain, rcpts = sys.argv[5], sys.argv[6:]
lock = threading.Lock()
nxt = [0]


def body(i):
    lines = ["Subject: load %d" % i, "Message-ID: <load-%d@%s>" % (i, domain), ""]
    for k in range(10 + (i * 37) % 150):
        lines.append("message %d line %d %s" % (i, k, "abcdefghij" * 5))
        if k % 10 == 3:
            lines.append(".dot line %d" % k)
    lines.append("END %d" % i)
    return ("\r\n".join(lines) + "\r\n").encode()


def take():
    with lock:
        i = nxt[0]
        if i >= total:
            return None
        nxt[0] += 1
        return i


def out(s):
    with lock:
        sys.stdout.write(s + "\n")
        sys.stdout.flush()


def worker():
    try:
        s = smtplib.SMTP(host, port, local_hostname="load.test", timeout=30)
        s.ehlo()
        while True:
            i = take()
            if i is None:
                break
            code, resp = s.mail("load%d@%s" % (i, domain))
            if code != 250:
                out("NAK %d mail %d" % (i, code)); return
            for r in rcpts:
                code, resp = s.rcpt(r.replace("%d", str(i)))
                if code != 250:
                    out("NAK %d rcpt %d" % (i, code)); return
            code, resp = s.data(body(i))
            if code == 250:
                out("ACK %d %s" % (i, resp.decode()))
            else:
                out("NAK %d data %d %s" % (i, code, resp.decode())); return
        s.quit()
    except Exception as e:
        out("ERR %s %s" % (type(e).__name__, e))


ts = [threading.Thread(target=worker) for _ in range(nthreads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
out("DONE")
