//! A raw-socket SMTP client for the smtpd tests, the parser of what smtpd stores in `new/`, and
//! a starter that keeps the server's log in a file beside its Maildir, the check that smtpd
//! refuses to start with one line on stderr, and a Python smtplib load (`tests/py/smtp_load.py`)
//! for the kill-under-load tests.
//!
//! The client records a transcript (`C:` sent, `S:` received) and every failed expectation
//! panics with it, so a failing test shows the whole dialogue.

use crate::{Smtpd, bin, wait_for};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a reply may take before a test gives up, unless told otherwise.
pub const REPLY_LIMIT: Duration = Duration::from_secs(15);

/// The host name the smtpd tests give the server with `--hostname`.
pub const HOST: &str = "mx.smtpd.test";

/// Starts smtpd on 127.0.0.1 with `--hostname HOST`, a fresh Maildir and extra arguments; its
/// stderr goes to `smtpd.log` beside the Maildir (see [`server_log`]).
pub fn start(extra: &[&str]) -> Smtpd {
    start_on("127.0.0.1", extra)
}

/// Like [`start`], listening on `ip`.
pub fn start_on(ip: &str, extra: &[&str]) -> Smtpd {
    let dir = tempfile::tempdir().expect("temp dir");
    let maildir = dir.path().join("Maildir");
    let log = std::fs::File::create(dir.path().join("smtpd.log")).expect("create smtpd.log");
    let port = crate::free_port(ip);
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("socket address");
    let child = Command::new(bin("smtpd"))
        .arg("--maildir")
        .arg(&maildir)
        .arg("--listen")
        .arg(addr.to_string())
        .args(["--hostname", HOST])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn smtpd");
    let mut s = Smtpd {
        child,
        addr,
        maildir,
        _dir: Some(dir),
    };
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        // A connection to oneself (source port == the free port, before smtpd listens) is not
        // smtpd listening.
        // Nor is another program that took the port first: wait for our greeting.
        if let Ok(probe) = TcpStream::connect(addr)
            && probe.local_addr().ok() != Some(addr)
        {
            let mut c = Client::from_stream(probe);
            let greeted = c
                .try_reply_until(Instant::now() + Duration::from_secs(2))
                .is_ok_and(|r| r.starts(&format!("220 {HOST} ")));
            if greeted && s.child.try_wait().ok().flatten().is_none() {
                break;
            }
        }
        if let Ok(Some(status)) = s.child.try_wait() {
            panic!(
                "smtpd exited with {status} before listening\n{}",
                server_log(&s)
            );
        }
        assert!(
            Instant::now() < end,
            "smtpd did not listen on {addr} within 10 s\n{}",
            server_log(&s)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    s
}

/// The server's stderr so far (for [`start`]ed servers), last 4 KiB.
pub fn server_log(s: &Smtpd) -> String {
    let path = s.maildir.parent().map(|d| d.join("smtpd.log"));
    let text = path
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let cut = text.len().saturating_sub(4096);
    let cut = (cut..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    format!("--- smtpd log (tail) ---\n{}", &text[cut..])
}

/// Waits up to `limit` for the server to exit and returns its exit code (`None`: killed by a
/// signal).
pub fn wait_exit(s: &mut Smtpd, limit: Duration) -> Option<i32> {
    let mut status = None;
    wait_for("smtpd to exit", limit, || {
        status = s.child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.and_then(|st| st.code())
}

/// Raises the soft limit on open files to the hard limit (1,000 connections need it).
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// One SMTP reply: its code and every line as received (without CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The lines, e.g. `250-mx.smtpd.test`, `250 SMTPUTF8`.
    pub lines: Vec<String>,
}

impl Reply {
    /// The last line, e.g. `250 2.0.0 Ok: queued as ID`.
    pub fn last(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or("")
    }

    /// True when the last line starts with `prefix` (e.g. `"250 2.1.0"`).
    pub fn starts(&self, prefix: &str) -> bool {
        self.last().starts_with(prefix)
    }

    /// Code and enhanced code of the last line, e.g. `"250 2.1.5"` (the contract part).
    pub fn status(&self) -> String {
        let mut w = self.last().splitn(3, ' ');
        let code = w.next().unwrap_or("");
        match w.next() {
            Some(e) if e.chars().next().is_some_and(|c| c.is_ascii_digit()) && e.contains('.') => {
                format!("{code} {e}")
            }
            _ => code.to_owned(),
        }
    }

    /// The queue id of a `250 ... queued as ID` reply.
    pub fn queue_id(&self) -> Option<String> {
        let l = self.last();
        let at = l.find("queued as ")?;
        let id = l[at + "queued as ".len()..].trim();
        let id = id.split_whitespace().next()?;
        Some(id.to_owned())
    }

    /// Text of the extension lines of an EHLO reply (code and separator cut off).
    pub fn texts(&self) -> Vec<&str> {
        self.lines
            .iter()
            .map(|l| l.get(4..).unwrap_or(""))
            .collect()
    }
}

/// A raw SMTP client over one TCP connection, with a transcript.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// What was sent (`C:`) and received (`S:`), for failure messages.
    pub transcript: String,
    /// Set once the server closed the connection.
    pub eof: bool,
}

fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s
        .replace('\r', "\\r")
        .replace('\n', "\\n")
        .replace('\t', "\\t");
    if s.chars().count() > 300 {
        let head: String = s.chars().take(200).collect();
        let tail: String = s
            .chars()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{head} ...[{} octets]... {tail}", bytes.len())
    } else {
        s
    }
}

/// Connects from a chosen local IPv4 address (bind before connect), e.g. 127.0.0.2.
pub fn connect_from(local: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr_in structs are fully
    // initialised and their sizes are passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let sin = |ip: Ipv4Addr, port: u16| {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = port.to_be();
            sa.sin_addr.s_addr = u32::from(ip).to_be();
            sa
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let me = sin(local, 0);
        if libc::bind(fd, (&me as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let peer = sin(*to.ip(), to.port());
        if libc::connect(fd, (&peer as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

impl Client {
    /// Connects to `addr` (does not read the greeting).
    pub fn connect(addr: SocketAddr) -> Client {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to smtpd at {addr}: {e}"));
        Client::from_stream(stream)
    }

    /// Connects to `addr` from local address `local`.
    pub fn connect_from(local: Ipv4Addr, addr: SocketAddr) -> Client {
        let stream = connect_from(local, addr)
            .unwrap_or_else(|e| panic!("connect from {local} to smtpd at {addr}: {e}"));
        Client::from_stream(stream)
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Client {
            stream,
            buf: Vec::new(),
            transcript: String::new(),
            eof: false,
        }
    }

    /// Connects and expects the `220` greeting.
    pub fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.expect_reply("220 ");
        c
    }

    /// Panics with `msg` and the transcript.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n--- transcript ---\n{}", self.transcript)
    }

    /// Sends bytes in one write.
    pub fn send(&mut self, bytes: &[u8]) {
        self.transcript.push_str(&format!("C: {}\n", show(bytes)));
        if let Err(e) = self.stream.write_all(bytes) {
            self.fail(&format!("write failed: {e}"));
        }
    }

    /// Sends bytes one octet per write.
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        self.transcript
            .push_str(&format!("C (1 octet per write): {}\n", show(bytes)));
        for b in bytes {
            if let Err(e) = self.stream.write_all(std::slice::from_ref(b)) {
                self.fail(&format!("write failed: {e}"));
            }
        }
    }

    /// Sends bytes in chunks of `n` octets, one write each.
    pub fn send_chunked(&mut self, bytes: &[u8], n: usize) {
        self.transcript
            .push_str(&format!("C ({n} octets per write): {}\n", show(bytes)));
        for c in bytes.chunks(n) {
            if let Err(e) = self.stream.write_all(c) {
                self.fail(&format!("write failed: {e}"));
            }
        }
    }

    /// Sends a command line (CRLF appended).
    pub fn line(&mut self, line: &str) {
        self.send(format!("{line}\r\n").as_bytes());
    }

    /// Reads more input, waiting at most until `deadline`. Ok(false) on timeout.
    fn fill(&mut self, deadline: Instant) -> io::Result<bool> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        self.stream.set_read_timeout(Some(deadline - now))?;
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Ok(true)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Reads one whole (possibly multi-line) reply before `deadline`. Err describes what went
    /// wrong (timeout, close, reset, garbage) without panicking.
    pub fn try_reply_until(&mut self, deadline: Instant) -> Result<Reply, String> {
        let mut lines = Vec::new();
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let line = String::from_utf8_lossy(&raw[..pos]).into_owned();
                self.transcript.push_str(&format!("S: {line}\n"));
                let b = line.as_bytes();
                let ok = b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit);
                if !ok || (b.len() > 3 && b[3] != b' ' && b[3] != b'-') {
                    return Err(format!("malformed reply line {line:?}"));
                }
                let more = b.len() > 3 && b[3] == b'-';
                lines.push(line);
                if !more {
                    let code = lines[0][..3].parse().expect("three digits");
                    return Ok(Reply { code, lines });
                }
                continue;
            }
            if self.eof {
                if !self.buf.is_empty() {
                    self.transcript
                        .push_str(&format!("S (partial): {}\n", show(&self.buf)));
                }
                self.transcript.push_str("S: <connection closed>\n");
                return Err("connection closed by the server".into());
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => {
                    self.transcript
                        .push_str("S: <nothing more before the deadline>\n");
                    return Err("timed out waiting for a reply".into());
                }
                Err(e) => {
                    self.transcript.push_str(&format!("S: <error {e}>\n"));
                    return Err(format!("read error: {e}"));
                }
            }
        }
    }

    /// Reads one reply (panics with the transcript if none comes within [`REPLY_LIMIT`]).
    pub fn reply(&mut self) -> Reply {
        match self.try_reply_until(Instant::now() + REPLY_LIMIT) {
            Ok(r) => r,
            Err(e) => self.fail(&e),
        }
    }

    /// Reads one reply and asserts its last line starts with `prefix`.
    pub fn expect_reply(&mut self, prefix: &str) -> Reply {
        let r = self.reply();
        if !r.starts(prefix) {
            self.fail(&format!(
                "expected a reply starting {prefix:?}, got {:?}",
                r.last()
            ));
        }
        r
    }

    /// Sends a command line and returns its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.line(line);
        self.reply()
    }

    /// Sends a command line and asserts the reply starts with `prefix`.
    pub fn expect(&mut self, line: &str, prefix: &str) -> Reply {
        self.line(line);
        self.expect_reply(prefix)
    }

    /// Expects the server to close the connection within `limit` with nothing more to say.
    pub fn expect_close(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if !self.buf.is_empty() {
                let b = self.buf.clone();
                self.fail(&format!("expected close, got more data {:?}", show(&b)));
            }
            if self.eof {
                self.transcript.push_str("S: <connection closed>\n");
                return;
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => self.fail(&format!("connection still open after {limit:?}")),
                // A reset also ends the connection.
                Err(_) => {
                    self.transcript.push_str("S: <connection reset>\n");
                    return;
                }
            }
        }
    }

    /// EHLO, MAIL, RCPT..., DATA, `body` (already dot-stuffed, ending in CRLF), `.`: the
    /// queue id of the accepted message.
    pub fn send_mail(&mut self, from: &str, rcpts: &[&str], body: &[u8]) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), "250 2.1.0");
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), "250 2.1.5");
        }
        self.expect("DATA", "354");
        self.send(body);
        self.send(b".\r\n");
        let r = self.expect_reply("250 2.0.0");
        match r.queue_id() {
            Some(id) => id,
            None => self.fail("no queue id in the reply after DATA"),
        }
    }

    /// The raw descriptor, for poll(2).
    pub fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }
}

