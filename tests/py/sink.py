#!/usr/bin/env python3
"""A recording SMTP sink for the smtp-relay integration tests.

Listens on one or more loopback addresses (same port), speaks just enough ESMTP, and appends a
tab-separated line per event to a log file (base64 where bytes matter):
  connect  CONN  ADDR
  read     CONN  BASE64(bytes of one recv() outside DATA)
  message  CONN  ADDR  FROM  RCPT,RCPT  BASE64(data)
  tls      CONN  VERSION  CIPHER        (handshake done)
  tlsfail  CONN  ERROR                  (handshake failed; the connection is closed)
Options:
  --pipelining / --no-pipelining   advertise PIPELINING (default on)
  --dsn                            advertise DSN (RFC 3461); the parameters given on MAIL and
                                   RCPT are in the "read" lines, as sent
  --code RCPT=CODE                 answer RCPT TO:<RCPT> with CODE (451, 550, ...), repeatable
  --mail-code SENDER=CODE          answer MAIL FROM:<SENDER> with CODE, repeatable
  --dot-delay SECS                 wait before answering the final dot (a slow server)
  --dot-delay-for RCPT             only for transactions with this recipient (repeatable)
  --ready FILE                     create FILE once listening
  --tls-cert FILE --tls-key FILE   offer STARTTLS with this certificate (Python's ssl module)
  --implicit-tls                   TLS from the first byte instead (RFC 8314)
Data is stored dot-unstuffed, exactly as received otherwise.
"""
import argparse, base64, socket, socketserver, ssl, sys, threading, time

lock = threading.Lock()
counter = [0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="append", required=True, help="ip:port")
    ap.add_argument("--log", required=True)
    ap.add_argument("--no-pipelining", action="store_true")
    ap.add_argument("--dsn", action="store_true")
    ap.add_argument("--code", action="append", default=[])
    ap.add_argument("--mail-code", action="append", default=[])
    ap.add_argument("--dot-delay", type=float, default=0.0)
    ap.add_argument("--dot-delay-for", action="append", default=[])
    ap.add_argument("--ready")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--implicit-tls", action="store_true")
    args = ap.parse_args()
    tls_ctx = None
    if args.tls_cert:
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(args.tls_cert, args.tls_key)
    codes = {}
    for c in args.code:
        r, code = c.rsplit("=", 1)
        codes[r.lower()] = code
    mail_codes = {}
    for c in args.mail_code:
        r, code = c.rsplit("=", 1)
        mail_codes[r.lower()] = code
    logf = open(args.log, "a", buffering=1)

    def log(*fields):
        with lock:
            logf.write("\t".join(str(f) for f in fields) + "\n")

    def b64(b):
        return base64.b64encode(b).decode()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            with lock:
                counter[0] += 1
                conn = counter[0]
            s = self.request
            addr = s.getsockname()[0]
            log("connect", conn, addr)

            def start_tls(sock):
                try:
                    t = tls_ctx.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    log("tlsfail", conn, str(e).replace("\t", " "))
                    return None
                log("tls", conn, t.version(), t.cipher()[0])
                return t

            if args.implicit_tls:
                s = start_tls(s)
                if s is None:
                    return
            s.sendall(b"220 sink.test ESMTP\r\n")
            tls_on = args.implicit_tls
            buf = b""
            mail, rcpts, data, in_data = None, [], [], False
            while True:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                if not in_data:
                    log("read", conn, b64(chunk))
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
                            slow = {r.lower() for r in args.dot_delay_for}
                            if args.dot_delay and (
                                not slow or any(r.strip("<>").lower() in slow for r in rcpts)
                            ):
                                if out:
                                    s.sendall(b"".join(out))
                                    out = []
                                time.sleep(args.dot_delay)
                            log("message", conn, addr, mail, ",".join(rcpts), b64(b"".join(data)))
                            out.append(b"250 2.0.0 queued\r\n")
                            mail, rcpts, data = None, [], []
                        else:
                            if line.startswith(b"."):
                                line = line[1:]
                            data.append(line)
                        continue
                    cmd = line.decode("latin-1").rstrip("\r\n")
                    up = cmd.upper()
                    if up.startswith("EHLO"):
                        ext = ["sink.test", "SIZE 100000000", "8BITMIME"]
                        if tls_ctx and not tls_on:
                            ext.append("STARTTLS")
                        if not args.no_pipelining:
                            ext.append("PIPELINING")
                        if args.dsn:
                            ext.append("DSN")
                        out.append("".join(
                            f"250{'-' if k < len(ext) - 1 else ' '}{e}\r\n" for k, e in enumerate(ext)).encode())
                    elif up.startswith("HELO"):
                        out.append(b"250 sink.test\r\n")
                    elif up.startswith("MAIL FROM:"):
                        sender = cmd[10:].split(" ")[0]
                        code = mail_codes.get(sender.strip("<>").lower(), "250")
                        rcpts = []
                        if code.startswith("2"):
                            mail = sender
                            out.append(b"250 2.1.0 ok\r\n")
                        else:
                            mail = None
                            out.append(f"{code} {code[0]}.1.0 sender {sender}\r\n".encode())
                    elif up.startswith("RCPT TO:"):
                        r = cmd[8:].split(" ")[0]
                        code = codes.get(r.strip("<>").lower(), "250")
                        if code.startswith("2"):
                            rcpts.append(r)
                        out.append(f"{code} {code[0]}.1.1 rcpt {r}\r\n".encode())
                    elif up == "DATA":
                        if mail and rcpts:
                            in_data = True
                            out.append(b"354 go ahead\r\n")
                        else:
                            out.append(b"554 5.5.1 no valid recipients\r\n")
                    elif up == "RSET":
                        mail, rcpts = None, []
                        out.append(b"250 2.0.0 ok\r\n")
                    elif up == "STARTTLS" and tls_ctx and not tls_on:
                        s.sendall(b"".join(out) + b"220 2.0.0 ready to start TLS\r\n")
                        out = []
                        s = start_tls(s)
                        if s is None:
                            return
                        tls_on = True
                        # RFC 3207: the session starts again; pipelined plaintext is dropped.
                        buf, mail, rcpts = b"", None, []
                        break
                    elif up == "NOOP":
                        out.append(b"250 2.0.0 ok\r\n")
                    elif up == "QUIT":
                        out.append(b"221 2.0.0 bye\r\n")
                        s.sendall(b"".join(out))
                        return
                    else:
                        out.append(b"502 5.5.2 what\r\n")
                if out:
                    try:
                        s.sendall(b"".join(out))
                    except OSError:
                        return

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    servers = []
    for l in args.listen:
        ip, port = l.rsplit(":", 1)
        srv = Server((ip, int(port)), Handler)
        servers.append(srv)
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
