//! The control socket and smtpctl (issue 14, acceptance items 3 and 5): `show stats` after 10
//! messages, `pause smtp` / `resume smtp`, the live trace (with a client filter), a trace
//! subscriber that never reads, and `smtpctl top` in a real terminal (tmux). Mail is sent with
//! Python's smtplib; the control client is smtpctl itself (or a raw Unix socket for the stuck
//! subscriber).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration_tests::smtp::{Client, REPLY_LIMIT, server_log, start};
use integration_tests::{Smtpd, bin, have, python, wait_for};

/// Sends `n` messages from `from` over one smtplib session (from source address `source`);
/// returns the queue ids.
fn send(s: &Smtpd, from: &str, n: usize, source: &str) -> Vec<String> {
    let out = python(
        r#"
import smtplib, sys
host, port, sender, n, source = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
c = smtplib.SMTP(host, port, source_address=(source, 0), timeout=60)
c.ehlo("control.test")
for i in range(n):
    c.mail(sender)
    c.rcpt("rcpt@example.com")
    code, text = c.data(("Subject: control %d\r\n\r\nbody %d\r\n" % (i, i)).encode())
    assert code == 250, (code, text)
    print(text.decode().rsplit(" ", 1)[-1])
c.quit()
"#,
        &[
            &s.addr.ip().to_string(),
            &s.addr.port().to_string(),
            from,
            &n.to_string(),
            source,
        ],
    );
    out.lines().map(str::to_owned).collect()
}

fn socket(s: &Smtpd) -> PathBuf {
    s.maildir.join(".smtpd").join("control")
}

