//! smtpd's TLS side against real peers (issue 7, acceptance for smtpd): Python `smtplib`
//! `starttls()` and `SMTP_SSL`, swaks `--tls`, `openssl s_client -starttls smtp`, plaintext
//! pipelined after STARTTLS (never executed), failed handshakes (that connection only) and
//! certificate/key errors at start.
//!
//! Certificates are made at test time with the `openssl` CLI in the test's temp dir; no key
//! is ever committed.

use integration_tests::certs::self_signed;
use integration_tests::smtp::{self, Client, HOST, Stored, only_one, server_log, start};
use integration_tests::{Smtpd, have, python, wait_for};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The certificate's name (CN and subjectAltName).
const CERT_NAME: &str = "mx.test";

/// A fresh self-signed P-256 certificate for [`CERT_NAME`] and its key, in `dir`: (cert, key).
fn make_cert(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    self_signed(dir, stem, CERT_NAME, "prime256v1")
}

/// A temp dir holding a fresh certificate and key.
struct Certs {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = make_cert(dir.path(), "server");
        Certs { dir, cert, key }
    }

    fn cert(&self) -> &str {
        self.cert.to_str().expect("utf-8 path")
    }

    fn key(&self) -> &str {
        self.key.to_str().expect("utf-8 path")
    }

    /// `--tls-cert C --tls-key K` plus `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--tls-cert", self.cert(), "--tls-key", self.key()];
        v.extend_from_slice(extra);
        v
    }
}

fn tools(cmds: &[&str]) -> bool {
    cmds.iter().all(|c| have(c))
}

/// The trace header of a message received over TLS: the `using` line names the version and
/// cipher, and the protocol ends in `S` (RFC 3848).
fn check_tls_received(st: &Stored, helo: &str) -> (String, String) {
    let r = &st.received;
    let head = format!("Received: from {helo} (unknown [127.0.0.1])\r\n\t(using ");
    let rest = r
        .strip_prefix(&head)
        .unwrap_or_else(|| panic!("Received {r:?} does not start {head:?}"));
    let (using, rest) = rest
        .split_once(")\r\n")
        .unwrap_or_else(|| panic!("Received {r:?}: no `using` line"));
    let (version, cipher) = using
        .split_once(" with cipher ")
        .unwrap_or_else(|| panic!("Received {r:?}: `using` line {using:?}"));
    assert!(
        version.starts_with("TLSv1."),
        "Received {r:?}: version {version:?}"
    );
    let by = format!("\tby {HOST} with ESMTPS id ");
    assert!(rest.starts_with(&by), "Received {r:?}: want {by:?}");
    (version.to_owned(), cipher.to_owned())
}

/// Python names TLS 1.3 suites `TLS_AES_256_GCM_SHA384`, rustls `TLS13_AES_256_GCM_SHA384`.
fn same_cipher(rustls: &str, python: &str) -> bool {
    rustls.replace("TLS13_", "TLS_") == python
}

fn fields(out: &str, k: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix(&format!("{k} ")).map(str::to_owned))
        .collect()
}

fn field(out: &str, k: &str) -> String {
    fields(out, k).concat()
}

// ---- smtplib starttls() and SMTP_SSL, read back with Python mailbox -----------------------

const PY_TLS_SEND: &str = r#"
import mailbox, smtplib, ssl, sys
mode, host, port, cafile, mdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False  # connected by address; the chain is still verified
if mode == "implicit":
    s = smtplib.SMTP_SSL(host, port, local_hostname="python.test", timeout=20, context=ctx)
    s.ehlo()
else:
    s = smtplib.SMTP(host, port, local_hostname="python.test", timeout=20)
    s.ehlo()
    print("before", "starttls" in s.esmtp_features)
    code, resp = s.starttls(context=ctx)
    print("starttls", code, resp.decode())
    s.ehlo()
