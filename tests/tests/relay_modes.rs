//! smtp-relay's modes (issue 4): `--smarthost` (everything to one server, no MX lookup),
//! `--interval` (a daemon fed by a real smtpd, woken at once by new mail, stopped by SIGTERM)
//! and the `--list` format. Each test uses its own 127.0.25.x / 127.0.26.x addresses.

use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::relay::{
    Daemon, Dns, Sink, queue, queue_sample, relay, sample, temp_maildir, without_envelope,
};
use integration_tests::{Smtpd, file_mtime, free_port, list, python, rfc5322_epochs, wait_for};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "smtp-relay failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    stdout
}

/// `--smarthost IP:PORT`: mail for any domain goes to that one server over one connection, and
/// no DNS is asked (the `--dns` given points at a port where nothing answers).
#[test]
fn smarthost_by_address_takes_everything_without_dns() {
    let sink = Sink::start(&["127.0.25.2"], &[]);
    let (_d, md) = temp_maildir();
    let mut want = Vec::new();
    let sets: [&[&str]; 4] = [
        &["<a@one.test>"],
        &["<b@two.example>"],
        &["<c@three.invalid>", "<d@one.test>"],
        &["<e@four.test>"],
    ];
    for (i, rcpts) in sets.iter().enumerate() {
        let n = queue(
            &md,
            "<s@src.test>",
            rcpts,
            &sample(&format!("h{i}"), "x@y.test"),
        );
        let file = std::fs::read(md.new_dir().join(n)).unwrap();
        let r: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
        want.push((r, without_envelope(&file)));
    }
    let dead_dns = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let host = format!("127.0.25.2:{}", sink.port);
    let t0 = Instant::now();
    let out = ok(&relay(
        md.root(),
        &[
            "--once",
            "--smarthost",
            &host,
            "--dns",
            &dead_dns,
            "--port",
            "1",
            "--timeout",
            "5",
        ],
    ));
    assert!(out.contains("5 delivered, 0 deferred, 0 bounced"), "{out}");
    assert!(out.contains("1 connection(s), 0 failed"), "{out}");
    assert!(
        // The resolver would wait 2 x 5 s for a dead server; a loaded machine needs slack.
        t0.elapsed() < Duration::from_secs(8),
        "no DNS timeout was waited for"
    );
    assert_eq!(sink.connections().len(), 1);
    let mut got: Vec<_> = sink.messages().into_iter().map(|m| (m.3, m.4)).collect();
    got.sort();
    want.sort();
    assert!(
        got == want,
        "each message once, intact, all recipients in one transaction"
    );
    assert!(list(md.new_dir()).is_empty());
}

/// `--smarthost NAME:PORT` resolves the name (A record) and ignores the domains' MX records:
/// the MX host sees nothing. `--smarthost NAME` without a port uses `--port`.
#[test]
fn smarthost_by_name_overrides_mx() {
    let Some(dns) = Dns::start(
        &["mx.test,mx.mx.test,10", "other.test,mx.mx.test,10"],
        &["mx.mx.test,127.0.25.3", "smart.test,127.0.25.4"],
    ) else {
        return;
    };
    let mx = Sink::start(&["127.0.25.3"], &[]);
    let smart = Sink::start_on(&["127.0.25.4"], mx.port, &[]);
    let (_d, md) = temp_maildir();
    for i in 0..6 {
        let dom = if i % 2 == 0 { "mx.test" } else { "other.test" };
        let to = format!("u{i}@{dom}");
        queue(
            &md,
            "<s@src.test>",
            &[&format!("<{to}>")],
            &sample(&format!("n{i}"), &to),
        );
    }
    let port = mx.port.to_string();
    let host = format!("smart.test:{port}");
    let out = ok(&relay(
        md.root(),
        &[
            "--once",
            "--dns",
            &dns.addr,
            "--smarthost",
            &host,
            "--timeout",
            "5",
        ],
    ));
    assert!(out.contains("6 delivered, 0 deferred"), "{out}");
    assert_eq!(smart.messages().len(), 6);
    assert_eq!(smart.connections().len(), 1);
    assert!(mx.connections().is_empty(), "the MX host is never used");
    // Without a port in --smarthost, --port applies.
    queue_sample(&md, "n9", "z@mx.test");
    let out = ok(&relay(
        md.root(),
        &[
            "--once",
            "--dns",
            &dns.addr,
            "--smarthost",
            "smart.test",
            "--port",
            &port,
            "--timeout",
            "5",
        ],
    ));
    assert!(out.contains("1 delivered, 0 deferred"), "{out}");
    assert_eq!(smart.messages().len(), 7);
    assert!(mx.connections().is_empty());
}

