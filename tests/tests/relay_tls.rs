//! smtp-relay's TLS side (issue 7) against real peers: the real smtpd with `--tls-cert` as a
//! TLS-capable MX, and the recording sink (tests/py/sink.py) speaking TLS with Python's `ssl`
//! (OpenSSL). MX records from dnsmasq. Certificates are made at test time with the `openssl`
//! CLI ([`TestCa`]); no key is committed. Each test uses its own 127.0.2N.x addresses.

use integration_tests::certs::TestCa;
use integration_tests::relay::relay_ok as ok;
use integration_tests::relay::{
    Dns, Sink, queue, queue_sample, relay, run_args, sample, temp_maildir,
};
use integration_tests::{Smtpd, have, list};

fn have_peers() -> bool {
    have("openssl") && have("python3")
}

/// Default `--tls may` to the real smtpd offering STARTTLS: delivered over TLS 1.3, and the
/// stored file's trace header says so. With `--tls verify` and the test CA, the same MX is
/// "Verified".
#[test]
fn opportunistic_starttls_to_smtpd_and_verified() {
    if !have_peers() {
        return;
    }
    let Some(dns) = Dns::start(&["a.test,mx.a.test,10"], &["mx.a.test,127.0.20.2"]) else {
        return;
    };
    let ca = TestCa::new();
    let (crt, key) = ca.issue("mx.a.test");
    let mx_dir = tempfile::tempdir().expect("temp dir");
    let smtpd = Smtpd::start_in(
        &mx_dir.path().join("Maildir"),
        "127.0.20.2",
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--hostname",
            "mx.a.test",
        ],
    );
    let port = smtpd.addr.port().to_string();

    let (_d, md) = temp_maildir();
    queue_sample(&md, "t1", "u1@a.test");
    let (out, err) = ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(out.contains("1 delivered, 0 deferred"), "{out}\n{err}");
    assert!(
        err.contains("Untrusted TLS connection established to mx.a.test[127.0.20.2]:")
            && err.contains(": TLSv1.3 with cipher TLS13_"),
        "{err}"
    );
    let files = smtpd.new_files();
    assert_eq!(files.len(), 1);
    let stored = String::from_utf8_lossy(&std::fs::read(&files[0]).unwrap()).into_owned();
    let received = stored
        .split("\r\nReceived: ")
        .nth(1)
        .expect("smtpd's Received header");
    assert!(received.contains("(using TLSv1.3 with cipher"), "{stored}");
    assert!(received.contains("with ESMTPS"), "{stored}");
    assert!(stored.contains("Subject: test t1"), "{stored}");

    // verify: the certificate chains to the test CA and names mx.a.test.
    let (_d2, md2) = temp_maildir();
    queue(
        &md2,
        "<s@src.test>",
        &["<u2@a.test>"],
        &sample("t2", "u2@a.test"),
    );
    let ca_path = ca.cert.to_str().unwrap();
    let mut args = run_args(&dns, &port);
    args.extend(["--tls", "verify", "--tls-ca", ca_path]);
    let (out, err) = ok(&relay(md2.root(), &args));
    assert!(out.contains("1 delivered, 0 deferred"), "{out}\n{err}");
    assert!(
        err.contains("Verified TLS connection established to mx.a.test[127.0.20.2]:"),
        "{err}"
    );
    assert_eq!(smtpd.new_files().len(), 2);
}

/// `--tls verify`: a certificate for mx.a.test is accepted from mx.a.test and refused from
/// mx.b.test (same sink, same certificate): that mail is deferred, stays in new/, and nothing
/// of it reaches the sink.
#[test]
fn verify_refuses_a_certificate_for_another_name() {
    if !have_peers() {
        return;
    }
    let Some(dns) = Dns::start(
        &["a.test,mx.a.test,10", "b.test,mx.b.test,10"],
        &["mx.a.test,127.0.21.2", "mx.b.test,127.0.21.3"],
    ) else {
        return;
    };
    let ca = TestCa::new();
    let (crt, key) = ca.issue("mx.a.test");
    let sink = Sink::start(
        &["127.0.21.2", "127.0.21.3"],
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let (_d, md) = temp_maildir();
    queue_sample(&md, "ok", "u@a.test");
    let refused = queue_sample(&md, "no", "v@b.test");
    let port = sink.port.to_string();
    let mut args = run_args(&dns, &port);
    args.extend(["--tls", "verify", "--tls-ca", ca.cert.to_str().unwrap()]);
    let (out, err) = ok(&relay(md.root(), &args));
    assert!(
        out.contains("1 delivered, 1 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert!(
        err.contains("Verified TLS connection established to mx.a.test[127.0.21.2]:"),
        "{err}"
    );
    let line = err
        .lines()
        .find(|l| l.contains("to=<v@b.test>"))
        .expect("a log line for v@b.test");
    assert!(
        line.contains("status=deferred")
            && line.contains("TLS handshake failed")
            && line.contains("not valid for name"),
        "{line}"
    );
    let new: Vec<_> = list(md.new_dir());
    assert_eq!(new.len(), 1);
    assert!(new[0].ends_with(&refused));
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].1, "127.0.21.2");
    assert_eq!(msgs[0].3, vec!["<u@a.test>".to_owned()]);
    let listing = String::from_utf8_lossy(&relay(md.root(), &["--list"]).stdout).into_owned();
    assert!(listing.contains("not valid for name"), "{listing}");
}