/// One message as smtpd stored it: envelope, trace header, then the message as received.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The file.
    pub path: PathBuf,
    /// The whole file.
    pub raw: Vec<u8>,
    /// The `Return-Path:` value, e.g. `<a@b>`.
    pub return_path: String,
    /// The `X-Original-To:` values in order.
    pub rcpts: Vec<String>,
    /// The whole `Received:` header, CRLFs included.
    pub received: String,
    /// Everything after the `Received:` header.
    pub body: Vec<u8>,
}

fn take_line(raw: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = raw.get(at..)?;
    let pos = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..pos], at + pos + 2))
}

/// Parses a stored file; Err says what is malformed (a partial file, say).
pub fn parse_stored(path: &Path) -> Result<Stored, String> {
    let raw = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let bad = |what: &str| format!("{}: {what}", path.display());
    let (first, mut at) = take_line(&raw, 0).ok_or_else(|| bad("no first line"))?;
    let first = String::from_utf8_lossy(first);
    let return_path = first
        .strip_prefix("Return-Path: ")
        .ok_or_else(|| bad(&format!("first line is not Return-Path: {first:?}")))?
        .to_owned();
    let mut rcpts = Vec::new();
    let received_start;
    loop {
        let (line, next) = take_line(&raw, at).ok_or_else(|| bad("envelope cut short"))?;
        if let Some(r) = line.strip_prefix(b"X-Original-To: ") {
            rcpts.push(String::from_utf8_lossy(r).into_owned());
            at = next;
        } else if line.starts_with(b"Received: ") {
            received_start = at;
            at = next;
            break;
        } else {
            return Err(bad(&format!(
                "expected X-Original-To or Received, got {:?}",
                String::from_utf8_lossy(line)
            )));
        }
    }
    while raw.get(at).is_some_and(|&b| b == b'\t' || b == b' ') {
        let (_, next) = take_line(&raw, at).ok_or_else(|| bad("Received cut short"))?;
        at = next;
    }
    let received = String::from_utf8_lossy(&raw[received_start..at]).into_owned();
    let body = raw[at..].to_vec();
    Ok(Stored {
        path: path.to_path_buf(),
        raw,
        return_path,
        rcpts,
        received,
        body,
    })
}

