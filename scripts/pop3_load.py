#!/usr/bin/env python3
"""POP3 load for scripts/bench-pop3.sh (raw sockets, so that both servers get the same client).

usage: pop3_load.py retr PORT USER PASSWORD WINDOW
    Logs in, STAT, then RETRs every message with up to WINDOW commands pipelined (both servers
    advertise PIPELINING), counting responses by their terminator; QUIT without deleting.
    Prints `messages octets login_s retr_s`.
usage: pop3_load.py login PORT USER PASSWORD TOTAL CLIENTS
    CLIENTS threads log in TOTAL times between them (USER, PASS, QUIT on a new connection
    each), thread i as USER<i> (one maildrop per thread: smtpd allows one session per
    maildrop). Prints `logins seconds failures`.
"""
import socket, sys, threading, time


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    f = s.makefile("rb")
    return s, f


def expect_ok(f, what):
    line = f.readline()
    if not line.startswith(b"+OK"):
        raise SystemExit("%s: %r" % (what, line))
    return line


def login(s, f, user, password):
    expect_ok(f, "greeting")
    s.sendall(b"USER %s\r\nPASS %s\r\n" % (user.encode(), password.encode()))
    expect_ok(f, "USER")
    return f.readline()


def retr(port, user, password, window):
    t0 = time.monotonic()
    s, f = connect(port)
    line = login(s, f, user, password)
    if not line.startswith(b"+OK"):
        raise SystemExit("PASS: %r" % line)
    s.sendall(b"STAT\r\n")
    n = int(expect_ok(f, "STAT").split()[1])
    t1 = time.monotonic()
    sent = got = octets = 0
    while got < n:
        while sent < n and sent - got < window:
            sent += 1
            s.sendall(b"RETR %d\r\n" % sent)
        expect_ok(f, "RETR")
        while True:
            line = f.readline()
            if not line:
                raise SystemExit("connection closed")
            if line == b".\r\n":
                break
            octets += len(line)
        got += 1
    t2 = time.monotonic()
    s.sendall(b"QUIT\r\n")
    f.readline()
    s.close()
    print(n, octets, "%.3f" % (t1 - t0), "%.3f" % (t2 - t1))


def logins(port, user, password, total, clients):
    lock = threading.Lock()
    left = [total]
    failures = [0]

    def worker(i):
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            s, f = connect(port)
            line = login(s, f, "%s%d" % (user, i), password)
            if not line.startswith(b"+OK"):
                with lock:
                    failures[0] += 1
                    if failures[0] == 1:
                        sys.stderr.write("login failed: %r\n" % line)
            s.sendall(b"QUIT\r\n")
            f.readline()
            s.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(total, "%.3f" % (time.monotonic() - t0), failures[0])


if sys.argv[1] == "retr":
    retr(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
else:
    logins(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