/// Sends one message to smtpd with Python's smtplib.
fn smtplib_send(addr: &str, to: &str, subject: &str) {
    let script = r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
with smtplib.SMTP(host, int(port), timeout=10) as s:
    s.sendmail("me@src.test", [sys.argv[2]], "Subject: %s\r\n\r\nbody of %s\r\n" % (sys.argv[3], sys.argv[3]))
"#;
    python(script, &[addr, to, subject]);
}

/// `--interval 3600`: a daemon that wakes at once when smtpd drops mail into new/ (far sooner
/// than the hour), twice, and delivers it; the queue ends empty.
#[test]
fn interval_daemon_wakes_on_new_mail_from_smtpd() {
    let sink = Sink::start(&["127.0.26.2"], &[]);
    let smtpd = Smtpd::start(&[]);
    let host = format!("127.0.26.2:{}", sink.port);
    let d = Daemon::start(
        &smtpd.maildir,
        &["--interval", "3600", "--smarthost", &host, "--timeout", "5"],
    );
    wait_for("the first (empty) run", Duration::from_secs(10), || {
        d.count("smtp-relay: 0 delivered") >= 1
    });
    for (i, subject) in ["first", "second"].iter().enumerate() {
        let t0 = Instant::now();
        smtplib_send(&smtpd.addr.to_string(), "you@far.test", subject);
        let queued = t0.elapsed();
        wait_for(
            "the sink to get the message",
            Duration::from_secs(15),
            || sink.messages().len() > i,
        );
        let took = t0.elapsed();
        let m = &sink.messages()[i];
        assert_eq!(m.3, vec!["<you@far.test>".to_string()]);
        assert!(text(&m.4).contains(&format!("Subject: {subject}\r\n")));
        assert!(took < Duration::from_secs(15), "woke at once: {took:?}");
        eprintln!("{subject}: smtplib → smtpd in {queued:?}, → relay → sink in {took:?}");
    }
    wait_for("new/ to drain", Duration::from_secs(10), || {
        smtpd.new_files().is_empty()
    });
    assert_eq!(list(&smtpd.maildir.join("cur")).len(), 2);
    // The log reaches us through the logging thread and a pipe: wait for the line, then
    // check there are exactly two.
    wait_for("both delivery log lines", Duration::from_secs(10), || {
        d.count("status=sent") >= 2
    });
    assert!(d.count("status=sent") == 2, "{}", d.log());
    // Still running: a second relay must leave (lock held).
    let out = relay(&smtpd.maildir, &["--once", "--smarthost", &host]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
}

/// SIGTERM stops the daemon promptly with exit status 0 (like the `--once` run; init systems and
/// supervisors report a signal death as a failure), releasing the lock, with nothing lost.
#[test]
fn interval_daemon_stops_on_sigterm() {
    let sink = Sink::start(&["127.0.26.3"], &[]);
    let (_d, md) = temp_maildir();
    let host = format!("127.0.26.3:{}", sink.port);
    let mut d = Daemon::start(
        md.root(),
        &["--interval", "3600", "--smarthost", &host, "--timeout", "5"],
    );
    wait_for("the first run", Duration::from_secs(10), || {
        d.count("smtp-relay: 0 delivered") >= 1
    });
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.log());
    // The lock is free again and the Maildir usable.
    queue_sample(&md, "t1", "u@x.test");
    let out = ok(&relay(md.root(), &["--once", "--smarthost", &host]));
    assert!(out.contains("1 delivered"), "{out}");
}

