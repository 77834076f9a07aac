#!/usr/bin/env python3
"""A POP3 client for the POP3 tests, on Python's poplib (which nobody here wrote).

usage: pop3_client.py HOST PORT MODE CAFILE USER PASSWORD COMMAND...
MODE is `plain`, `ssl` (POP3_SSL, implicit TLS) or `stls` (plain, then STLS). CAFILE verifies
the server's certificate chain ("-" for plain). It logs in with USER/PASS (or `auth:` before
the user name: AUTH PLAIN with an initial response), then runs each COMMAND: `stat`, `list`,
`uidl`, `top N M`, `retr N`, `retrsha N` (SHA-256 of the message), `dele N`, `noop`, `rset`, `quit`, `drop` (close the socket
without QUIT), `wait` (read until the server says something or closes).
Prints one line per step, `NAME<TAB>RESULT`: the login as `login`, lists as `n size,n size`,
RETR/TOP bodies as the hex of the lines joined with CR LF (poplib undoes the dot-stuffing),
errors as `ERR <server text>`. A refused connection (an `-ERR` greeting) prints
`connect<TAB>ERR <greeting>`. With POP3_SOURCE=IP in the environment the client connects
from that address (e.g. 127.0.0.2).
"""
import base64, hashlib, os, poplib, socket, ssl, sys

host, port, mode, cafile, user, password = sys.argv[1:7]
commands = sys.argv[7:]


def context():
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False  # the test certificate names pop.test, we dial 127.0.0.1
    return ctx


def say(name, result):
    print("%s\t%s" % (name, result), flush=True)


source = os.environ.get("POP3_SOURCE")
if source:
    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(source, 0))
    poplib.POP3._create_socket = _create_socket

try:
    if mode == "ssl":
        p = poplib.POP3_SSL(host, int(port), context=context(), timeout=60)
    else:
        p = poplib.POP3(host, int(port), timeout=60)
except poplib.error_proto as e:
    say("connect", "ERR " + e.args[0].decode(errors="replace"))
    sys.exit(0)
if mode == "stls":
    say("stls", p.stls(context=context()).decode())
try:
    if user.startswith("auth:"):
        token = base64.b64encode(b"\0" + user[5:].encode() + b"\0" + password.encode())
        say("login", p._shortcmd("AUTH PLAIN " + token.decode()).decode())
    else:
        p.user(user)
        say("login", p.pass_(password).decode())
except poplib.error_proto as e:
    say("login", "ERR " + e.args[0].decode())
    sys.exit(0)

for c in commands:
    name, *args = c.split()
    try:
        if name == "stat":
            r = "%d %d" % p.stat()
        elif name in ("list", "uidl"):
            resp, lines, _ = getattr(p, name)()
            r = ",".join(l.decode() for l in lines)
        elif name in ("top", "retr"):
            resp, lines, _ = getattr(p, name)(*map(int, args))
            r = (b"\r\n".join(lines) + b"\r\n").hex()
        elif name == "retrsha":
            resp, lines, octets = p.retr(int(args[0]))
            r = hashlib.sha256(b"\r\n".join(lines) + b"\r\n").hexdigest()
        elif name in ("dele", "noop", "rset", "quit"):
            r = getattr(p, name)(*map(int, args)).decode()
        elif name == "drop":
            p.sock.close()
            p.file.close()
            r = "dropped"
        elif name == "wait":
            r = p._getline()[0].decode()
        else:
            r = "unknown step"
    except poplib.error_proto as e:
        r = "ERR " + e.args[0].decode(errors="replace")
    say(name, r)
