//! Issue 14, configuration file and live reload, against the real binaries: `--config FILE`
//! (TOML) and `--check-config` for smtpd and smtp-relay (test 1 of the issue: a file with
//! every option, the command line overriding it, an error with its line number, the examples
//! under `examples/` loading), and reload (test 2: SIGHUP with a new `max-size` and a new user
//! in the users file; a session opened before keeps the old SIZE, a new session sees the new
//! one, the new user receives mail; a broken file leaves the old configuration working and logs
//! one error; smtp-relay `--interval` reloads between passes). SMTP clients are Python's
//! `smtplib` and the raw-socket client of `tests/src/smtp.rs`; the relay sends to the
//! recording sink (`tests/py/sink.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::relay::{Daemon, Sink, queue_sample, temp_maildir};
use integration_tests::smtp::{self, Client, server_log};
use integration_tests::{bin, free_port, list, python, wait_for};

const LIMIT: Duration = Duration::from_secs(20);

/// An smtpd started here with its settings all from a file (the helpers give --listen and
/// --maildir on the command line); killed when dropped.
struct Server {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a binary of ours with `args`; (exit code, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// The EHLO SIZE a new smtplib session sees, and the greeting's host name.
fn smtplib_size(addr: std::net::SocketAddr) -> String {
    python(
        r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="client.test", timeout=30)
s.ehlo()
print(s.esmtp_features.get("size", "none"))
s.quit()
"#,
        &[&addr.ip().to_string(), &addr.port().to_string()],
    )
    .trim()
    .to_owned()
}

/// Sends one message with smtplib; returns the RCPT reply code (and 250 means it was sent).
fn smtplib_send(addr: std::net::SocketAddr, rcpt: &str) -> String {
    python(
        r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="client.test", timeout=30)
s.ehlo()
s.mail("sender@client.test")
code, _ = s.rcpt(sys.argv[3])
if code == 250:
    s.data(b"Subject: reload\r\n\r\nhello\r\n")
print(code)
s.quit()
"#,
        &[&addr.ip().to_string(), &addr.port().to_string(), rcpt],
    )
    .trim()
    .to_owned()
}