/// `--list` dates are RFC 5322 on any day of any month (one- and two-digit days, month ends,
/// 29 February), checked by parsing, never by length: arrival dates from file times set to such
/// days, and a whole relay run under `faketime` on the 3rd of a month, whose "next attempt"
/// (now + 300 s) must parse to that day.
#[test]
fn list_dates_on_any_day() {
    let (_d, md) = temp_maildir();
    // 2027-03-01 00:00:00, 2027-03-09 23:59:59, 2027-03-10 12:00:00, 2028-02-29 06:30:00,
    // 2026-12-31 23:59:59 (UTC).
    let days: [i64; 5] = [
        1_803_859_200,
        1_804_636_799,
        1_804_680_000,
        1_835_418_600,
        1_798_761_599,
    ];
    let mut names = Vec::new();
    for (k, t) in days.iter().enumerate() {
        let name = queue(
            &md,
            "<s@src.test>",
            &["<u@d.test>"],
            &sample(&format!("d{k}"), "u@d.test"),
        );
        let f = std::fs::File::options()
            .write(true)
            .open(md.new_dir().join(&name))
            .unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(*t as u64))
            .unwrap();
        names.push(name);
    }
    let listing = ok(&relay(md.root(), &["--list"]));
    for (name, t) in names.iter().zip(days) {
        let line = listing
            .lines()
            .find(|l| l.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"));
        let date = line
            .split("  ")
            .nth(2)
            .unwrap_or_else(|| panic!("no date in {line:?}"));
        assert_eq!(rfc5322_epochs(&[date]), Ok(vec![t]), "{line}");
    }

    // A run on the 3rd of a month (faketime moves the wall clock only), then --list.
    let faketime = "faketime";
    if !integration_tests::have(faketime) {
        eprintln!("faketime not installed: the run on a fake date is skipped");
        return;
    }
    let sink = Sink::start(&["127.0.26.9"], &["--code", "u@f.test=451"]);
    let host = format!("127.0.26.9:{}", sink.port);
    let (_d2, md2) = temp_maildir();
    let name = queue(
        &md2,
        "<s@src.test>",
        &["<u@f.test>"],
        &sample("f", "u@f.test"),
    );
    // Arrived a minute before the fake now (else the queue lifetime would have passed).
    std::fs::File::options()
        .write(true)
        .open(md2.new_dir().join(&name))
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(1_801_627_506 - 60))
        .unwrap();
    let fake = |args: &[&str]| {
        let out = std::process::Command::new(faketime)
            .arg("2027-02-03 04:05:06")
            .arg(integration_tests::bin("smtp-relay"))
            .arg("--maildir")
            .arg(md2.root())
            .args(args)
            .env("TZ", "UTC")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .output()
            .expect("run faketime smtp-relay");
        (ok(&out), text(&out.stderr))
    };
    let (out, log) = fake(&["--once", "--smarthost", &host]);
    assert!(out.contains("1 deferred"), "{out}\n{log}");
    let (listing, _) = fake(&["--list"]);
    let line = listing
        .lines()
        .find(|l| l.starts_with("  attempts: 1  next attempt: "))
        .unwrap_or_else(|| panic!("{name}: no next attempt line:\n{listing}"));
    let date = line["  attempts: 1  next attempt: ".len()..]
        .split(" (in ")
        .next()
        .unwrap_or_default();
    assert!(date.starts_with("Wed, 3 Feb 2027 04:"), "{line}");
    let t = rfc5322_epochs(&[date]).unwrap_or_else(|e| panic!("{line}: {e}"))[0];
    // 2027-02-03 04:05:06 UTC is 1_801_627_506; the retry is 300 s after the attempt.
    assert!(
        (1_801_627_506 + 290..=1_801_627_506 + 400).contains(&t),
        "next attempt {date:?} not ~300 s after the fake start: {line}"
    );
}

