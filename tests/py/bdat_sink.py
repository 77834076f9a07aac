#!/usr/bin/env python3
"""A recording SMTP sink that speaks CHUNKING (RFC 3030 BDAT) as well as DATA, for the
smtp-relay CHUNKING tests (aiosmtpd has no BDAT). Raw sockets, one thread per connection.

EHLO offers PIPELINING, CHUNKING, SIZE and 8BITMIME (CHUNKING left out with --no-chunking).
Commands are read line by line from a buffer that also holds pipelined chunk data: `BDAT n
[LAST]` takes exactly the next n octets, whatever they contain. Logs one tab-separated line
per event to --log:
  connect  CONN  ADDR
  message  CONN  METHOD  FROM  RCPT,RCPT  BASE64(data)     METHOD is BDAT or DATA
  refused  CONN  METHOD  CODE                               a BDAT/DATA refused (no recipient)
  recvs    CONN  N                                          recv() calls, at QUIT
Options:
  --listen IP:PORT  --log FILE  --ready FILE
  --code RCPT=CODE      answer RCPT TO:<RCPT> with CODE (451, 550, ...), repeatable
  --no-chunking         do not offer CHUNKING
DATA content is stored dot-unstuffed; BDAT content exactly as received.
"""
import argparse, base64, socket, socketserver, threading, time

lock = threading.Lock()
counter = [0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--ready")
    ap.add_argument("--code", action="append", default=[])
    ap.add_argument("--no-chunking", action="store_true")
    args = ap.parse_args()
    codes = {}
    for c in args.code:
        r, code = c.rsplit("=", 1)
        codes[r.lower()] = code
    logf = open(args.log, "a", buffering=1)

    def log(*fields):
        with lock:
            logf.write("\t".join(str(f) for f in fields) + "\n")

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            with lock:
                counter[0] += 1
                conn = counter[0]
            s = self.request
            log("connect", conn, s.getsockname()[0])
            s.sendall(b"220 bdat-sink.test ESMTP\r\n")
            buf = bytearray()
            recvs = [0]

            def fill(n):
                """Reads until buf holds n octets; False at EOF."""
                while len(buf) < n:
                    try:
                        chunk = s.recv(262144)
                    except OSError:
                        return False
                    if not chunk:
                        return False
                    recvs[0] += 1
                    buf.extend(chunk)
                return True

            def line():
                while True:
                    i = buf.find(b"\n")
                    if i >= 0:
                        out = bytes(buf[: i + 1])
                        del buf[: i + 1]
                        return out
                    if not fill(len(buf) + 1):
                        return None

            mail, rcpts, data, failed = None, [], bytearray(), False
            out = []

            def flush():
                if out:
                    s.sendall(b"".join(out))
                    out.clear()

            def reset():
                nonlocal mail, rcpts, data, failed
                mail, rcpts, data, failed = None, [], bytearray(), False

            while True:
                # Answer only when no more pipelined input is waiting (as a real server does).
                if out and b"\n" not in buf:
                    flush()
                l = line()
                if l is None:
                    return
                cmd = l.decode("latin-1").rstrip("\r\n")
                up = cmd.upper()
                if up.startswith("EHLO"):
                    ext = ["bdat-sink.test", "PIPELINING", "SIZE 100000000", "8BITMIME"]
                    if not args.no_chunking:
                        ext.append("CHUNKING")
                    out.append("".join(
                        f"250{'-' if k < len(ext) - 1 else ' '}{e}\r\n" for k, e in enumerate(ext)).encode())
                elif up.startswith("MAIL FROM:"):
                    reset()
                    mail = cmd[10:].split(" ")[0]
                    out.append(b"250 2.1.0 ok\r\n")
                elif up.startswith("RCPT TO:"):
                    r = cmd[8:].split(" ")[0]
                    code = codes.get(r.strip("<>").lower(), "250")
                    if mail is None:
                        out.append(b"503 5.5.1 need MAIL\r\n")
                    else:
                        if code.startswith("2"):
                            rcpts.append(r)
                        out.append(f"{code} {code[0]}.1.1 rcpt {r}\r\n".encode())
                elif up.startswith("BDAT ") and not args.no_chunking:
                    words = up.split()
                    n = int(words[1])
                    last = len(words) > 2 and words[2] == "LAST"
                    if not fill(n):
                        return
                    chunk = bytes(buf[:n])
                    del buf[:n]
                    if failed or mail is None or not rcpts:
                        # RFC 3030: the chunk is read and discarded; the transaction failed.
                        if not failed:
                            log("refused", conn, "BDAT", 554)
                        failed = True
                        out.append(b"554 5.5.1 no valid recipients\r\n")
                        if last:
                            reset()
                        continue
                    data.extend(chunk)
                    if last:
                        log("message", conn, "BDAT", mail, ",".join(rcpts),
                            base64.b64encode(bytes(data)).decode())
                        out.append(b"250 2.0.0 queued\r\n")
                        reset()
                    else:
                        out.append(f"250 2.0.0 {n} octets received\r\n".encode())
                elif up == "DATA":
                    if mail is None or not rcpts:
                        log("refused", conn, "DATA", 554)
                        out.append(b"554 5.5.1 no valid recipients\r\n")
                        continue
                    out.append(b"354 go ahead\r\n")
                    flush()
                    while True:
                        d = line()
                        if d is None:
                            return
                        if d == b".\r\n":
                            break
                        data.extend(d[1:] if d.startswith(b".") else d)
                    log("message", conn, "DATA", mail, ",".join(rcpts),
                        base64.b64encode(bytes(data)).decode())
                    out.append(b"250 2.0.0 queued\r\n")
                    reset()
                elif up == "RSET":
                    reset()
                    out.append(b"250 2.0.0 ok\r\n")
                elif up == "QUIT":
                    log("recvs", conn, recvs[0])
                    out.append(b"221 2.0.0 bye\r\n")
                    flush()
                    return
                else:
                    out.append(b"502 5.5.2 what\r\n")

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    ip, port = args.listen.rsplit(":", 1)
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