print("after", "starttls" in s.esmtp_features)
print("version", s.sock.version())
print("cipher", s.sock.cipher()[0])
print("peer_cn", dict(x[0] for x in s.sock.getpeercert()["subject"])["commonName"])
s.mail("sender@example.org")
code, resp = s.rcpt("rcpt@example.com")
assert code == 250, (code, resp)
code, resp = s.data(b"From: sender@example.org\r\nSubject: over tls\r\n\r\nsecret body\r\n")
print("data", code, resp.decode())
if mode != "implicit":
    code, resp = s.docmd("STARTTLS")
    print("again", code, resp.decode())
s.quit()
md = mailbox.Maildir(mdir, factory=None, create=False)
m = md[md.keys()[0]]
print("count", len(md.keys()))
print("received", m["Received"].replace("\r", "").replace("\n", " ").replace("\t", " "))
print("subject", m["Subject"])
print("payload", m.get_payload().strip())
"#;

fn smtplib_delivers(mode: &str) {
    if !tools(&["python3", "openssl"]) {
        return;
    }
    let certs = Certs::new();
    let tls_port = integration_tests::free_port("127.0.0.1").to_string();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let s = start(&certs.args(&["--tls-listen", &tls_addr]));
    let port = if mode == "implicit" {
        tls_port
    } else {
        s.addr.port().to_string()
    };
    let out = python(
        PY_TLS_SEND,
        &[
            mode,
            "127.0.0.1",
            &port,
            certs.cert(),
            s.maildir.to_str().expect("utf-8"),
        ],
    );
    if mode == "starttls" {
        assert_eq!(field(&out, "before"), "True", "STARTTLS not offered\n{out}");
        assert_eq!(field(&out, "starttls"), "220 2.0.0 Ready to start TLS");
        assert_eq!(
            field(&out, "again"),
            "554 5.5.1 Error: TLS already active",
            "{out}"
        );
    }
    assert_eq!(
        field(&out, "after"),
        "False",
        "STARTTLS still offered over TLS\n{out}"
    );
    assert_eq!(field(&out, "peer_cn"), CERT_NAME, "{out}");
    assert!(field(&out, "data").starts_with("250 2.0.0"), "{out}");
    assert_eq!(field(&out, "count"), "1", "{out}");
    assert_eq!(field(&out, "subject"), "over tls", "{out}");
    assert_eq!(field(&out, "payload"), "secret body", "{out}");
    let received = field(&out, "received");
    assert!(
        received.contains("(using TLSv1.") && received.contains("with ESMTPS id"),
        "Python mailbox reads Received {received:?}"
    );
    // The trace header names what the client negotiated.
    let st = only_one(&s);
    let (version, cipher) = check_tls_received(&st, "python.test");
    assert_eq!(version, field(&out, "version"), "{out}");
    assert!(
        same_cipher(&cipher, &field(&out, "cipher")),
        "Received cipher {cipher:?}, client negotiated {:?}",
        field(&out, "cipher")
    );
}

#[test]
fn smtplib_starttls_delivers_and_received_records_tls() {
    smtplib_delivers("starttls");
}

#[test]
fn smtplib_smtp_ssl_delivers_on_implicit_tls_listener() {
    smtplib_delivers("implicit");
}

// ---- swaks and openssl s_client -----------------------------------------------------------

#[test]
fn swaks_tls_delivers() {
    if !tools(&["swaks", "openssl"]) {
        return;
    }
    let certs = Certs::new();
    let s = start(&certs.args(&[]));
    let out = Command::new("swaks")
        .args(["--server", &s.addr.to_string()])
        .args(["--from", "sender@example.org", "--to", "rcpt@example.com"])
        .args(["--helo", "swaks.test", "--tls", "--tls-verify"])
        .arg("--tls-ca-path")
        .arg(&certs.cert)
        .args(["--timeout", "20"])
        .stdin(Stdio::null())
        .output()
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("<-  220 2.0.0 Ready to start TLS"), "{text}");
    assert!(text.contains("=== TLS started with cipher"), "{text}");
    assert!(text.contains("<~  250 2.0.0"), "no 250 over TLS: {text}");
    let st = only_one(&s);
    check_tls_received(&st, "swaks.test");
    assert_eq!(st.rcpts, ["<rcpt@example.com>"]);
}