/// The `--list` format, like mailq: a header line per message (id, size of what is transmitted,
/// arrival date, sender), attempts and next attempt, the last error, one line per recipient with
/// status and reply, a footer; "Mail queue is empty" when it is.
#[test]
fn list_format() {
    let (_d, md) = temp_maildir();
    let out = ok(&relay(md.root(), &["--list"]));
    assert_eq!(out, "Mail queue is empty\n");

    let sink = Sink::start(
        &["127.0.26.5"],
        &["--code", "later@l.test=451", "--code", "nobody@l.test=550"],
    );
    let host = format!("127.0.26.5:{}", sink.port);
    let tried = queue(
        &md,
        "<sender@src.test>",
        &["<later@l.test>", "<nobody@l.test>", "<fine@l.test>"],
        &sample("l1", "x@l.test"),
    );
    let t_run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = ok(&relay(md.root(), &["--once", "--smarthost", &host]));
    assert!(out.contains("1 delivered, 1 deferred, 1 bounced"), "{out}");
    // Queued after the run: never tried. (The run also queued a DSN for <sender@src.test>.)
    let fresh = queue(&md, "<>", &["<p@l.test>"], &sample("l2", "p@l.test"));
    let listing = ok(&relay(md.root(), &["--list"]));
    let lines: Vec<&str> = listing.lines().collect();

    let size = |name: &str| {
        let f = std::fs::read(md.new_dir().join(name)).unwrap();
        without_envelope(&f).len()
    };
    let at = |name: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"))
    };

    // The tried message.
    let i = at(&tried);
    let head = format!("{tried}  {} bytes  ", size(&tried));
    assert!(lines[i].starts_with(&head), "{}", lines[i]);
    assert!(
        lines[i].ends_with("  from <sender@src.test>"),
        "{}",
        lines[i]
    );
    // The arrival date: parsed as RFC 5322 (one- or two-digit day), the file's mtime.
    let date = &lines[i][head.len()..lines[i].len() - "  from <sender@src.test>".len()];
    let arrival = file_mtime(&md.new_dir().join(&tried));
    assert_eq!(
        rfc5322_epochs(&[date]),
        Ok(vec![arrival]),
        "arrival date {date:?} in {}",
        lines[i]
    );
    let l = lines[i + 1];
    assert!(l.starts_with("  attempts: 1  next attempt: "), "{l}");
    let secs: u64 = l
        .rsplit_once("(in ")
        .and_then(|(_, r)| r.strip_suffix(" s)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("next attempt in N s: {l}"));
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - t_run;
    assert!(
        (290..=302).contains(&(secs + elapsed)),
        "first retry 300 s after the attempt (whole seconds, rounded on both sides): {l}"
    );
    assert!(
        lines[i + 2].starts_with("  last error: "),
        "{}",
        lines[i + 2]
    );
    assert!(lines[i + 2].contains("451"), "{}", lines[i + 2]);
    let r = &lines[i + 3..i + 6];
    assert!(
        r[0].starts_with("    <later@l.test> deferred (451 "),
        "{}",
        r[0]
    );
    assert!(
        r[1].starts_with("    <nobody@l.test> bounced (550 "),
        "{}",
        r[1]
    );
    assert!(
        r[2].starts_with("    <fine@l.test> delivered (250"),
        "{}",
        r[2]
    );

    // The fresh one.
    let j = at(&fresh);
    assert!(lines[j].ends_with("  from <>"), "{}", lines[j]);
    assert_eq!(lines[j + 1], "  attempts: 0  next attempt: now");
    assert_eq!(lines[j + 2], "    <p@l.test> pending");

    // The DSN the run queued, and the footer: 3 messages, later + p + the DSN's recipient.
    assert!(listing.contains("  from <>\n"), "{listing}");
    assert!(
        lines.contains(&"    <sender@src.test> pending"),
        "{listing}"
    );
    assert_eq!(
        *lines.last().unwrap(),
        "-- 3 messages, 3 recipients pending"
    );
}

/// A smarthost name that does not resolve is a local configuration problem, not the recipients'
/// fault: the mail is deferred (as Postfix does for a bad relayhost), never bounced.
#[test]
fn unresolvable_smarthost_defers_not_bounces() {
    let Some(dns) = Dns::start(&["x.test,mx.x.test,10"], &["mx.x.test,127.0.25.5"]) else {
        return;
    };
    let (_d, md) = temp_maildir();
    queue_sample(&md, "u1", "u@x.test");
    let out = relay(
        md.root(),
        &[
            "--once",
            "--dns",
            &dns.addr,
            "--smarthost",
            "nosuch.test:2525",
            "--timeout",
            "5",
        ],
    );
    let stdout = ok(&out);
    assert!(
        stdout.contains("0 delivered, 1 deferred, 0 bounced"),
        "{stdout}"
    );
    assert_eq!(list(md.new_dir()).len(), 1, "no DSN queued");
}
