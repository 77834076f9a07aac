//! smtp-relay against broken peers (issue 6, "Broken peers"): servers that close mid-DATA, never
//! answer, send garbage or malformed multi-line replies, or answer 421 and close
//! (tests/py/broken_sink.py). Each must end as a deferral with the reason logged, exit status 0,
//! the message still in `new/` with its progress in `Maildir/.relay/`, `--list` showing it
//! deferred with the error, nothing marked delivered; and a later `--now` run against a good sink
//! (tests/py/sink.py) delivers it intact, once. Also: 451 mid-DATA, a server that stops reading
//! mid-DATA, one that closes (or answers 421) after accepting the first message on each
//! connection (the relay connects again, at most three times; not after a stall), a broken
//! first MX host (the second gets the mail), a broken host beside a good one.
//! Each test uses its own 127.0.2N.x addresses.

use std::process::Output;
use std::time::{Duration, Instant};

use integration_tests::relay::{
    BrokenSink, Dns, Sink, queue, queue_sample, relay, sample, temp_maildir, without_envelope,
};
use integration_tests::relay::{relay_ok as ok, state_of, text};
use integration_tests::{list, wait_for};
use maildir_core::Maildir;

/// What a fault case queues: two messages, three recipients; the first message is `big` octets
/// of body so that a sink closing after its first read closes mid-DATA.
struct Queued {
    names: Vec<String>,
    /// (recipients, what the sink must receive)
    want: Vec<(Vec<String>, Vec<u8>)>,
}

fn queue_two(md: &Maildir, big: usize) -> Queued {
    let mut body = sample("f1", "a@faults.test");
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while body.len() < big {
        body.extend_from_slice(line);
    }
    let r1 = ["<a@faults.test>", "<b@other.test>"];
    let n1 = queue(md, "<s@src.test>", &r1, &body);
    let r2 = ["<c@faults.test>"];
    let n2 = queue(md, "<s@src.test>", &r2, &sample("f2", "c@faults.test"));
    let mut want = Vec::new();
    for (n, r) in [(&n1, &r1[..]), (&n2, &r2[..])] {
        let file = std::fs::read(md.new_dir().join(n)).unwrap();
        want.push((
            r.iter().map(|s| s.to_string()).collect(),
            without_envelope(&file),
        ));
    }
    Queued {
        names: vec![n1, n2],
        want,
    }
}

fn relay_args<'a>(smarthost: &'a str, timeout: &'a str) -> Vec<&'a str> {
    vec![
        "--once",
        "--smarthost",
        smarthost,
        "--timeout",
        timeout,
        "--helo",
        "relay.test",
    ]
}

/// Checks the outcome of one run against a broken peer: everything deferred with `reason` in the
/// log, the state files and `--list`; nothing delivered or moved.
fn assert_all_deferred(md: &Maildir, q: &Queued, out: &Output, reasons: &[&str], attempts: u32) {
    let why = |l: &str| {
        let l = l.to_lowercase();
        reasons.iter().any(|r| l.contains(&r.to_lowercase()))
    };
    let (stdout, stderr) = ok(out);
    assert!(
        stdout.contains("0 delivered, 3 deferred, 0 bounced"),
        "summary: {stdout}\nstderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for r in ["<a@faults.test>", "<b@other.test>", "<c@faults.test>"] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("to={r},")) && l.contains("status=deferred"))
            .unwrap_or_else(|| panic!("no deferral logged for {r}:\n{stderr}"));
        assert!(why(line), "reason {reasons:?} not in {line:?}");
    }
    assert!(!stderr.contains("status=sent"), "{stderr}");
    let new = list(md.new_dir());
    assert_eq!(new.len(), 2, "both messages still queued: {new:?}");
    assert!(list(md.cur_dir()).is_empty(), "nothing finished");
    for n in &q.names {
        let st = state_of(md, n);
        assert!(st.contains(&format!("attempts {attempts}\n")), "{n}: {st}");
        assert!(!st.contains("delivered"), "{n}: {st}");
        assert!(st.contains("rcpt 0 deferred "), "{n}: {st}");
        assert!(why(&st), "{n}: {st}");
    }
    let (listing, _) = ok(&relay(md.root(), &["--list"]));
    for r in ["<a@faults.test>", "<b@other.test>", "<c@faults.test>"] {
        let line = listing
            .lines()
            .find(|l| l.trim_start().starts_with(r))
            .unwrap_or_else(|| panic!("{r} not listed:\n{listing}"));
        assert!(line.contains(" deferred (") && why(line), "{line}");
    }
    assert_eq!(
        listing
            .lines()
            .filter(|l| l.starts_with("  last error: "))
            .count(),
        2,
        "{listing}"
    );
    assert!(
        listing.contains("-- 2 messages, 3 recipients pending"),
        "{listing}"
    );
}