#[test]
fn openssl_s_client_starttls_shows_the_certificate() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::new();
    let s = start(&certs.args(&[]));
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &s.addr.to_string(),
        ])
        .args(["-servername", CERT_NAME, "-verify_hostname", CERT_NAME])
        .arg("-CAfile")
        .arg(&certs.cert)
        .arg("-verify_return_error")
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "s_client failed: {text}\n{err}");
    assert!(
        text.contains(&format!("subject=CN = {CERT_NAME}")),
        "no certificate subject in s_client output: {text}\n{err}"
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("New, TLSv1.3"), "{text}");
}

// ---- plaintext pipelined after STARTTLS is never executed ---------------------------------

const PY_INJECT: &str = r#"
import socket, ssl, sys
port, cafile, inject = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode().decode("unicode_escape").encode()
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
buf = b""
def reply(sock):
    # One whole reply; never reads past its last CRLF (the TLS bytes follow it).
    global buf
    lines = []
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(1)
            if not chunk:
                raise SystemExit("closed; got %r" % (lines,))
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        lines.append(line.decode())
        if line[3:4] != b"-":
            return lines
def cmd(sock, line):
    sock.sendall(line.encode() + b"\r\n")
    return reply(sock)
print("greeting", reply(sock)[-1])
print("ehlo1", "STARTTLS" in [l[4:] for l in cmd(sock, "EHLO inject.test")])
sock.sendall(inject)
print("starttls", reply(sock)[-1])
# Nothing more in plaintext: the server waits for our ClientHello.
sock.settimeout(0.5)
try:
    extra = sock.recv(4096)
    print("plain_extra", repr(extra))
except socket.timeout:
    print("plain_extra", "none")
sock.settimeout(10)
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False
tls = ctx.wrap_socket(sock, server_hostname="mx.test")
print("tls", tls.version())
# The first reply over TLS answers our first command: no reply to an injected one is queued.
print("noop", cmd(tls, "NOOP")[-1])
print("mail_before_ehlo", cmd(tls, "MAIL FROM:<a@example.org>")[-1])
ehlo = [l[4:] for l in cmd(tls, "EHLO inject.test")]
print("ehlo2_starttls", "STARTTLS" in ehlo)
print("mail", cmd(tls, "MAIL FROM:<a@example.org>")[-1])
print("rcpt", cmd(tls, "RCPT TO:<b@example.com>")[-1])
print("starttls_in_txn", cmd(tls, "STARTTLS")[-1])
print("data", cmd(tls, "DATA")[-1])
tls.sendall(b"Subject: after injection\r\n\r\nbody\r\n.\r\n")
print("dot", reply(tls)[-1])
print("quit", cmd(tls, "QUIT")[-1])
"#;

fn injection(inject: &str) -> (Smtpd, String) {
    let certs = Certs::new();
    let s = start(&certs.args(&[]));
    let out = python(
        PY_INJECT,
        &[&s.addr.port().to_string(), certs.cert(), inject],
    );
    (s, out)
}