impl Stored {
    /// Checks the trace header against the contract
    /// `Received: from HELO (unknown [IP])\r\n\tby HOST with ESMTP id ID;\r\n\tDATE\r\n`
    /// and returns the queue id.
    pub fn check_received(&self, helo: &str, ip: &str) -> Result<String, String> {
        self.check_received_with(helo, ip, "ESMTP")
    }

    /// Like [`Stored::check_received`] with the protocol named: `SMTP` after HELO
    /// (RFC 3848), `ESMTP` after EHLO.
    pub fn check_received_with(&self, helo: &str, ip: &str, proto: &str) -> Result<String, String> {
        let r = &self.received;
        let want_from =
            format!("Received: from {helo} (unknown [{ip}])\r\n\tby {HOST} with {proto} id ");
        let rest = r
            .strip_prefix(&want_from)
            .ok_or_else(|| format!("Received header {r:?} does not start {want_from:?}"))?;
        let (id, date) = rest
            .split_once(";\r\n\t")
            .ok_or_else(|| format!("Received header {r:?}: no `;CRLF TAB` after the id"))?;
        if id.is_empty() || id.contains(char::is_whitespace) {
            return Err(format!("Received header {r:?}: bad id {id:?}"));
        }
        let date = date
            .strip_suffix("\r\n")
            .ok_or_else(|| format!("Received header {r:?} does not end in CRLF"))?;
        // `Thu, 3 Dec 2026 04:07:30 +0000`: parsed (the day has one or two digits), and a
        // moment of this test run, never checked by its length.
        let at = crate::parse_rfc5322(date).map_err(|e| format!("Received header {r:?}: {e}"))?;
        if (at - crate::epoch_now()).abs() > 3600 {
            return Err(format!(
                "Received header {r:?}: date {date:?} is not the time of this test run"
            ));
        }
        Ok(id.to_owned())
    }