/// Issue 14 test 1: a file setting every option of smtpd; `--check-config` says where each
/// came from; the server runs with it, the command line overriding the file.
#[test]
fn smtpd_takes_every_option_from_the_file_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let (cert, key) =
        integration_tests::certs::self_signed(d, "mx", "mx.config.test", "prime256v1");
    std::fs::write(d.join("users"), "alice:*::::\n").expect("users");
    std::fs::write(d.join("aliases"), "postmaster: alice\n").expect("aliases");
    let port = free_port("127.0.0.1");
    let tls_port = free_port("127.0.0.1");
    let file = d.join("smtpd.toml");
    let text = format!(
        r#"# every option of smtpd
maildir = "{queue}"
listen = ["127.0.0.1:{port}"]
hostname = "mx.config.test"
trust = ["127.0.0.0/8", "::1"]
max-size = 100000
max-recipients = 7
max-connections = 100
max-per-ip = 10
timeout = 60
shutdown-timeout = 5
max-hops = 30
postmaster = "alice@example.test"
no-fsync = false
local-domain = ["example.test"]
mailboxes = "{mailboxes}"
users = "{users}"
aliases = "{aliases}"
recipient-delimiter = "-"
mailbox-quota = 1000000

[tls]
cert = "{cert}"
key = "{key}"
listen = ["127.0.0.1:{tls_port}"]
"#,
        queue = s(&d.join("queue")),
        mailboxes = s(&d.join("mailboxes")),
        users = s(&d.join("users")),
        aliases = s(&d.join("aliases")),
        cert = s(&cert),
        key = s(&key),
    );
    std::fs::write(&file, &text).expect("write config");
    let (code, out, err) = run("smtpd", &["--config", s(&file), "--check-config"]);
    assert_eq!(code, Some(0), "{err}");
    // Every key of the file, each said to come from it (`no-fsync = false` too).
    let settings: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(settings.len(), 22, "{out}");
    assert!(
        settings.iter().all(|l| l.contains("  # file, line ")),
        "{out}"
    );
    assert!(out.contains("tls-listen = [\"127.0.0.1:"), "{out}");
    assert!(
        out.contains("recipient-delimiter = \"-\"  # file, line 19\n"),
        "{out}"
    );
    assert!(out.contains("max-size = 100000  # file, line 6\n"), "{out}");
    // The command line overrides the file; the check says so.
    let (code, out, _) = run(
        "smtpd",
        &["--config", s(&file), "--max-size", "3000", "--check-config"],
    );
    assert_eq!(code, Some(0));
    assert!(out.contains("max-size = 3000  # command line\n"), "{out}");

    let child = Command::new(bin("smtpd"))
        .args(["--config", s(&file), "--max-size", "3000"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(d.join("smtpd.log")).expect("log"))
        .spawn()
        .expect("spawn smtpd");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let server = Server {
        child,
        addr,
        log: d.join("smtpd.log"),
    };
    wait_for("smtpd to listen", LIMIT, || {
        std::net::TcpStream::connect(addr).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    let out = python(
        r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=30)
code, banner = s.ehlo()
print(banner.decode().split()[0])
print(s.esmtp_features.get("size"), s.has_extn("starttls"))
s.mail("sender@client.test")
print(s.rcpt("alice-news@example.test")[0])
s.data(b"Subject: from the file\r\n\r\nhello\r\n")
s.quit()
"#,
        &[&port.to_string()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["mx.config.test", "3000 True", "250"], "{out}");
    assert_eq!(
        list(&d.join("mailboxes/alice/new")).len(),
        1,
        "{}",
        server.log()
    );
}

/// Issue 14 test 1: errors in the file name the file, the line and the key; exit status 1.
#[test]
fn errors_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.toml");
    let cases: &[(&str, &str, &str)] = &[
        (
            "smtpd",
            "maildir = \"q\"\n# limits\nmax-size = \"big\"\n",
            ":3: key 'max-size': invalid value 'big'",
        ),
        (
            "smtpd",
            "maildir = \"q\"\n\n\n\nmax-sise = 10\n",
            ":5: key 'max-sise': unknown key",
        ),
        (
            "smtpd",
            "maildir = \"q\"\nlocal-domain = [1, 2]\n[tls]\ncert = 5\nkey = true\nlisten = \"x\"\n",
            ":6: key 'tls-listen': invalid value 'x'",
        ),
        (
            "smtpd",
            "maildir = \"q\"\nno-fsync = \"yes\"\n",
            ":2: key 'no-fsync': expected true or false",
        ),
        (
            "smtpd",
            "maildir = \"q\"\ntimeout = 0\n",
            ":2: key 'timeout': invalid value '0'",
        ),
        (
            "smtpd",
            "maildir = \"q\"\nmax-size = 1\nmax-size = 2\n",
            ":3: ",
        ),
        (
            "smtp-relay",
            "maildir = \"q\"\n\ntls = \"sometimes\"\n",
            ":3: key 'tls': invalid value 'sometimes'",
        ),
        (
            "smtp-relay",
            "maildir = \"q\"\nport = 70000\n",
            ":2: key 'port': invalid value '70000'",
        ),
    ];
    for (program, text, want) in cases {
        std::fs::write(&file, text).expect("write");
        for check in [false, true] {
            let mut args = vec!["--config", s(&file)];
            if check {
                args.push("--check-config");
            }
            let (code, out, err) = run(program, &args);
            assert_eq!(code, Some(1), "{program} {text:?}: {err}");
            let want = format!("{program}: {}{want}", file.display());
            assert!(
                err.starts_with(&want),
                "{err:?}\ndoes not start with\n{want:?}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(out.is_empty());
        }
    }
    // A file naming a users file that is not there: the check reads it.
    std::fs::write(
        &file,
        "maildir = \"q\"\nlocal-domain = [\"example.test\"]\nmailboxes = \"m\"\nusers = \"/nonexistent/users\"\n",
    )
    .expect("write");
    let (code, _, err) = run("smtpd", &["--config", s(&file), "--check-config"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/users: cannot read"), "{err}");
}

/// smtp-relay's `transport` key: a list of `DOMAIN=HOST[:PORT]`, printed back by
/// `--check-config`; a bad entry is one error line and exit 1, like a bad smarthost.
#[test]
fn relay_transport_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "maildir = \"q\"\ntransport = [\"example.org=127.0.0.1:25\", \"v6.test=[::1]:2525\"]\n",
    )
    .expect("write");
    let (code, out, err) = run("smtp-relay", &["--config", s(&file), "--check-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("transport = [\"example.org=127.0.0.1:25\", \"v6.test=[::1]:2525\"]"),
        "{out}"
    );
    for bad in [
        "=",
        "example.org",
        "=127.0.0.1:25",
        "example.org=127.0.0.1:0",
        "example.org=[::1]",
        "example.org=two words",
    ] {
        std::fs::write(&file, format!("maildir = \"q\"\ntransport = [\"{bad}\"]\n"))
            .expect("write");
        for check in [false, true] {
            let mut args = vec!["--config", s(&file)];
            if check {
                args.push("--check-config");
            }
            let (code, out, err) = run("smtp-relay", &args);
            assert_eq!(code, Some(1), "{bad}: {err}");
            assert!(err.starts_with("smtp-relay: --transport "), "{bad}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(out.is_empty(), "{out}");
        }
    }
}

/// Keys of an example file, commented or not, tables joined with '-'.
fn example_keys(text: &str) -> Vec<String> {
    let mut table = String::new();
    let mut keys = Vec::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(t) = l.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            table = format!("{t}-");
            continue;
        }
        if let Some((k, _)) = l.split_once(" = ")
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            keys.push(format!("{table}{k}"));
        }
    }
    keys
}

/// Issue 14 test 1: both examples load through `--check-config`, and each names every option
/// (commented defaults), so they cannot go stale when an option is added.
#[test]
fn the_examples_load_and_name_every_option() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (program, name) in [("smtpd", "smtpd.toml"), ("smtp-relay", "smtp-relay.toml")] {
        let path: PathBuf = examples.join(name);
        let text = std::fs::read_to_string(&path).expect("read the example");
        let (code, out, err) = run(program, &["--config", s(&path), "--check-config"]);
        assert_eq!(code, Some(0), "{program} {name}: {err}");
        assert!(out.contains("maildir = "), "{out}");
        let (code, all, err) = run(program, &["--config", s(&path), "--check-config=all"]);
        assert_eq!(code, Some(0), "{err}");
        let options: Vec<&str> = all
            .lines()
            .skip(1)
            .map(|l| {
                l.strip_prefix("# ")
                    .and_then(|l| l.strip_suffix(" is not set"))
                    .or_else(|| l.split_once(" = ").map(|(k, _)| k))
                    .unwrap_or(l)
            })
            .collect();
        assert!(options.len() >= 15, "{all}");
        let keys = example_keys(&text);
        for o in &options {
            assert!(
                keys.iter().any(|k| k == o),
                "{name} does not name option {o}"
            );
        }
        for k in &keys {
            assert!(
                options.contains(&k.as_str()),
                "{name} names {k}, which is no option"
            );
        }
    }
}

