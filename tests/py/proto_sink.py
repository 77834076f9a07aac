#!/usr/bin/env python3
"""An SMTP server for the smtp-relay protocol tests (tests/tests/relay_protocol.rs): a plain
recording sink whose misbehaviour and limits are chosen by options.

Listens on one or more loopback addresses (same port). Appends a tab-separated line per event to
--log:
  connect  CONN  ADDR
  cmd      CONN  BASE64(command line, as received)
  message  CONN  RCPT,RCPT  BASE64(data, dot-unstuffed)
  close    CONN  WHY
Options:
  --greeting TEXT       the greeting line (default "220 sink.test ESMTP")
  --double-greeting     send the greeting twice, in one write (every later reply shifts by one)
  --ehlo-name NAME      the name on the first line of the EHLO reply (default sink.test)
  --no-8bitmime         do not advertise 8BITMIME
  --smtputf8            advertise SMTPUTF8
  --data-reply LINE     answer DATA with LINE (e.g. "250 2.0.0 ok") instead of 354
  --max-rcpt N          per transaction, refuse recipients after the Nth with
                        "452 4.5.3 Too many recipients"
  --trickle SECS        send the EHLO reply (a long one) one byte every SECS seconds
  --ready FILE          create FILE once listening
Every EHLO reply advertises PIPELINING.
"""
import argparse, base64, socket, socketserver, threading, time

lock = threading.Lock()
counter = [0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="append", required=True, help="ip:port")
    ap.add_argument("--log", required=True)
    ap.add_argument("--greeting", default="220 sink.test ESMTP")
    ap.add_argument("--double-greeting", action="store_true")
    ap.add_argument("--ehlo-name", default="sink.test")
    ap.add_argument("--no-8bitmime", action="store_true")
    ap.add_argument("--smtputf8", action="store_true")
    ap.add_argument("--data-reply")
    ap.add_argument("--max-rcpt", type=int, default=0)
    ap.add_argument("--trickle", type=float, default=0.0)
    ap.add_argument("--ready")
    args = ap.parse_args()
    logf = open(args.log, "a", buffering=1)

    def log(*fields):
        with lock:
            logf.write("\t".join(str(f) for f in fields) + "\n")

    def b64(b):
        return base64.b64encode(b).decode()

    def ehlo_reply():
        ext = [args.ehlo_name, "SIZE 100000000", "PIPELINING"]
        if not args.no_8bitmime:
            ext.append("8BITMIME")
        if args.smtputf8:
            ext.append("SMTPUTF8")
        if args.trickle:
            # Long enough that trickling it takes minutes.
            ext[1:1] = [f"X-PADDING-{k:04d}" for k in range(40)]
        return "".join(
            f"250{'-' if k < len(ext) - 1 else ' '}{e}\r\n" for k, e in enumerate(ext)
        ).encode()

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

        def serve(self, s, conn):
            greeting = args.greeting.encode() + b"\r\n"
            s.sendall(greeting * 2 if args.double_greeting else greeting)
            buf = b""
            rcpts, data, in_data = [], [], False
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return "client closed"
                buf += chunk
                out = []
                while True:
                    i = buf.find(b"\n")
                    if i < 0:
                        break
                    line, buf = buf[: i + 1], buf[i + 1 :]
                    if in_data:
                        if line == b".\r\n":
                            in_data = False
                            log("message", conn, ",".join(rcpts), b64(b"".join(data)))
                            out.append(b"250 2.0.0 queued\r\n")
                            rcpts, data = [], []
                        else:
                            data.append(line[1:] if line.startswith(b".") else line)
                        continue
                    log("cmd", conn, b64(line))
                    cmd = line.decode("utf-8", "replace").rstrip("\r\n")
                    up = cmd.upper()
                    if up.startswith("EHLO"):
                        if args.trickle:
                            s.sendall(b"".join(out))
                            out = []
                            for b in ehlo_reply():
                                s.sendall(bytes([b]))
                                time.sleep(args.trickle)
                        else:
                            out.append(ehlo_reply())
                    elif up.startswith("HELO"):
                        out.append(f"250 {args.ehlo_name}\r\n".encode())
                    elif up.startswith("MAIL FROM:"):
                        rcpts = []
                        out.append(b"250 2.1.0 ok\r\n")
                    elif up.startswith("RCPT TO:"):
                        r = cmd[8:].split(" ")[0]
                        if args.max_rcpt and len(rcpts) >= args.max_rcpt:
                            out.append(b"452 4.5.3 Too many recipients\r\n")
                        else:
                            rcpts.append(r)
                            out.append(b"250 2.1.5 ok\r\n")
                    elif up == "DATA":
                        if args.data_reply:
                            out.append(args.data_reply.encode() + b"\r\n")
                        elif rcpts:
                            in_data = True
                            out.append(b"354 go ahead\r\n")
                        else:
                            out.append(b"554 5.5.1 no valid recipients\r\n")
                    elif up in ("RSET", "NOOP"):
                        rcpts = []
                        out.append(b"250 2.0.0 ok\r\n")
                    elif up == "QUIT":
                        s.sendall(b"".join(out) + b"221 2.0.0 bye\r\n")
                        return "quit"
                    else:
                        out.append(b"502 5.5.2 what\r\n")
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