    /// The queue id in the `Received:` header (`id ID;`), unchecked.
    pub fn id(&self) -> Option<String> {
        let at = self.received.find(" id ")?;
        let rest = &self.received[at + 4..];
        Some(rest[..rest.find(';')?].to_owned())
    }

    /// The value of the first header `name` of the message (after the trace header).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.body);
        let prefix = format!("{}:", name.to_ascii_lowercase());
        for line in text.split("\r\n") {
            if line.is_empty() {
                return None;
            }
            if line.to_ascii_lowercase().starts_with(&prefix) {
                return Some(line[prefix.len()..].trim().to_owned());
            }
        }
        None
    }
}

/// Parses every file in `new/`, panicking (with the log) on a malformed one.
pub fn stored(s: &Smtpd) -> Vec<Stored> {
    s.new_files()
        .iter()
        .map(|p| parse_stored(p).unwrap_or_else(|e| panic!("{e}\n{}", server_log(s))))
        .collect()
}

/// Waits for readability of every descriptor (poll(2)) until `deadline`; returns, per
/// descriptor, when it first became readable (or closed), `None` if it never did.
pub fn poll_readable(fds: &[i32], deadline: Instant) -> Vec<Option<Instant>> {
    let mut seen: Vec<Option<Instant>> = vec![None; fds.len()];
    loop {
        let pending: Vec<usize> = (0..fds.len()).filter(|&i| seen[i].is_none()).collect();
        let now = Instant::now();
        if pending.is_empty() || now >= deadline {
            return seen;
        }
        let mut pfds: Vec<libc::pollfd> = pending
            .iter()
            .map(|&i| libc::pollfd {
                fd: fds[i],
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = (deadline - now).as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        let at = Instant::now();
        if n > 0 {
            for (k, p) in pfds.iter().enumerate() {
                if p.revents != 0 {
                    seen[pending[k]] = Some(at);
                }
            }
        }
    }
}

/// Percentile (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs smtpd with `args` in a fresh temp dir (its working directory) expecting it to refuse to
/// start: panics unless it exits within `limit`; returns its exit status and stderr.
pub fn refused_start(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(bin("smtpd"))
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn smtpd");
    let mut status = None;
    let end = Instant::now() + limit;
    while status.is_none() && Instant::now() < end {
        status = child.try_wait().expect("try_wait");
        std::thread::sleep(Duration::from_millis(10));
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("smtpd {args:?} still running after {limit:?}: it should have refused to start");
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`refused_start`] within 5 s, exit status 1, with exactly one line on stderr, which is
/// returned.
pub fn startup_failure(args: &[&str]) -> String {
    let (status, err) = refused_start(args, Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "smtpd {args:?}; stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "smtpd {args:?}: want one line on stderr, got {err:?}"
    );
    err
}

/// The one stored message, or a panic naming how many there are.
pub fn only_one(s: &Smtpd) -> Stored {
    let all = stored(s);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one file in new/, found {:?}\n{}",
        s.new_files(),
        server_log(s)
    );
    all.into_iter().next().expect("one")
}

/// A running Python smtplib load (`tests/py/smtp_load.py`); its output lines (`ACK i reply`,
/// `NAK ...`, `ERR ...`, `DONE`) are collected as they come. Killed when dropped.
pub struct Load {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Load {
    /// `threads` sessions to 127.0.0.1:`port` send `total` messages between them, message `i`
    /// from `load<i>@<domain>` to every one of `rcpts` (`%d` in one becomes `i`).
    pub fn start(port: &str, total: usize, threads: usize, domain: &str, rcpts: &[&str]) -> Load {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/smtp_load.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                "127.0.0.1",
                port,
                &total.to_string(),
                &threads.to_string(),
                domain,
            ])
            .args(rcpts)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 load");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(l);
            }
        });
        Load {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Messages acknowledged so far.
    pub fn acks(&self) -> usize {
        let l = self.lines.lock().expect("lock");
        l.iter().filter(|l| l.starts_with("ACK ")).count()
    }

    /// Waits for the load to end; returns its output lines.
    pub fn finish(mut self) -> Vec<String> {
        let mut done = false;
        wait_for("the python load to end", Duration::from_secs(60), || {
            done = self.child.try_wait().expect("try_wait").is_some();
            done
        });
        if let Some(r) = self.reader.take() {
            r.join().expect("reader thread");
        }
        self.lines.lock().expect("lock").clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