/// Issue 14 test 2: SIGHUP with a new max-size and a new user; sessions opened before keep the
/// old settings; a broken file leaves the old configuration working and logs one error line.
#[test]
fn sighup_reloads_for_new_sessions_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let users = d.join("users");
    std::fs::write(&users, "alice:*::::\n").expect("users");
    std::fs::write(d.join("aliases"), "postmaster: alice\n").expect("aliases");
    let file = d.join("smtpd.toml");
    let config = |max: &str| {
        format!(
            "local-domain = [\"example.test\"]\nmailboxes = \"{}\"\nusers = \"{}\"\naliases = \"{}\"\nmax-size = {max}\n",
            s(&d.join("mailboxes")),
            s(&users),
            s(&d.join("aliases")),
        )
    };
    std::fs::write(&file, config("10000")).expect("config");
    let server = smtp::start(&["--config", s(&file)]);
    let log = || server_log(&server);
    let count = |what: &str| {
        let path = server.maildir.parent().expect("dir").join("smtpd.log");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    // A session opened before the reload.
    let mut before = Client::greeted(server.addr);
    let ehlo = before.expect("EHLO before.test", "250");
    assert!(ehlo.texts().contains(&"SIZE 10000"), "{ehlo:?}");
    assert_eq!(smtplib_size(server.addr), "10000");
    assert_eq!(smtplib_send(server.addr, "bob@example.test"), "550");

    std::fs::write(&users, "alice:*::::\nbob:*::::\n").expect("users");
    std::fs::write(&file, config("20000")).expect("config");
    server.signal(libc::SIGHUP);
    wait_for("the reload", LIMIT, || count("configuration reloaded") == 1);
    assert_eq!(smtplib_size(server.addr), "20000", "{}", log());
    assert_eq!(
        smtplib_send(server.addr, "bob@example.test"),
        "250",
        "{}",
        log()
    );
    let bob = d.join("mailboxes/bob/new");
    assert_eq!(list(&bob).len(), 1, "{}", log());
    // The old session keeps its settings, through a new EHLO too.
    let ehlo = before.expect("EHLO before.test", "250");
    assert!(ehlo.texts().contains(&"SIZE 10000"), "{ehlo:?}");
    before.expect("MAIL FROM:<a@client.test> SIZE=15000", "552");
    before.expect("QUIT", "221");

    // A broken file: one error line, the configuration in force stays.
    let errors = count("ERROR");
    std::fs::write(&file, config("\"big\"")).expect("config");
    server.signal(libc::SIGHUP);
    wait_for("the refusal", LIMIT, || count("reload refused") == 1);
    assert_eq!(count("ERROR"), errors + 1, "{}", log());
    let want = format!("{}:5: key 'max-size': invalid value 'big'", file.display());
    assert!(log().contains(&want), "{}", log());
    assert_eq!(smtplib_size(server.addr), "20000");
    assert_eq!(smtplib_send(server.addr, "bob@example.test"), "250");
    assert_eq!(list(&bob).len(), 2);
    // A users file that became broken is refused the same way.
    std::fs::write(&file, config("30000")).expect("config");
    std::fs::write(&users, "alice:*::::\nBob:*::::\n").expect("users");
    server.signal(libc::SIGHUP);
    wait_for("the second refusal", LIMIT, || count("reload refused") == 2);
    assert_eq!(count("ERROR"), errors + 2, "{}", log());
    assert_eq!(smtplib_size(server.addr), "20000");
    assert_eq!(count("configuration reloaded"), 1);

    // The log level: with `log-level = "warn"`, sessions are no longer logged (info).
    std::fs::write(&users, "alice:*::::\nbob:*::::\n").expect("users");
    std::fs::write(&file, format!("{}log-level = \"warn\"\n", config("30000"))).expect("config");
    server.signal(libc::SIGHUP);
    wait_for("the reload", LIMIT, || count("configuration reloaded") == 2);
    let sessions = count("disconnect from");
    assert!(sessions >= 6, "{}", log());
    assert_eq!(smtplib_size(server.addr), "30000");
    // A line at error level after the session's close, which would have been logged first.
    std::fs::write(&file, config("\"big\"")).expect("config");
    server.signal(libc::SIGHUP);
    wait_for("the third refusal", LIMIT, || count("reload refused") == 3);
    assert_eq!(count("disconnect from"), sessions, "{}", log());
}

