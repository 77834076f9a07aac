#!/usr/bin/env python3
"""Misbehaving SMTP servers for the smtp-relay fault tests (tests/tests/relay_faults.rs).

Listens on one or more loopback addresses (same port) and misbehaves as --mode says. Appends a
tab-separated line per event to --log:
  connect  CONN  ADDR
  read     CONN  BASE64(bytes of one recv())
  close    CONN  WHY
Modes:
  close-mid-data      normal until 354, then closes after the first chunk of message data
  silent              accepts the connection and never sends a byte (no greeting)
  silent-at-dot       normal until the final dot, which is never answered
  garbage-greeting    a greeting that is not an SMTP reply (binary and text junk)
  garbage-at-dot      answers the final dot with a line that is not an SMTP reply
  multiline-mismatch  EHLO answer whose continuation lines change code (250-... then 550 ...)
  multiline-endless   EHLO answer continued forever (250-x lines without a last line)
  long-line           EHLO answer: one line of 1 MiB without CRLF, then silence
  421-greeting        "421 4.3.2 ..." as the greeting, then closes
  421-after-mail      normal until MAIL FROM, answered with 421, then closes
  451-mid-data        after 354, answers the first chunk of data with 451 and closes
  bursty-data         a correct sink that reads message data in bursts: pauses 0.2 s (the
                      client's writes block), then takes everything queued in one recv
  stall-mid-data      after 354, stops reading (the client's writes fill the socket buffers)
  close-after-first   accepts the first message (250 after the dot), then closes at once
  421-after-first     accepts the first message, answers the next MAIL FROM with 421 and closes
  silent-after-first  accepts the first message, never answers the final dot of the next one
  trickle-greeting    sends a multi-line greeting one byte a second, forever (a slow MX)
Every mode advertises PIPELINING when it gets as far as EHLO.
"""
import argparse, base64, socket, socketserver, sys, threading, time

lock = threading.Lock()
counter = [0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="append", required=True, help="ip:port")
    ap.add_argument("--log", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--ready")
    args = ap.parse_args()
    mode = args.mode
    logf = open(args.log, "a", buffering=1)

    def log(*fields):
        with lock:
            logf.write("\t".join(str(f) for f in fields) + "\n")

    EHLO = b"250-sink.test\r\n250-SIZE 100000000\r\n250-8BITMIME\r\n250 PIPELINING\r\n"

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            with lock:
                counter[0] += 1
                conn = counter[0]
            s = self.request
            log("connect", conn, s.getsockname()[0])
            try:
                why = self.serve(s, conn)
            except OSError as e:
                why = f"error {e}"
            log("close", conn, why)

        def recv(self, s, conn, size=65536):
            chunk = s.recv(size)
            if chunk:
                log("read", conn, base64.b64encode(chunk).decode())
            return chunk

        def hold(self, s, conn):
            # Read and never answer, until the client gives up.
            while self.recv(s, conn):
                pass
            return "client closed"

        def serve(self, s, conn):
            if mode == "silent":
                return self.hold(s, conn)
            if mode == "garbage-greeting":
                s.sendall(b"\x00\xff\xfeHTTP/1.1 400 Bad Request\r\nServer: junk\r\n\r\n")
                return self.hold(s, conn)
            if mode == "trickle-greeting":
                line = b"220-sink.test is slow today\r\n"
                k = 0
                while True:
                    s.sendall(line[k % len(line):k % len(line) + 1])
                    k += 1
                    time.sleep(1)
            if mode == "421-greeting":
                s.sendall(b"421 4.3.2 sink.test too busy, try later\r\n")
                s.shutdown(socket.SHUT_RDWR)
                return "421 sent"
            s.sendall(b"220 sink.test ESMTP\r\n")
            buf = b""
            in_data = False
            accepted = 0
            while True:
                if in_data and mode == "bursty-data":
                    time.sleep(0.2)
                    chunk = self.recv(s, conn, 64 << 20)
                else:
                    chunk = self.recv(s, conn)
                if not chunk:
                    return "client closed"
                if in_data and mode == "close-mid-data":
                    s.shutdown(socket.SHUT_RDWR)
                    return "closed mid-data"
                if in_data and mode == "stall-mid-data":
                    while True:
                        time.sleep(3600)
                if in_data and mode == "451-mid-data":
                    s.sendall(b"451 4.3.0 sink.test disk full\r\n")
                    s.shutdown(socket.SHUT_RDWR)
                    return "451 mid-data"
                buf += chunk
                out = []
                # Lines are taken by position and the rest kept once per read: slicing the
                # buffer per line is quadratic, and a burst of megabytes then takes longer
                # than the client's timeout on a loaded machine.
                pos = 0
                while True:
                    i = buf.find(b"\n", pos)
                    if i < 0:
                        break
                    line, pos = buf[pos : i + 1], i + 1
                    if in_data:
                        if line == b".\r\n":
                            in_data = False
                            if mode == "silent-at-dot" or (mode == "silent-after-first" and accepted):
                                if out:
                                    s.sendall(b"".join(out))
                                return self.hold(s, conn)
                            if mode == "garbage-at-dot":
                                out.append(b"OK THANKS\r\n")
                            else:
                                out.append(b"250 2.0.0 queued\r\n")
                            accepted += 1
                            if mode == "close-after-first":
                                s.sendall(b"".join(out))
                                s.shutdown(socket.SHUT_RDWR)
                                return "closed after the first message"
                        continue
                    up = line.decode("latin-1").rstrip("\r\n").upper()
                    if up.startswith("EHLO"):
                        if mode == "multiline-mismatch":
                            out.append(b"250-sink.test\r\n250-PIPELINING\r\n550 5.0.0 changed my mind\r\n")
                        elif mode == "multiline-endless":
                            s.sendall(b"".join(out))
                            out = []
                            for k in range(5000):
                                s.sendall(b"250-X-FILLER-%d\r\n" % k)
                            return self.hold(s, conn)
                        elif mode == "long-line":
                            s.sendall(b"250-" + b"y" * (1 << 20))
                            return self.hold(s, conn)
                        else:
                            out.append(EHLO)
                    elif up.startswith("HELO"):
                        out.append(b"250 sink.test\r\n")
                    elif up.startswith("MAIL FROM:"):
                        if mode == "421-after-mail" or (mode == "421-after-first" and accepted):
                            out.append(b"421 4.3.2 sink.test shutting down\r\n")
                            s.sendall(b"".join(out))
                            s.shutdown(socket.SHUT_RDWR)
                            return "421 after MAIL"
                        out.append(b"250 2.1.0 ok\r\n")
                    elif up.startswith("RCPT TO:"):
                        out.append(b"250 2.1.5 ok\r\n")
                    elif up == "DATA":
                        in_data = True
                        out.append(b"354 go ahead\r\n")
                    elif up in ("RSET", "NOOP"):
                        out.append(b"250 2.0.0 ok\r\n")
                    elif up == "QUIT":
                        out.append(b"221 2.0.0 bye\r\n")
                        s.sendall(b"".join(out))
                        return "quit"
                    else:
                        out.append(b"502 5.5.2 what\r\n")
                buf = buf[pos:]
                if out:
                    s.sendall(b"".join(out))

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    for l in args.listen:
        ip, port = l.rsplit(":", 1)
        srv = Server((ip, int(port)), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    if args.ready:
        open(args.ready, "w").close()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