/// `--tls encrypt` to a server without STARTTLS: QUIT before MAIL, the mail deferred with the
/// reason; default `may` to the same server delivers in plaintext.
#[test]
fn encrypt_without_starttls_defers() {
    let Some(dns) = Dns::start(&["a.test,mx.a.test,10"], &["mx.a.test,127.0.22.2"]) else {
        return;
    };
    let sink = Sink::start(&["127.0.22.2"], &[]);
    let (_d, md) = temp_maildir();
    queue_sample(&md, "e", "u@a.test");
    let port = sink.port.to_string();
    let mut args = run_args(&dns, &port);
    args.extend(["--tls", "encrypt"]);
    let (out, err) = ok(&relay(md.root(), &args));
    assert!(out.contains("0 delivered, 1 deferred"), "{out}\n{err}");
    assert!(
        err.contains("TLS is required, but the server does not offer STARTTLS"),
        "{err}"
    );
    assert!(sink.messages().is_empty());
    let sent: Vec<u8> = sink
        .events()
        .into_iter()
        .filter_map(|e| match e {
            integration_tests::relay::SinkEvent::Read { data, .. } => Some(data),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sent, b"EHLO relay.test\r\nQUIT\r\n");
    assert_eq!(list(md.new_dir()).len(), 1);

    let (out, err) = ok(&relay(
        md.root(),
        &[&run_args(&dns, &port)[..], &["--now"]].concat(),
    ));
    assert!(out.contains("1 delivered, 0 deferred"), "{out}\n{err}");
    assert!(!err.contains("TLS connection established"), "{err}");
}

/// `--smarthost mx.a.test:PORT,tls=implicit`: TLS from the first byte (RFC 8314) to the sink,
/// verified against the smarthost's name.
#[test]
fn implicit_tls_smarthost_delivers() {
    if !have_peers() {
        return;
    }
    let Some(dns) = Dns::start(&[], &["mx.a.test,127.0.23.2"]) else {
        return;
    };
    let ca = TestCa::new();
    let (crt, key) = ca.issue("mx.a.test");
    let sink = Sink::start(
        &["127.0.23.2"],
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--implicit-tls",
        ],
    );
    let (_d, md) = temp_maildir();
    for i in 0..3 {
        let to = format!("u{i}@far.test");
        queue(
            &md,
            "<s@src.test>",
            &[&format!("<{to}>")],
            &sample(&format!("i{i}"), &to),
        );
    }
    let smarthost = format!("mx.a.test:{},tls=implicit", sink.port);
    let out = relay(
        md.root(),
        &[
            "--once",
            "--dns",
            &dns.addr,
            "--smarthost",
            &smarthost,
            "--tls",
            "verify",
            "--tls-ca",
            ca.cert.to_str().unwrap(),
            "--timeout",
            "10",
        ],
    );
    let (out, err) = ok(&out);
    assert!(out.contains("3 delivered, 0 deferred"), "{out}\n{err}");
    assert!(
        err.contains("Verified TLS connection established to mx.a.test[127.0.23.2]"),
        "{err}"
    );
    let tls = sink.tls_events();
    assert_eq!(tls.len(), 1, "{tls:?}");
    assert_eq!(tls[0].0, "tls");
    assert_eq!(sink.messages().len(), 3);
    assert_eq!(sink.connections().len(), 1);
}

/// A handshake that fails (the sink's P-521 certificate needs a signature scheme rustls does
/// not offer; OpenSSL answers with a handshake_failure alert): `may` tries the same host again
/// in plaintext on a new connection and delivers; `encrypt` defers.
#[test]
fn failed_handshake_falls_back_to_plaintext_under_may() {
    if !have_peers() {
        return;
    }
    let Some(dns) = Dns::start(&["a.test,mx.a.test,10"], &["mx.a.test,127.0.24.2"]) else {
        return;
    };
    let ca = TestCa::new();
    let (crt, key) = ca.p521_self_signed("mx.a.test");
    let sink = Sink::start(
        &["127.0.24.2"],
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = sink.port.to_string();

    // encrypt: deferred, nothing delivered.
    let (_d, md) = temp_maildir();
    queue_sample(&md, "f1", "u1@a.test");
    queue_sample(&md, "f2", "u2@a.test");
    let mut args = run_args(&dns, &port);
    args.extend(["--tls", "encrypt"]);
    let (out, err) = ok(&relay(md.root(), &args));
    assert!(out.contains("0 delivered, 2 deferred"), "{out}\n{err}");
    assert!(err.contains("TLS handshake failed"), "{err}");
    assert!(sink.messages().is_empty());

    // may (the default): the handshake fails, then both messages go in plaintext on one new
    // connection.
    let (out, err) = ok(&relay(
        md.root(),
        &[&run_args(&dns, &port)[..], &["--now"]].concat(),
    ));
    assert!(out.contains("2 delivered, 0 deferred"), "{out}\n{err}");
    assert!(
        err.contains("TLS handshake failed") && err.contains("trying again in plaintext"),
        "{err}"
    );
    let fails = sink.tls_events();
    assert_eq!(fails.len(), 2, "{fails:?}");
    assert!(fails.iter().all(|f| f.0 == "tlsfail"), "{fails:?}");
    let conns = sink.connections();
    assert_eq!(conns.len(), 3, "{conns:?}");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2);
    assert!(msgs.iter().all(|m| m.0 == conns[2].0), "{msgs:?}");
    assert!(list(md.new_dir()).is_empty());
}