/// A reload that changes the listeners says a restart is needed, and applies the rest.
#[test]
fn a_listener_change_is_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("smtpd.toml");
    std::fs::write(&file, "max-size = 5000\n").expect("config");
    let server = smtp::start(&["--config", s(&file)]);
    let other = free_port("127.0.0.1");
    std::fs::write(
        &file,
        format!("max-size = 6000\nlisten = [\"127.0.0.1:{other}\"]\n"),
    )
    .expect("config");
    // The command line's --listen overrides the file: no change.
    server.signal(libc::SIGHUP);
    let log = || server_log(&server);
    wait_for("the reload", LIMIT, || {
        log().contains("configuration reloaded")
    });
    assert!(!log().contains("listeners"), "{}", log());
    assert_eq!(smtplib_size(server.addr), "6000");
    // A server whose listeners come from the file.
    let port = free_port("127.0.0.1");
    let q = dir.path().join("q");
    std::fs::write(
        &file,
        format!("maildir = \"{}\"\nlisten = [\"127.0.0.1:{port}\"]\n", s(&q)),
    )
    .expect("config");
    let child = Command::new(bin("smtpd"))
        .args(["--config", s(&file)])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("smtpd.log")).expect("log"))
        .spawn()
        .expect("spawn");
    let s2 = Server {
        child,
        addr: format!("127.0.0.1:{port}").parse().expect("addr"),
        log: dir.path().join("smtpd.log"),
    };
    wait_for("smtpd to listen", LIMIT, || {
        std::net::TcpStream::connect(s2.addr).is_ok()
    });
    std::fs::write(
        &file,
        format!(
            "maildir = \"{}\"\nlisten = [\"127.0.0.1:{other}\"]\nmax-size = 7000\n",
            s(&q)
        ),
    )
    .expect("config");
    s2.signal(libc::SIGHUP);
    let log2 = || s2.log();
    wait_for("the reload", LIMIT, || {
        log2().contains("configuration reloaded")
    });
    assert!(
        log2().contains("listeners (--listen, --tls-listen, --submission-listen, --pop3-listen, --pop3s-listen) changed"),
        "{}",
        log2()
    );
    assert_eq!(smtplib_size(s2.addr), "7000");
}

