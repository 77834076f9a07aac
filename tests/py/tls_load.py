#!/usr/bin/env python3
"""Load generator for scripts/bench-tls.sh: TLS handshakes, 4 KiB messages over STARTTLS or
plaintext, and the latency of plain transactions while many clients handshake at once.

  handshake HOST PORT --procs P --secs S [--implicit] [--pid PID]
      P processes loop connect, (EHLO, STARTTLS,) handshake, QUIT; prints handshakes/s and,
      with --pid, the server's CPU time per handshake (from /proc/PID/stat).
  send HOST PORT --procs P --msgs M [--tls] [--per-conn] [--pid PID]
      P processes send M messages of 4 KiB each, over one session each (or a new connection per
      message with --per-conn), with STARTTLS when --tls; prints messages/s.
  probe HOST PORT --secs S [--storm N] [--control PORT2]
      Plain transactions (connect, EHLO, MAIL, RCPT, DATA 4 KiB, QUIT), one after another, for S
      seconds; with --storm N, N threads in another process meanwhile bring N connections to
      `220 Ready to start TLS`, wait for each other, and handshake all at once, round after
      round. With --control, transactions alternate between PORT and an idle server on PORT2
      that no storm touches, so machine-wide CPU contention (the clients share the cores) is
      told apart from delay inside the stormed server. Prints latency percentiles per server.
  handshake ... --plain: the same loop without STARTTLS (connection cost baseline).
One output line, `key=value` pairs, for the script to tabulate.
"""
import argparse, multiprocessing as mp, os, socket, ssl, threading, time

BODY = None


def body():
    global BODY
    if BODY is None:
        line = b"x" * 62 + b"\r\n"  # 64 octets a line
        head = b"From: bench@bench.test\r\nTo: rcpt@bench.test\r\nSubject: bench\r\n\r\n"
        BODY = head + line * ((4096 - len(head)) // 64)
    return BODY


def ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE  # load, not verification, is measured
    return c


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed by server")
                self.buf += chunk
                continue
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            if line[3:4] != b"-":
                return line

    def cmd(self, line, want):
        self.sock.sendall(line + b"\r\n")
        r = self.reply()
        if not r.startswith(want):
            raise RuntimeError(f"{line!r} -> {r!r}")
        return r

    def starttls(self, c):
        self.cmd(b"STARTTLS", b"220")
        self.sock = c.wrap_socket(self.sock, server_hostname="mx.test")

    def mail(self):
        self.cmd(b"MAIL FROM:<bench@bench.test>", b"250")
        self.cmd(b"RCPT TO:<rcpt@bench.test>", b"250")
        self.cmd(b"DATA", b"354")
        self.sock.sendall(body() + b".\r\n")
        r = self.reply()
        if not r.startswith(b"250"):
            raise RuntimeError(f"after DATA: {r!r}")

    def close(self):
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        except OSError:
            pass
        self.sock.close()


def cpu(pid):
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def handshake_worker(a, stop_at, q):
    c, n = ctx(), 0
    while time.monotonic() < stop_at:
        if a.implicit:
            s = socket.create_connection((a.host, a.port), timeout=60)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn.__new__(Conn)
            conn.sock, conn.buf = c.wrap_socket(s, server_hostname="mx.test"), b""
            conn.reply()
        else:
            conn = Conn(a.host, a.port)
            conn.reply()
            conn.cmd(b"EHLO bench.test", b"250")
            if not a.plain:
                conn.starttls(c)
        conn.cmd(b"EHLO bench.test", b"250")
        conn.close()
        n += 1
    q.put(n)


def send_worker(a, q):
    c, n = ctx(), 0
    conn = None
    for i in range(a.msgs):
        if conn is None:
            conn = Conn(a.host, a.port)
            conn.reply()
            conn.cmd(b"EHLO bench.test", b"250")
            if a.tls:
                conn.starttls(c)
                conn.cmd(b"EHLO bench.test", b"250")
        conn.mail()
        n += 1
        if a.per_conn:
            conn.close()
            conn = None
    if conn:
        conn.close()
    q.put(n)


def run_procs(target, args, procs):
    q = mp.Queue()
    ps = [mp.Process(target=target, args=args + (q,)) for _ in range(procs)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    total = sum(q.get() for _ in ps)
    for p in ps:
        p.join()
    return total, time.monotonic() - t0


def storm(a, stop, counts):
    """Process body: N threads reach `220 Ready`, wait for all, handshake together; repeat."""
    c = ctx()
    barrier = threading.Barrier(a.storm)
    lock = threading.Lock()

    def one():
        while not stop.is_set():
            try:
                conn = Conn(a.host, a.port)
                conn.reply()
                conn.cmd(b"EHLO storm.test", b"250")
                conn.cmd(b"STARTTLS", b"220")
                barrier.wait(timeout=30)
                conn.sock = c.wrap_socket(conn.sock, server_hostname="mx.test")
                conn.cmd(b"EHLO storm.test", b"250")
                conn.close()
                with lock:
                    counts[0] += 1
            except threading.BrokenBarrierError:
                return
            except (OSError, RuntimeError):
                with lock:
                    counts[1] += 1

    ts = [threading.Thread(target=one, daemon=True) for _ in range(a.storm)]
    for t in ts:
        t.start()
    stop.wait()
    barrier.abort()


def transaction(host, port):
    t0 = time.monotonic()
    conn = Conn(host, port)
    conn.reply()
    conn.cmd(b"EHLO probe.test", b"250")
    conn.mail()
    conn.close()
    return time.monotonic() - t0


def summary(name, lat):
    lat = sorted(lat)
    pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p / 100))] * 1000
    return (f"{name}_n={len(lat)} {name}_p50_ms={pct(50):.1f} {name}_p90_ms={pct(90):.1f} "
            f"{name}_p99_ms={pct(99):.1f} {name}_max_ms={lat[-1]*1000:.1f}")