/// After the broken run: not due without `--now`; with `--now`, a good sink on the same address
/// gets each message once, intact, and both move to `cur/` as delivered.
fn assert_delivered_later(md: &Maildir, q: &Queued, ip: &str, port: u16) {
    let sink = Sink::start_on(&[ip], port, &[]);
    let host = format!("{ip}:{port}");
    let (out, _) = ok(&relay(md.root(), &relay_args(&host, "5")));
    assert!(out.contains("2 not due"), "{out}");
    assert!(sink.connections().is_empty());
    // A generous timeout: the good sink is a Python process taking an 8 MiB message, and a
    // loaded machine may leave it without CPU for seconds (seen in a full run).
    let mut a = relay_args(&host, "60");
    a.push("--now");
    let (out, err) = ok(&relay(md.root(), &a));
    assert!(
        out.contains("3 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert!(list(md.new_dir()).is_empty());
    let cur = list(md.cur_dir());
    assert_eq!(cur.len(), 2);
    assert!(cur.iter().all(|p| p.to_string_lossy().ends_with(":2,P")));
    let mut got: Vec<_> = sink.messages().into_iter().map(|m| (m.3, m.4)).collect();
    got.sort();
    let mut want = q.want.clone();
    want.sort();
    assert_eq!(got.len(), 2, "each message once");
    assert!(got == want, "content differs from what was stored");
}

/// What a broken sink saw during the faulty run.
struct Seen {
    connections: usize,
    received: Vec<u8>,
    took: Duration,
}

/// One broken peer, end to end: the faulty run (checked by [`assert_all_deferred`]), then
/// delivery by a good sink on the same address on a later `--now` run.
fn fault_case(ip: &str, mode: &str, timeout: &str, reasons: &[&str]) -> (Seen, Queued) {
    let broken = BrokenSink::start(&[ip], mode);
    let (_d, md) = temp_maildir();
    let big = matches!(mode, "close-mid-data" | "451-mid-data");
    let q = queue_two(&md, if big { 1 << 20 } else { 0 });
    let host = format!("{ip}:{}", broken.port);
    let t0 = Instant::now();
    let out = relay(md.root(), &relay_args(&host, timeout));
    let took = t0.elapsed();
    assert_all_deferred(&md, &q, &out, reasons, 1);
    wait_for(
        "the broken sink to log the close",
        Duration::from_secs(5),
        || broken.closed(),
    );
    let seen = Seen {
        connections: broken.connections(),
        received: broken.received(),
        took,
    };
    assert_eq!(seen.connections, 1, "one connection to the broken host");
    let port = broken.port;
    drop(broken);
    assert_delivered_later(&md, &q, ip, port);
    (seen, q)
}

fn has(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The server reads part of a 1 MiB message, then closes (RST: unread data).
#[test]
fn closes_mid_data() {
    let (seen, q) = fault_case("127.0.21.2", "close-mid-data", "5", &["lost connection"]);
    assert!(has(&seen.received, "DATA\r\n"));
    assert!(
        seen.received.len() < q.want[0].1.len(),
        "the sink closed before the big message was through ({} octets)",
        seen.received.len()
    );
}

/// The server accepts the connection and never says a word: the `--timeout` ends it.
#[test]
fn never_answers_the_greeting() {
    let (seen, _) = fault_case(
        "127.0.21.3",
        "silent",
        "1",
        &["timeout waiting for reply to greeting"],
    );
    assert!(seen.received.is_empty(), "nothing sent before a greeting");
    assert!(
        // Generous upper bound for a loaded machine: without the timeout it would never end.
        seen.took >= Duration::from_millis(900) && seen.took < Duration::from_secs(15),
        "gave up after about --timeout 1: {:?}",
        seen.took
    );
}

/// The whole message reaches the server but the final dot is never answered: the message may or
/// may not have been taken, so it is deferred (re-sent later), never counted as delivered.
#[test]
fn never_answers_the_final_dot() {
    let (seen, _) = fault_case(
        "127.0.21.4",
        "silent-at-dot",
        "1",
        &["timeout waiting for reply to end of data"],
    );
    assert!(has(&seen.received, "\r\n.\r\n"), "the dot was sent");
    assert!(seen.took < Duration::from_secs(15), "{:?}", seen.took);
}

/// A greeting that is binary junk and an HTTP status line.
#[test]
fn garbage_greeting() {
    let (seen, _) = fault_case(
        "127.0.21.5",
        "garbage-greeting",
        "5",
        &["protocol error: malformed reply line"],
    );
    assert!(
        !has(&seen.received, "MAIL FROM"),
        "no transaction after a junk greeting"
    );
}

/// The final dot answered with a line that is not a reply.
#[test]
fn garbage_reply_to_the_dot() {
    fault_case(
        "127.0.21.6",
        "garbage-at-dot",
        "5",
        &["protocol error: malformed reply line \"OK THANKS\""],
    );
}

/// An EHLO reply whose last line changes the code (250-… then 550 …).
#[test]
fn multiline_reply_changing_code() {
    let (seen, _) = fault_case(
        "127.0.21.7",
        "multiline-mismatch",
        "5",
        &["reply code changed from 250 to 550 inside a multi-line reply"],
    );
    assert!(!has(&seen.received, "MAIL FROM"));
}

/// An EHLO reply continued for 5,000 lines, and one of 1 MiB without a line end: refused at the
/// parser's bounds, not buffered.
#[test]
fn endless_multiline_reply_and_endless_line() {
    fault_case(
        "127.0.21.8",
        "multiline-endless",
        "5",
        &["protocol error: reply too long"],
    );
    fault_case(
        "127.0.21.9",
        "long-line",
        "5",
        &["protocol error: reply too long"],
    );
}

/// 421 as the greeting, then close.
#[test]
fn answers_421_at_greeting() {
    let (seen, _) = fault_case(
        "127.0.22.2",
        "421-greeting",
        "5",
        &["greeting: 421 4.3.2 sink.test too busy, try later"],
    );
    assert!(!has(&seen.received, "MAIL FROM"));
}

/// 421 in answer to MAIL FROM, then close (the pipelined RCPT and DATA go unanswered).
#[test]
fn answers_421_after_mail() {
    let (seen, _) = fault_case(
        "127.0.22.3",
        "421-after-mail",
        "5",
        &["421 4.3.2 sink.test shutting down"],
    );
    assert!(has(&seen.received, "MAIL FROM:<s@src.test>"));
    assert!(!has(&seen.received, "\r\n.\r\n"), "no message data sent");
}

/// 451 while the message data is still streaming, then close.
#[test]
fn answers_451_mid_data() {
    // Depending on whether the relay reads the 451 before its next write meets the reset.
    fault_case(
        "127.0.22.4",
        "451-mid-data",
        "5",
        &["451 4.3.0 sink.test disk full", "lost connection"],
    );
}

/// The server closes after accepting one message on each connection: the relay connects
/// again for the rest (issue 10, item 9) instead of deferring it, so both messages are delivered,
/// each once, over two connections.
#[test]
fn closes_after_the_first_message_then_reconnect() {
    let ip = "127.0.22.5";
    let broken = BrokenSink::start(&[ip], "close-after-first");
    let (_d, md) = temp_maildir();
    let q = queue_two(&md, 0);
    let host = format!("{ip}:{}", broken.port);
    let (out, err) = ok(&relay(md.root(), &relay_args(&host, "5")));
    assert!(
        out.contains("3 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    for r in ["<a@faults.test>", "<b@other.test>", "<c@faults.test>"] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("to={r},")) && l.contains("status=sent")),
            "{r}: {err}"
        );
    }
    assert!(err.contains("connecting again for 1 message(s)"), "{err}");
    assert_eq!(broken.connections(), 2);
    assert_eq!(count_messages(&broken), 2, "each message once");
    assert!(list(md.new_dir()).is_empty());
    let cur = list(md.cur_dir());
    assert_eq!(cur.len(), 2);
    for n in &q.names {
        assert!(
            cur.iter()
                .any(|p| p.to_string_lossy().ends_with(&format!("{n}:2,P"))),
            "{cur:?}"
        );
    }
}

/// 421 to MAIL FROM after one accepted message on each connection (a per-connection limit):
/// the relay connects again, and everything is delivered in the same run.
#[test]
fn answers_421_after_the_first_message_then_reconnect() {
    let ip = "127.0.22.7";
    let broken = BrokenSink::start(&[ip], "421-after-first");
    let (_d, md) = temp_maildir();
    queue_two(&md, 0);
    let host = format!("{ip}:{}", broken.port);
    let (out, err) = ok(&relay(md.root(), &relay_args(&host, "5")));
    assert!(
        out.contains("3 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert!(err.contains("421 4.3.2 sink.test shutting down"), "{err}");
    assert_eq!(broken.connections(), 2);
    assert_eq!(count_messages(&broken), 2);
    assert!(list(md.new_dir()).is_empty());
}

/// Reconnecting is bounded: against a server that takes one message per connection, six
/// messages give four connections (the first and three more); the last two are deferred with the
/// reason, and a later run delivers them.
#[test]
fn reconnects_at_most_three_times() {
    let ip = "127.0.22.8";
    let broken = BrokenSink::start(&[ip], "close-after-first");
    let (_d, md) = temp_maildir();
    for i in 0..6 {
        let to = format!("r{i}@faults.test");
        queue(
            &md,
            "<s@src.test>",
            &[&format!("<{to}>")],
            &sample(&format!("r{i}"), &to),
        );
    }
    let host = format!("{ip}:{}", broken.port);
    let (out, err) = ok(&relay(md.root(), &relay_args(&host, "5")));
    assert!(
        out.contains("4 delivered, 2 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert_eq!(broken.connections(), 4, "{err}");
    assert_eq!(count_messages(&broken), 4);
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("status=deferred") && l.contains("lost connection"))
            .count(),
        2,
        "{err}"
    );
    assert_eq!(list(md.new_dir()).len(), 2);
    assert_eq!(list(md.cur_dir()).len(), 4);
}

/// A server that takes one message and then stalls at the next final dot gets no new
/// connection (a stalled host is not given a second chance in the same run): the first message
/// is delivered, the second deferred with the timeout, over one connection.
#[test]
fn stalls_after_the_first_message_no_reconnect() {
    let ip = "127.0.22.9";
    let broken = BrokenSink::start(&[ip], "silent-after-first");
    let (_d, md) = temp_maildir();
    let q = queue_two(&md, 0);
    let host = format!("{ip}:{}", broken.port);
    let (out, err) = ok(&relay(md.root(), &relay_args(&host, "2")));
    assert!(
        out.contains("2 delivered, 1 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert!(
        err.lines().any(|l| l.contains("to=<c@faults.test>,")
            && l.contains("status=deferred")
            && l.contains("timeout")),
        "{err}"
    );
    assert_eq!(broken.connections(), 1, "{err}");
    assert_eq!(list(md.new_dir()), vec![md.new_dir().join(&q.names[1])]);
}

/// Messages a broken sink accepted (each "250 2.0.0 queued" it sent follows a final dot).
fn count_messages(b: &BrokenSink) -> usize {
    let got = b.received();
    got.windows(5).filter(|w| w == b"\r\n.\r\n").count()
}

/// RFC 5321 §5.1: a 421 greeting or a silent first MX host → the next MX host, in the same run.
#[test]
fn broken_first_mx_falls_back_to_second() {
    let Some(dns) = Dns::start(
        &[
            "busy.test,mx1.busy.test,10",
            "busy.test,mx2.busy.test,20",
            "mute.test,mx1.mute.test,10",
            "mute.test,mx2.mute.test,20",
        ],
        &[
            "mx1.busy.test,127.0.23.2",
            "mx1.mute.test,127.0.23.3",
            "mx2.busy.test,127.0.23.4",
            "mx2.mute.test,127.0.23.4",
        ],
    ) else {
        return;
    };
    let busy = BrokenSink::start(&["127.0.23.2"], "421-greeting");
    let mute = BrokenSink::start_on(&["127.0.23.3"], busy.port, "silent");
    let good = Sink::start_on(&["127.0.23.4"], busy.port, &[]);
    let (_d, md) = temp_maildir();
    queue_sample(&md, "b1", "u@busy.test");
    queue_sample(&md, "m1", "u@mute.test");
    let port = busy.port.to_string();
    let (out, err) = ok(&relay(
        md.root(),
        &[
            "--once",
            "--dns",
            &dns.addr,
            "--port",
            &port,
            "--timeout",
            "1",
        ],
    ));
    assert!(
        out.contains("2 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert_eq!(busy.connections(), 1);
    assert_eq!(mute.connections(), 1);
    let mut rcpts: Vec<_> = good.messages().into_iter().map(|m| m.3).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec![
            vec!["<u@busy.test>".to_string()],
            vec!["<u@mute.test>".to_string()]
        ]
    );
    assert!(list(md.new_dir()).is_empty());
}

/// A host that never answers does not hold up or spoil delivery to a good host in the same run.
#[test]
fn broken_host_does_not_affect_others() {
    let Some(dns) = Dns::start(
        &["dead.test,mx.dead.test,10", "live.test,mx.live.test,10"],
        &["mx.dead.test,127.0.24.2", "mx.live.test,127.0.24.3"],
    ) else {
        return;
    };
    let dead = BrokenSink::start(&["127.0.24.2"], "silent-at-dot");
    let live = Sink::start_on(&["127.0.24.3"], dead.port, &[]);
    let (_d, md) = temp_maildir();
    for i in 0..20 {
        let (dom, id) = if i % 2 == 0 {
            ("dead.test", "d")
        } else {
            ("live.test", "l")
        };
        let to = format!("u{i}@{dom}");
        queue(
            &md,
            "<s@src.test>",
            &[&format!("<{to}>")],
            &sample(&format!("{id}{i}"), &to),
        );
    }
    let port = dead.port.to_string();
    let (out, err) = ok(&relay(
        md.root(),
        &[
            "--once",
            "--dns",
            &dns.addr,
            "--port",
            &port,
            "--timeout",
            "2",
        ],
    ));
    assert!(
        out.contains("10 delivered, 10 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert_eq!(live.messages().len(), 10);
    assert_eq!(list(md.new_dir()).len(), 10);
    assert_eq!(list(md.cur_dir()).len(), 10);
    for f in list(md.new_dir()) {
        let t = std::fs::read_to_string(f).unwrap();
        assert!(t.contains("@dead.test>"), "only dead.test mail is left");
    }
}

/// A server that reads message data in bursts (pauses until the relay's writes block, then
/// takes everything queued at once): when the socket drains completely while the relay holds a
/// full output buffer, the relay must go on writing the body at once. Readiness is
/// edge-triggered: a relay that stopped there (the body waiting for a writable event that
/// never comes) timed out mid-message, a stall seen once in CI.
#[test]
fn bursty_reader_gets_the_whole_message() {
    let ip = "127.0.22.12";
    let sink = BrokenSink::start(&[ip], "bursty-data");
    let (_d, md) = temp_maildir();
    let _q = queue_two(&md, 16 << 20);
    let host = format!("{ip}:{}", sink.port);
    let (out, err) = ok(&relay(md.root(), &relay_args(&host, "10")));
    assert!(
        out.contains("3 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert!(list(md.new_dir()).is_empty());
}

/// The server stops reading in the middle of an 8 MiB message: the relay's writes block, and
/// `--timeout` must still end the attempt (RFC 5321 §4.5.3.2.5, data block timeout).
#[test]
fn stops_reading_mid_data() {
    let ip = "127.0.22.6";
    let broken = BrokenSink::start(&[ip], "stall-mid-data");
    let (_d, md) = temp_maildir();
    let q = queue_two(&md, 8 << 20);
    let host = format!("{ip}:{}", broken.port);
    let mut child = integration_tests::relay::spawn_relay(md.root(), &relay_args(&host, "2"));
    let t0 = Instant::now();
    let mut status = None;
    let end = t0 + Duration::from_secs(20);
    while Instant::now() < end {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        status.is_some(),
        "smtp-relay still running {:?} after the sink stopped reading (--timeout 2)\nstderr: {}",
        t0.elapsed(),
        text(&out.stderr)
    );
    let took = t0.elapsed();
    let out = Output {
        status: status.unwrap(),
        ..out
    };
    assert_all_deferred(&md, &q, &out, &["timeout"], 1);
    assert!(took < Duration::from_secs(10), "{took:?}");
    let port = broken.port;
    drop(broken);
    assert_delivered_later(&md, &q, ip, port);
}