fn smtpctl(s: &Smtpd, args: &[&str]) -> Output {
    Command::new(bin("smtpctl"))
        .arg("--maildir")
        .arg(&s.maildir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run smtpctl")
}

fn smtpctl_ok(s: &Smtpd, args: &[&str]) -> String {
    let out = smtpctl(s, args);
    assert!(
        out.status.success(),
        "smtpctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server_log(s)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stats(s: &Smtpd) -> serde_json::Value {
    let text = smtpctl_ok(s, &["--json", "show", "stats"]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("show stats --json is JSON");
    assert_eq!(v["type"], "stats", "{text}");
    v
}

/// A running `smtpctl trace` whose stdout lines arrive on a channel.
struct Trace {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Trace {
    /// Starts `smtpctl trace ARGS` and waits until it is subscribed (its first line).
    fn start(s: &Smtpd, args: &[&str]) -> Trace {
        let mut child = Command::new(bin("smtpctl"))
            .arg("--maildir")
            .arg(&s.maildir)
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn smtpctl trace");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut t = Trace {
            child,
            lines,
            seen: Vec::new(),
        };
        t.until(|l| l.starts_with("-- tracing"));
        t
    }

    /// Reads lines until one satisfies `want`; returns it.
    fn until(&mut self, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + REPLY_LIMIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "trace: no such line within {REPLY_LIMIT:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 14 item 3, first half.
#[test]
fn show_stats_after_ten_messages_says_ten_accepted() {
    let s = start(&[]);
    let before = stats(&s);
    assert_eq!(before["messages_accepted"], 0);
    assert_eq!(before["accepting"], true);
    let ids = send(&s, "stats@example.org", 10, "127.0.0.1");
    assert_eq!(ids.len(), 10);
    let after = stats(&s);
    assert_eq!(after["messages_accepted"], 10, "{after}");
    assert_eq!(after["rcpts_accepted"], 10, "{after}");
    // One more than before (the start helper's probe is one too).
    let conns = |v: &serde_json::Value| v["connections"].as_u64().unwrap_or(0);
    assert_eq!(conns(&after), conns(&before) + 1, "{after}");
    assert!(
        after["commit_batches"]
            .as_u64()
            .is_some_and(|n| (1..=10).contains(&n)),
        "{after}"
    );
    let text = smtpctl_ok(&s, &["show", "stats"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("messages accepted") && l.ends_with(" 10")),
        "{text}"
    );
    // The socket is the operator's only: mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(socket(&s))
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Issue 14 item 3, second half: paused, a new client connects (the kernel's backlog) but is
/// not greeted, while a session already open still delivers; resumed, the waiting client is
/// greeted and delivers too.
#[test]
fn pause_holds_new_connections_while_an_open_session_delivers() {
    let s = start(&["--no-fsync"]);
    let mut open = Client::greeted(s.addr);
    open.expect("EHLO open.test", "250");

    assert!(smtpctl_ok(&s, &["pause", "smtp"]).contains("paused"));
    assert_eq!(stats(&s)["accepting"], false);
    let mut waiting = Client::connect(s.addr);
    let early = waiting.try_reply_until(Instant::now() + Duration::from_secs(1));
    assert!(early.is_err(), "greeted while paused: {early:?}");

    let id = open.send_mail(
        "open@example.org",
        &["rcpt@example.com"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    assert!(!id.is_empty());
    assert_eq!(s.new_files().len(), 1);
    let sessions = smtpctl_ok(&s, &["show", "sessions"]);
    assert!(sessions.contains("-- 1 sessions"), "{sessions}");

    assert!(smtpctl_ok(&s, &["resume", "smtp"]).contains("resumed"));
    waiting.expect_reply("220 ");
    waiting.expect("EHLO waiting.test", "250");
    waiting.send_mail(
        "waiting@example.org",
        &["rcpt@example.com"],
        b"Subject: y\r\n\r\ny\r\n",
    );
    assert_eq!(s.new_files().len(), 2);
    assert_eq!(stats(&s)["accepting"], true);
    assert_eq!(stats(&s)["messages_accepted"], 2);
}

/// The trace shows every session's commands and replies, and `--client` follows one address:
/// the session from 127.0.0.2 comes first, so had the filter let it through, its line would
/// be seen before the one looked for.
#[test]
fn trace_shows_mail_from_and_follows_one_client() {
    let s = start(&["--no-fsync"]);
    let mut all = Trace::start(&s, &[]);
    let mut one = Trace::start(&s, &["--client", "127.0.0.1"]);
    send(&s, "other@example.org", 1, "127.0.0.2");
    send(&s, "mine@example.org", 1, "127.0.0.1");
    let is_mail = |who: &'static str| {
        move |l: &str| {
            l.to_ascii_lowercase()
                .contains(&format!("> mail from:<{who}@example.org>"))
        }
    };
    all.until(is_mail("other"));
    let line = all.until(is_mail("mine"));
    assert!(line.contains("[127.0.0.1]:"), "{line}");
    all.until(|l| l.contains("< 250 2.0.0 Ok: queued as "));
    one.until(is_mail("mine"));
    assert!(
        !one.seen.iter().any(|l| l.contains("127.0.0.2")),
        "filtered trace shows another client:\n{}",
        one.seen.join("\n")
    );
}

/// A control client that subscribes to the trace and never reads costs its bounded buffer
/// and nothing else: mail flows on, other control requests are answered, and once it reads
/// again it is told how many events it lost.
#[test]
fn a_stuck_trace_subscriber_does_not_stall_mail() {
    let s = start(&["--no-fsync"]);
    let mut stuck = UnixStream::connect(socket(&s)).expect("connect to the control socket");
    stuck.write_all(b"trace\n").expect("subscribe");
    // The subscription is in place once the server counts it: wait for its "ok" line.
    let mut first = String::new();
    BufReader::new(&stuck)
        .read_line(&mut first)
        .expect("ok line");
    assert!(first.contains(r#""type":"ok""#), "{first}");

    // ~1.5 MB of trace (far beyond the 256 KiB buffer plus the socket's own) while it sleeps.
    let t = Instant::now();
    let ids = send(&s, "flood@example.org", 400, "127.0.0.1");
    assert_eq!(ids.len(), 400);
    eprintln!(
        "400 messages with a stuck trace subscriber in {:?}",
        t.elapsed()
    );
    assert_eq!(stats(&s)["messages_accepted"], 400);

    // Now it reads: everything buffered, then the next session's events behind a "dropped" line.
    stuck.set_nonblocking(true).expect("nonblocking");
    let mut drained = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    wait_for("the buffered trace to drain", REPLY_LIMIT, || {
        match stuck.read(&mut buf) {
            Ok(n) => {
                drained.extend_from_slice(&buf[..n]);
                false
            }
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    });
    assert!(
        drained.len() <= 256 * 1024 + 1024 * 1024,
        "{} octets buffered",
        drained.len()
    );
    stuck.set_nonblocking(false).expect("blocking");
    stuck
        .set_read_timeout(Some(REPLY_LIMIT))
        .expect("read timeout");
    send(&s, "after@example.org", 1, "127.0.0.1");
    let mut reader = BufReader::new(&stuck);
    let mut dropped = None;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .expect("trace line after the flood");
        assert!(n > 0, "the server closed the subscriber");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        if v["type"] == "dropped" {
            dropped = v["count"].as_u64();
        }
        if v["type"] == "trace" && v["line"].as_str().is_some_and(|l| l.contains("after@")) {
            break;
        }
    }
    let dropped = dropped.expect("a dropped line before the new events");
    assert!(dropped > 0);
    eprintln!("the stuck subscriber lost {dropped} events");
}

/// Keeps a tmux server of its own and kills it when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.name, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "top"])
    }

    fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) {
        let mut last = String::new();
        let end = Instant::now() + REPLY_LIMIT;
        while Instant::now() < end {
            last = self.screen();
            if cond(&last) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("screen never showed {what}:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.name, "kill-server"])
            .output();
    }
}

/// Issue 14 item 5: `smtpctl top` in a 120x40 terminal shows the MAIL FROM line of a message
/// sent and the accepted count; `q` quits, the terminal is restored and the prompt is back.
#[test]
fn top_shows_the_transaction_and_quits_cleanly() {
    if !have("tmux") {
        return;
    }
    let s = start(&["--no-fsync"]);
    let tmux = Tmux {
        name: format!("smtpctl-top-{}", std::process::id()),
    };
    let shell =
        "env -i PATH=/usr/bin:/bin TERM=xterm-256color PS1='READY$ ' bash --norc --noprofile";
    tmux.cmd(&[
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        "-s",
        "top",
        shell,
    ]);
    tmux.wait_screen("the prompt", |t| t.contains("READY$"));
    let cmd = format!(
        "{} --maildir {} top",
        bin("smtpctl").display(),
        quote(&s.maildir)
    );
    tmux.cmd(&["send-keys", "-t", "top", &cmd, "Enter"]);
    tmux.wait_screen("the console", |t| {
        t.contains(" smtpd ") && t.contains("accepted 0") && t.contains("q quit")
    });

    send(&s, "top@example.org", 1, "127.0.0.1");
    tmux.wait_screen("the MAIL FROM line and the accepted count", |t| {
        t.to_ascii_lowercase()
            .contains("> mail from:<top@example.org>")
            && t.contains("accepted 1")
    });

    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    tmux.wait_screen("the prompt again, console gone", |t| {
        let last = t.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        last.trim_end() == "READY$" && !t.contains("q quit")
    });
    let alternate = tmux.cmd(&["display-message", "-p", "-t", "top", "#{alternate_on}"]);
    assert_eq!(alternate.trim(), "0", "the alternate screen was not left");
}

/// A path quoted for the shell.
fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// `smtpctl reload` runs what SIGHUP runs: a new `max-size` in the file is in the next
/// session's EHLO; a broken file is refused (exit 1, the error said) and the old one stays.
#[test]
fn reload_applies_a_new_file_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("smtpd.toml");
    std::fs::write(&file, "max-size = 1000\n").expect("config file");
    let path = file.to_str().expect("UTF-8 path");
    let s = start(&["--config", path]);
    let size = |s: &Smtpd| {
        let mut c = Client::greeted(s.addr);
        let r = c.expect("EHLO size.test", "250");
        c.expect("QUIT", "221");
        r.texts()
            .iter()
            .find_map(|t| t.strip_prefix("SIZE ").map(str::to_owned))
            .unwrap_or_default()
    };
    assert_eq!(size(&s), "1000");
    std::fs::write(&file, "max-size = 2000\n").expect("config file");
    assert!(smtpctl_ok(&s, &["reload"]).contains("reloaded"));
    assert_eq!(size(&s), "2000");
    std::fs::write(&file, "max-size = \"lots\"\n").expect("config file");
    let out = smtpctl(&s, &["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reload refused"), "{err}");
    assert_eq!(size(&s), "2000");
}

/// `smtpctl log level debug` raises the level at once (above the start's `info`): the session
/// transitions, logged at debug, appear for the next message and not before; a reload that
/// does not change `--log-level` keeps it.
#[test]
fn log_level_raises_and_lowers_the_log() {
    let s = start(&["--no-fsync"]);
    send(&s, "before@example.org", 1, "127.0.0.1");
    wait_for("the first message's log line", REPLY_LIMIT, || {
        full_log(&s).contains("from=<before@example.org>")
    });
    assert!(!full_log(&s).contains("idle -> mail"), "{}", full_log(&s));
    assert!(smtpctl_ok(&s, &["log", "level", "debug"]).contains("DEBUG"));
    send(&s, "after@example.org", 1, "127.0.0.1");
    wait_for("a debug line", REPLY_LIMIT, || {
        full_log(&s).contains("idle -> mail")
    });
    // A reload that does not change --log-level keeps the level set here.
    smtpctl_ok(&s, &["reload"]);
    send(&s, "reloaded@example.org", 1, "127.0.0.1");
    wait_for("a debug line after the reload", REPLY_LIMIT, || {
        full_log(&s).matches("idle -> mail").count() >= 2
    });
    smtpctl_ok(&s, &["log", "level", "warn"]);
    send(&s, "quiet@example.org", 1, "127.0.0.1");
    // The logging thread writes in order: the warning of a second level change, made after
    // the message, marks that the message's lines would be in by then; none is (info).
    smtpctl_ok(&s, &["log", "level", "warn"]);
    wait_for("the second level change", REPLY_LIMIT, || {
        full_log(&s).matches("log level set to WARN").count() == 2
    });
    assert!(
        !full_log(&s).contains("quiet@example.org"),
        "{}",
        full_log(&s)
    );
}

/// smtpd's whole log so far (`server_log` keeps only the tail).
fn full_log(s: &Smtpd) -> String {
    let path = s.maildir.parent().expect("temp dir").join("smtpd.log");
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// `show queue` prints what `smtp-relay --list` prints (one code), without either running.
#[test]
fn show_queue_is_the_relay_listing() {
    let s = start(&["--no-fsync"]);
    send(&s, "queued@example.org", 2, "127.0.0.1");
    let ours = smtpctl_ok(&s, &["show", "queue"]);
    let relay = Command::new(bin("smtp-relay"))
        .arg("--maildir")
        .arg(&s.maildir)
        .arg("--list")
        .output()
        .expect("run smtp-relay --list");
    assert!(relay.status.success());
    assert_eq!(ours, String::from_utf8_lossy(&relay.stdout));
    assert!(ours.contains("from <queued@example.org>"), "{ours}");
    assert!(
        ours.contains("-- 2 messages, 2 recipients pending"),
        "{ours}"
    );
}

/// `monitor --json` prints one object a second with the deltas: a message sent shows up as
/// `messages_accepted: 1` in one of them.
#[test]
fn monitor_shows_the_deltas() {
    let s = start(&["--no-fsync"]);
    let mut child = Command::new(bin("smtpctl"))
        .arg("--maildir")
        .arg(&s.maildir)
        .args(["--json", "monitor"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn smtpctl monitor");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The first line means monitor has its baseline; the message comes after it.
    let first = rx.recv_timeout(REPLY_LIMIT).expect("a first monitor line");
    let v: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(v["messages_accepted"], 0, "{first}");
    send(&s, "monitor@example.org", 1, "127.0.0.1");
    let end = Instant::now() + REPLY_LIMIT;
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no delta of 1 message; seen: {seen:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        if v["messages_accepted"] == 1 {
            break;
        }
        assert_eq!(v["messages_accepted"], 0, "{line}");
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A default socket path that cannot be bound (too long for a Unix socket) is a warning and
/// smtpd serves mail without one; the same path given with `--control` is an error, exit 1.
#[test]
fn an_unusable_socket_path_is_a_warning_by_default_and_an_error_when_given() {
    let dir = tempfile::tempdir().expect("temp dir");
    let maildir = dir.path().join("m".repeat(120));
    let s = Smtpd::start_in(&maildir, "127.0.0.1", &["--no-fsync"]);
    let mut c = Client::greeted(s.addr);
    c.expect("QUIT", "221");
    drop(s);
    let path = maildir.join(".smtpd").join("control");
    let mut child = Command::new(bin("smtpd"))
        .arg("--maildir")
        .arg(&maildir)
        .arg("--listen")
        .arg(format!(
            "127.0.0.1:{}",
            integration_tests::free_port("127.0.0.1")
        ))
        .arg("--control")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run smtpd");
    let mut status = None;
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("smtpd to exit", REPLY_LIMIT, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        })
    }));
    if waited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("smtpd with an unusable --control did not exit");
    }
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(err.contains("control socket"), "{err}");
}