fn check_injection(s: &Smtpd, out: &str) {
    assert_eq!(field(out, "ehlo1"), "True", "{out}");
    assert_eq!(
        field(out, "starttls"),
        "220 2.0.0 Ready to start TLS",
        "{out}"
    );
    assert_eq!(field(out, "plain_extra"), "none", "{out}");
    assert!(field(out, "tls").starts_with("TLSv1."), "{out}");
    assert_eq!(field(out, "noop"), "250 2.0.0 Ok", "{out}");
    assert_eq!(
        field(out, "mail_before_ehlo"),
        "503 5.5.1 Error: send HELO/EHLO first",
        "the injected command was executed?\n{out}"
    );
    assert_eq!(field(out, "ehlo2_starttls"), "False", "{out}");
    assert!(field(out, "mail").starts_with("250 2.1.0"), "{out}");
    assert!(field(out, "rcpt").starts_with("250 2.1.5"), "{out}");
    assert_eq!(
        field(out, "starttls_in_txn"),
        "554 5.5.1 Error: TLS already active",
        "{out}"
    );
    assert!(field(out, "data").starts_with("354"), "{out}");
    assert!(field(out, "dot").starts_with("250 2.0.0"), "{out}");
    let st = only_one(s);
    check_tls_received(&st, "inject.test");
    assert_eq!(st.return_path, "<a@example.org>", "{out}");
    assert_eq!(st.rcpts, ["<b@example.com>"], "{out}");
}

#[test]
fn mail_pipelined_after_starttls_in_one_write_is_ignored() {
    if !tools(&["python3", "openssl"]) {
        return;
    }
    let (s, out) = injection(r"STARTTLS\r\nMAIL FROM:<x@y>\r\n");
    check_injection(&s, &out);
}

#[test]
fn ehlo_mail_rcpt_pipelined_after_starttls_are_ignored() {
    if !tools(&["python3", "openssl"]) {
        return;
    }
    // Had the injected EHLO run after the handshake, MAIL before our EHLO would get 250.
    let (s, out) = injection(
        r"STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\n",
    );
    check_injection(&s, &out);
}

// ---- STARTTLS refused where it does not apply ----------------------------------------------

#[test]
fn starttls_refused_without_certificate_and_inside_a_transaction() {
    if !have("openssl") {
        return;
    }
    let plain = start(&[]);
    let mut c = Client::greeted(plain.addr);
    let ehlo = c.expect("EHLO c.test", "250 ");
    assert!(
        !ehlo.texts().contains(&"STARTTLS"),
        "STARTTLS offered without a certificate: {:?}",
        ehlo.lines
    );
    c.expect("STARTTLS", "502 5.5.1");
    c.expect("NOOP", "250 ");

    let certs = Certs::new();
    let s = start(&certs.args(&[]));
    let mut c = Client::greeted(s.addr);
    let ehlo = c.expect("EHLO c.test", "250 ");
    assert!(ehlo.texts().contains(&"STARTTLS"), "{:?}", ehlo.lines);
    c.expect("MAIL FROM:<a@example.org>", "250 2.1.0");
    c.expect("STARTTLS", "503 5.5.1");
    // Still plaintext, the transaction goes on.
    c.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    c.expect("RSET", "250 ");
    c.expect("QUIT", "221 ");
}

// ---- failed handshakes close that connection only ------------------------------------------

