//! Helpers for the smtp-relay tests: a dnsmasq serving MX records on a loopback port, the
//! recording sink (`tests/py/sink.py`) on several loopback addresses, the misbehaving one
//! (`tests/py/broken_sink.py`), queueing messages in the envelope format smtpd writes, and
//! running the relay (once, or as a daemon whose log is collected).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maildir_core::{Durability, Envelope, ForwardPath, Maildir, ReversePath};

use crate::{bin, free_port, have, wait_for};

/// A dnsmasq answering for `*.test`; killed when dropped.
pub struct Dns {
    child: Child,
    /// `127.0.0.1:PORT`, for `--dns`.
    pub addr: String,
}

/// One message a sink received: (connection, address, from, recipients, data).
pub type SinkMessage = (u32, String, String, Vec<String>, Vec<u8>);

impl Dns {
    /// Starts dnsmasq with `--mx-host` and `--host-record` values, e.g.
    /// `mx(&["a.test,mx.a.test,10"])` and `hosts(&["mx.a.test,127.0.0.2"])`.
    pub fn start(mx: &[&str], hosts: &[&str]) -> Option<Dns> {
        if !have("dnsmasq") {
            return None;
        }
        let port = free_port("127.0.0.1");
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--no-daemon",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--local=/test/",
            "--user=root",
        ]);
        for m in mx {
            cmd.arg(format!("--mx-host={m}"));
        }
        for h in hosts {
            cmd.arg(format!("--host-record={h}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        let dns = Dns {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        // Ready when it answers a query (a UDP probe; dnsmasq replies NXDOMAIN or records).
        wait_for("dnsmasq to answer", Duration::from_secs(10), || {
            dns_answers(port)
        });
        Some(dns)
    }
}

fn dns_answers(port: u16) -> bool {
    let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    // Query id 0x1234, RD, one question: "probe.test" type A class IN.
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["probe", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if s.send_to(&q, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0] == 0x12 && buf[1] == 0x34)
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the sink saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    Connect {
        conn: u32,
        addr: String,
    },
    Read {
        conn: u32,
        data: Vec<u8>,
    },
    Message {
        conn: u32,
        addr: String,
        from: String,
        rcpts: Vec<String>,
        data: Vec<u8>,
    },
}

/// The recording sink (`tests/py/sink.py`) on one port of several loopback addresses.
pub struct Sink {
    child: Child,
    /// The port, for `--port`.
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sink {
    /// Starts the sink on `ips` (all on one fresh port) with extra sink.py options.
    pub fn start(ips: &[&str], extra: &[&str]) -> Sink {
        let port = free_port(ips[0]);
        Sink::start_on(ips, port, extra)
    }

    /// Starts the sink on a given port.
    pub fn start_on(ips: &[&str], port: u16, extra: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sink.log");
        let ready = dir.path().join("ready");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/sink.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .arg("--log")
            .arg(&log)
            .arg("--ready")
            .arg(&ready);
        for ip in ips {
            cmd.arg("--listen").arg(format!("{ip}:{port}"));
        }
        cmd.args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn python3 sink.py");
        wait_for("sink to listen", Duration::from_secs(10), || ready.exists());
        Sink {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Everything logged so far.
    pub fn events(&self) -> Vec<SinkEvent> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut v = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let conn = f.get(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            match f[0] {
                "connect" if f.len() == 3 => v.push(SinkEvent::Connect {
                    conn,
                    addr: f[2].into(),
                }),
                "read" if f.len() == 3 => v.push(SinkEvent::Read {
                    conn,
                    data: b64(f[2]),
                }),
                "message" if f.len() == 6 => v.push(SinkEvent::Message {
                    conn,
                    addr: f[2].into(),
                    from: f[3].into(),
                    rcpts: f[4]
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                    data: b64(f[5]),
                }),
                _ => {} // a line being written
            }
        }
        v
    }

    /// Messages received: (connection, address, from, recipients, data).
    pub fn messages(&self) -> Vec<SinkMessage> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                SinkEvent::Message {
                    conn,
                    addr,
                    from,
                    rcpts,
                    data,
                } => Some((conn, addr, from, rcpts, data)),
                _ => None,
            })
            .collect()
    }

    /// Connections accepted, with the local address they came to.
    pub fn connections(&self) -> Vec<(u32, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                SinkEvent::Connect { conn, addr } => Some((conn, addr)),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 decoding (the sink's log); invalid characters are skipped.
pub fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Queues a message into `new/` the way smtpd stores it: envelope lines, then `rest` (which
/// should start with the trace header). Returns the file name.
pub fn queue(md: &Maildir, sender: &str, rcpts: &[&str], rest: &[u8]) -> String {
    let env = Envelope::new(
        ReversePath::parse(sender).expect("sender"),
        rcpts
            .iter()
            .map(|r| ForwardPath::parse(r).expect("recipient"))
            .collect(),
    );
    let mut d = md.deliver().expect("deliver");
    use std::io::Write;
    env.write_to(&mut d).expect("write envelope");
    d.write_all(rest).expect("write message");
    let done = d.commit(Durability::NoFsync).expect("commit");
    done.path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name")
        .to_owned()
}

/// Queues [`sample`]`(id, rcpt)` from `<s@src.test>` to `<rcpt>`; returns its file name.
pub fn queue_sample(md: &Maildir, id: &str, rcpt: &str) -> String {
    queue(
        md,
        "<s@src.test>",
        &[&format!("<{rcpt}>")],
        &sample(id, rcpt),
    )
}

/// A message body in the stored format: Received, headers, a body with a dot line.
pub fn sample(id: &str, to: &str) -> Vec<u8> {
    format!(
        "Received: from client.test (localhost [127.0.0.1]) by relay.test with ESMTP id {id}; Tue, 24 Nov 2026 04:07:30 +0000\r\n\
         From: <s@src.test>\r\nTo: <{to}>\r\nSubject: test {id}\r\nMessage-ID: <{id}@src.test>\r\n\r\n\
         Hello {id}.\r\n.leading dot line\r\n..two dots\r\nlast line\r\n"
    )
    .into_bytes()
}

/// Runs `smtp-relay` with the Maildir and arguments; returns its output.
pub fn relay(maildir: &Path, args: &[&str]) -> Output {
    Command::new(bin("smtp-relay"))
        .arg("--maildir")
        .arg(maildir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run smtp-relay")
}

/// Spawns `smtp-relay` without waiting.
pub fn spawn_relay(maildir: &Path, args: &[&str]) -> Child {
    Command::new(bin("smtp-relay"))
        .arg("--maildir")
        .arg(maildir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn smtp-relay")
}

/// The stored file minus its envelope lines (DSN parameter lines included): what the relay
/// must transmit.
pub fn without_envelope(file: &[u8]) -> Vec<u8> {
    let mut pos = 0;
    for (i, line) in file.split_inclusive(|&b| b == b'\n').enumerate() {
        let l = line.to_ascii_lowercase();
        let envelope_line = l.starts_with(b"x-original-to:")
            || l.starts_with(b"x-envelope-params:")
            || l.starts_with(b"x-rcpt-params:");
        if (i == 0 && l.starts_with(b"return-path:")) || (i > 0 && envelope_line) {
            pos += line.len();
        } else {
            break;
        }
    }
    file[pos..].to_vec()
}

impl Sink {
    /// The sink's TLS events: `("tls", conn, "VERSION CIPHER")` after a handshake,
    /// `("tlsfail", conn, error)` after a failed one.
    pub fn tls_events(&self) -> Vec<(String, u32, String)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                match f.as_slice() {
                    [kind @ ("tls" | "tlsfail"), conn, rest @ ..] if !rest.is_empty() => {
                        Some((kind.to_string(), conn.parse().ok()?, rest.join(" ")))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

/// A fresh Maildir in a temporary directory (kept alive by the returned guard).
pub fn temp_maildir() -> (tempfile::TempDir, maildir_core::Maildir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let md = maildir_core::Maildir::open(dir.path().join("Maildir")).expect("maildir");
    (dir, md)
}

/// The usual smtp-relay arguments for a test run against `dns` with every MX on `port`.
pub fn run_args<'a>(dns: &'a Dns, port: &'a str) -> Vec<&'a str> {
    vec![
        "--once",
        "--dns",
        &dns.addr,
        "--port",
        port,
        "--timeout",
        "10",
        "--helo",
        "relay.test",
    ]
}

/// A misbehaving server (tests/py/broken_sink.py) in one `--mode`; killed when dropped.
pub struct BrokenSink {
    child: Child,
    /// The port (the same on every address).
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl BrokenSink {
    /// Starts the broken sink in `mode` on `ips`, all on one fresh port.
    pub fn start(ips: &[&str], mode: &str) -> BrokenSink {
        BrokenSink::start_on(ips, free_port(ips[0]), mode)
    }

    /// Starts the broken sink in `mode` on `ips` and a given port.
    pub fn start_on(ips: &[&str], port: u16, mode: &str) -> BrokenSink {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("broken.log");
        let ready = dir.path().join("ready");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/broken_sink.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--mode", mode, "--log"])
            .arg(&log)
            .arg("--ready")
            .arg(&ready);
        for ip in ips {
            cmd.arg("--listen").arg(format!("{ip}:{port}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn python3 broken_sink.py");
        wait_for("broken sink to listen", Duration::from_secs(10), || {
            ready.exists()
        });
        BrokenSink {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The log, one vector of tab-separated fields per line.
    pub fn lines(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').map(String::from).collect())
            .collect()
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.lines().iter().filter(|f| f[0] == "connect").count()
    }

    /// Every byte the relay sent, all connections together.
    pub fn received(&self) -> Vec<u8> {
        self.lines()
            .iter()
            .filter(|f| f[0] == "read" && f.len() == 3)
            .flat_map(|f| b64(&f[2]))
            .collect()
    }

    /// True once a connection has been closed (by either side) and logged.
    pub fn closed(&self) -> bool {
        self.lines().iter().any(|f| f[0] == "close")
    }
}

impl Drop for BrokenSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A relay child whose stderr is collected line by line by a thread.
pub struct Daemon {
    /// The child process.
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Spawns `smtp-relay --maildir MAILDIR ARGS...` and collects its stderr.
    pub fn start(maildir: &Path, args: &[&str]) -> Daemon {
        let mut child = spawn_relay(maildir, args);
        let err = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        Daemon { child, lines }
    }

    /// Log lines so far that contain `what`.
    pub fn count(&self, what: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Sends a signal to the relay.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the exit with a deadline.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut status = None;
        wait_for("smtp-relay to exit", limit, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts that a `smtp-relay` run exited 0; returns (stdout, stderr).
pub fn relay_ok(out: &Output) -> (String, String) {
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "smtp-relay exit {:?}\nstdout: {o}\nstderr: {e}",
        out.status
    );
    (o, e)
}

/// The relay state file of a queued message, as text (panics when there is none).
pub fn state_of(md: &Maildir, name: &str) -> String {
    let p = md.root().join(".relay").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("state {}: {e}", p.display()))
}

/// The relay state file of a queued message, or "" when there is none.
pub fn state_if_any(md: &Maildir, name: &str) -> String {
    std::fs::read_to_string(md.root().join(".relay").join(name)).unwrap_or_default()
}