/// Issue 14: smtp-relay `--interval` reloads its configuration on SIGHUP between passes: mail
/// queued after the reload goes to the new smarthost; a broken file keeps the old one.
#[test]
fn relay_reloads_between_passes() {
    let first = Sink::start(&["127.0.0.1"], &[]);
    let second = Sink::start(&["127.0.0.1"], &[]);
    let (dir, md) = temp_maildir();
    let file = dir.path().join("relay.toml");
    let config = |port: u16| {
        format!(
            "interval = 1\nsmarthost = \"127.0.0.1:{port}\"\nhelo = \"relay.config.test\"\ntimeout = 20\n"
        )
    };
    std::fs::write(&file, config(first.port)).expect("config");
    let relay = Daemon::start(md.root(), &["--config", s(&file)]);
    queue_sample(&md, "one", "a@far.test");
    wait_for("the first message at the first sink", LIMIT, || {
        first.messages().len() == 1
    });
    std::fs::write(&file, config(second.port)).expect("config");
    relay.signal(libc::SIGHUP);
    wait_for("the reload", LIMIT, || {
        relay.count("configuration reloaded") == 1
    });
    queue_sample(&md, "two", "b@far.test");
    wait_for("the second message at the second sink", LIMIT, || {
        second.messages().len() == 1
    });
    assert_eq!(first.messages().len(), 1, "{}", relay.log());
    // A broken file: one error line, the old configuration stays.
    std::fs::write(
        &file,
        format!("{}tls = \"sometimes\"\n", config(first.port)),
    )
    .expect("config");
    relay.signal(libc::SIGHUP);
    wait_for("the refusal", LIMIT, || relay.count("reload refused") == 1);
    assert_eq!(relay.count("ERROR"), 1, "{}", relay.log());
    queue_sample(&md, "three", "c@far.test");
    wait_for("the third message at the second sink", LIMIT, || {
        second.messages().len() == 2
    });
    assert_eq!(first.messages().len(), 1, "{}", relay.log());
}

/// The certificate's SHA-256 fingerprint as a new STARTTLS session sees it (Python's `ssl`),
/// or "no starttls".
fn starttls_fingerprint(addr: std::net::SocketAddr) -> String {
    python(
        r#"
import hashlib, smtplib, ssl, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="client.test", timeout=30)
s.ehlo()
if not s.has_extn("starttls"):
    print("no starttls")
else:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    print(hashlib.sha256(s.sock.getpeercert(binary_form=True)).hexdigest())
s.quit()
"#,
        &[&addr.ip().to_string(), &addr.port().to_string()],
    )
    .trim()
    .to_owned()
}

/// The SHA-256 fingerprint of a PEM certificate (Python's `ssl`).
fn pem_fingerprint(cert: &Path) -> String {
    python(
        r#"
import hashlib, ssl, sys
der = ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())
print(hashlib.sha256(der).hexdigest())
"#,
        &[s(cert)],
    )
    .trim()
    .to_owned()
}

/// A reload turns STARTTLS on (the server started without a certificate), then replaces the
/// certificate; it replaces the trusted networks too.
#[test]
fn sighup_reloads_certificates_and_trusted_networks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let (a_crt, a_key) =
        integration_tests::certs::self_signed(d, "a", "a.config.test", "prime256v1");
    let (b_crt, b_key) =
        integration_tests::certs::self_signed(d, "b", "b.config.test", "prime256v1");
    let file = d.join("smtpd.toml");
    std::fs::write(&file, "max-size = 5000\n").expect("config");
    let server = smtp::start(&["--config", s(&file)]);
    let count = |what: &str| server_log(&server).matches(what).count();
    assert_eq!(starttls_fingerprint(server.addr), "no starttls");
    // Loopback relays by default.
    let relayed = || smtplib_send(server.addr, "someone@far.test");
    assert_eq!(relayed(), "250");

    let tls = |crt: &Path, key: &Path, trust: &str| {
        format!(
            "max-size = 5000\ntrust = [\"{trust}\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            s(crt),
            s(key)
        )
    };
    std::fs::write(&file, tls(&a_crt, &a_key, "127.0.0.0/8")).expect("config");
    server.signal(libc::SIGHUP);
    wait_for("the reload", LIMIT, || count("configuration reloaded") == 1);
    assert_eq!(starttls_fingerprint(server.addr), pem_fingerprint(&a_crt));

    std::fs::write(&file, tls(&b_crt, &b_key, "10.0.0.0/8")).expect("config");
    server.signal(libc::SIGHUP);
    wait_for("the reload", LIMIT, || count("configuration reloaded") == 2);
    assert_eq!(starttls_fingerprint(server.addr), pem_fingerprint(&b_crt));
    assert_eq!(relayed(), "554", "loopback is no longer trusted");

    // A key that does not fit the certificate: refused, the certificate in force stays.
    std::fs::write(&file, tls(&a_crt, &b_key, "127.0.0.0/8")).expect("config");
    server.signal(libc::SIGHUP);
    wait_for("the refusal", LIMIT, || count("reload refused") == 1);
    assert_eq!(starttls_fingerprint(server.addr), pem_fingerprint(&b_crt));
    assert_eq!(relayed(), "554");
}