def probe(a):
    stop, counts = mp.Event(), mp.Array("l", 2)
    p = None
    if a.storm:
        p = mp.Process(target=storm, args=(a, stop, counts))
        p.start()
        time.sleep(1.5)  # let the rounds start
    h0 = counts[0]
    lat, ctl, end = [], [], time.monotonic() + a.secs
    while time.monotonic() < end:
        lat.append(transaction(a.host, a.port))
        if a.control:
            ctl.append(transaction(a.host, a.control))
    hs = counts[0] - h0
    stop.set()
    if p:
        p.join(timeout=60)
    out = summary("stormed", lat)
    if ctl:
        out += " " + summary("control", ctl)
    print(f"{out} storm_handshakes_per_s={hs/a.secs:.0f} storm_errors={counts[1]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["handshake", "send", "probe"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--secs", type=float, default=5)
    ap.add_argument("--msgs", type=int, default=200)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--per-conn", action="store_true")
    ap.add_argument("--implicit", action="store_true")
    ap.add_argument("--storm", type=int, default=0)
    ap.add_argument("--pid", type=int, default=0)
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--control", type=int, default=0)
    a = ap.parse_args()
    if a.mode == "probe":
        return probe(a)
    c0 = cpu(a.pid)
    if a.mode == "handshake":
        n, e = run_procs(handshake_worker, (a, time.monotonic() + a.secs), a.procs)
        c1 = cpu(a.pid)
        extra = f" server_cpu_us_per_handshake={(c1-c0)/n*1e6:.0f}" if a.pid else ""
        print(f"handshakes={n} secs={e:.2f} per_s={n/e:.0f}{extra}")
    else:
        n, e = run_procs(send_worker, (a,), a.procs)
        c1 = cpu(a.pid)
        extra = f" server_cpu_us_per_msg={(c1-c0)/n*1e6:.0f}" if a.pid else ""
        print(f"messages={n} secs={e:.2f} per_s={n/e:.0f}{extra}")


if __name__ == "__main__":
    main()