/// Reads until the server closes (a TLS alert may come first); panics after `limit`.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "connection still open after {limit:?}; got {got:?}"
        );
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn failed_handshake_closes_only_that_connection() {
    if !tools(&["python3", "openssl"]) {
        return;
    }
    let certs = Certs::new();
    let tls_port = integration_tests::free_port("127.0.0.1");
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let mut s = start(&certs.args(&["--tls-listen", &tls_addr]));

    // A plaintext client in the middle of a transaction while the others fail.
    let mut bystander = Client::greeted(s.addr);
    bystander.expect("EHLO bystander.test", "250 ");
    bystander.expect("MAIL FROM:<by@example.org>", "250 2.1.0");

    // Ten clients stalled right after `220 Ready` (no ClientHello yet) must not hold anyone up.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut c = Client::greeted(s.addr);
        c.expect("EHLO stall.test", "250 ");
        c.expect("STARTTLS", "220 2.0.0");
        stalled.push(c);
    }

    // Garbage instead of a ClientHello after STARTTLS.
    let mut bad = Client::greeted(s.addr);
    bad.expect("EHLO bad.test", "250 ");
    bad.expect("STARTTLS", "220 2.0.0");
    bad.send(b"GET / HTTP/1.0\r\n\r\nthis is not a TLS record\r\n");
    let alert = read_to_close(&mut bad.stream, Duration::from_secs(5));
    assert!(
        alert.is_empty() || alert[0] == 0x15,
        "expected nothing or a TLS alert before close, got {alert:?}"
    );

    // Garbage on the implicit TLS port, and a half ClientHello that then closes.
    let mut bad_implicit = TcpStream::connect(&tls_addr).expect("connect implicit");
    std::io::Write::write_all(&mut bad_implicit, b"EHLO plaintext.test\r\n").expect("write");
    read_to_close(&mut bad_implicit, Duration::from_secs(5));
    let mut half = TcpStream::connect(&tls_addr).expect("connect implicit");
    std::io::Write::write_all(&mut half, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).expect("write");
    drop(half);

    // Others carry on: the bystander finishes, a new TLS client delivers.
    bystander.expect("RCPT TO:<rcpt@example.com>", "250 2.1.5");
    bystander.expect("DATA", "354");
    bystander.send(b"Subject: bystander\r\n\r\nplain\r\n.\r\n");
    bystander.expect_reply("250 2.0.0");
    let out = python(
        PY_TLS_SEND,
        &[
            "starttls",
            "127.0.0.1",
            &s.addr.port().to_string(),
            certs.cert(),
            s.maildir.to_str().expect("utf-8"),
        ],
    );
    assert!(field(&out, "data").starts_with("250 2.0.0"), "{out}");
    wait_for("two stored messages", Duration::from_secs(5), || {
        s.new_files().len() == 2
    });
    assert!(
        s.child.try_wait().expect("try_wait").is_none(),
        "smtpd exited\n{}",
        server_log(&s)
    );
    drop(stalled);
}

// ---- certificate and key errors at start: one line, non-zero exit -------------------------

/// [`smtp::startup_failure`] with a fresh Maildir and a free port before `args`.
fn startup_failure(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let md = dir.path().join("Maildir");
    let mut all = vec![
        "--maildir",
        md.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    smtp::startup_failure(&all)
}

#[test]
fn missing_certificate_file_fails_with_one_line() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::new();
    let missing = certs.dir.path().join("no-such.crt");
    let missing = missing.to_str().expect("utf-8");
    let err = startup_failure(&["--tls-cert", missing, "--tls-key", certs.key()]);
    assert!(
        err.contains(missing),
        "stderr does not name {missing}: {err:?}"
    );
    let missing_key = certs.dir.path().join("no-such.key");
    let missing_key = missing_key.to_str().expect("utf-8");
    let err = startup_failure(&["--tls-cert", certs.cert(), "--tls-key", missing_key]);
    assert!(err.contains(missing_key), "{err:?}");
}

#[test]
fn key_not_matching_certificate_fails_with_one_line() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::new();
    let (_, other_key) = make_cert(certs.dir.path(), "other");
    let err = startup_failure(&[
        "--tls-cert",
        certs.cert(),
        "--tls-key",
        other_key.to_str().expect("utf-8"),
    ]);
    assert!(
        err.to_ascii_lowercase().contains("key"),
        "stderr does not mention the key: {err:?}"
    );
}

#[test]
fn garbage_pem_files_fail_with_one_line() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::new();
    let junk = certs.dir.path().join("junk.pem");
    std::fs::write(&junk, b"this is not PEM\n").expect("write");
    let junk = junk.to_str().expect("utf-8");
    startup_failure(&["--tls-cert", junk, "--tls-key", certs.key()]);
    startup_failure(&["--tls-cert", certs.cert(), "--tls-key", junk]);
    // The key where the certificate belongs, and the other way round.
    startup_failure(&["--tls-cert", certs.key(), "--tls-key", certs.cert()]);
}
