#!/usr/bin/env python3
"""What systemd does for a socket-activated Type=notify service, for the tests.

Binds each --listen IP:PORT:NAME as a listening TCP socket, binds a datagram socket at --notify
PATH, then forks: the child puts the sockets at descriptors 3, 4, ... and execs the command
after "--" with LISTEN_PID (its own pid), LISTEN_FDS, LISTEN_FDNAMES and NOTIFY_SOCKET set;
the parent writes the child's pid to --pid FILE, appends every notification it receives to
--log FILE (one datagram per line, newlines shown as "|"), and exits with the child's status
once it is gone.
"""
import argparse, fcntl, os, socket, sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="append", default=[], help="ip:port:name")
    ap.add_argument("--notify", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--pid", required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    socks, names = [], []
    for spec in args.listen:
        ip, port, name = spec.rsplit(":", 2)
        s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, int(port)))
        s.listen(128)
        socks.append(s)
        names.append(name)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(args.notify)
    pid = os.fork()
    if pid == 0:
        # Out of the way first (a socket may already sit on 3, 4, ...), then into place.
        high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100) for s in socks]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i, inheritable=True)
            os.close(fd)
        env = dict(os.environ)
        env["LISTEN_PID"] = str(os.getpid())
        env["LISTEN_FDS"] = str(len(socks))
        env["LISTEN_FDNAMES"] = ":".join(names)
        env["NOTIFY_SOCKET"] = args.notify
        os.execve(command[0], command, env)
    for s in socks:
        s.close()
    with open(args.pid + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(args.pid + ".tmp", args.pid)
    notify.settimeout(0.2)
    while True:
        try:
            data = notify.recv(4096)
            with open(args.log, "a") as f:
                f.write(data.decode(errors="replace").strip("\n").replace("\n", "|") + "\n")
            continue
        except socket.timeout:
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            # Notifications sent just before the exit.
            notify.settimeout(0)
            try:
                while True:
                    data = notify.recv(4096)
                    with open(args.log, "a") as f:
                        f.write(data.decode(errors="replace").strip("\n").replace("\n", "|") + "\n")
            except (BlockingIOError, socket.timeout):
                pass
            sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
