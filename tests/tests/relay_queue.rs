//! smtp-relay's scheduling (issue 10, items 7, 8 and 11): a slow MX host holds up only its own
//! mail while the daemon keeps sending to the others; a stop signal ends a run or a daemon in
//! bounded time with the sessions in progress closed and their messages deferred and recorded;
//! a 4xx at the first MX host sends the recipient to the next one in the same run, within
//! Postfix's limits (5 MX addresses, 2 sessions that answered); a daemon fed two bursts through
//! smtpd, the second while the first is being sent, sends each message once. Each test uses its
//! own 127.0.27.x addresses.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::relay::{
    BrokenSink, Daemon, Dns, Sink, queue, queue_sample, relay, sample, spawn_relay, temp_maildir,
};
use integration_tests::relay::{relay_ok as ok, state_of, text};
use integration_tests::{Smtpd, have, list, wait_for};

/// `--interval`: while a session to a slow MX host (a greeting trickling one byte a second,
/// forever) is in progress, mail for another host that arrives meanwhile is sent at once, not
/// after the slow session. Then SIGTERM: the daemon exits 0 within 10 s although the slow
/// session is still going, and the slow host's message is deferred and recorded, not lost.
#[test]
fn slow_mx_holds_up_only_its_own_mail_and_sigterm_ends_it() {
    let Some(dns) = Dns::start(
        &["slow.test,mx.slow.test,10", "fast.test,mx.fast.test,10"],
        &["mx.slow.test,127.0.27.2", "mx.fast.test,127.0.27.3"],
    ) else {
        return;
    };
    let slow = BrokenSink::start(&["127.0.27.2"], "trickle-greeting");
    let fast = Sink::start_on(&["127.0.27.3"], slow.port, &[]);
    let (_d, md) = temp_maildir();
    let stuck = queue_sample(&md, "s1", "u@slow.test");
    let port = slow.port.to_string();
    let mut d = Daemon::start(
        md.root(),
        &[
            "--interval",
            "3600",
            "--dns",
            &dns.addr,
            "--port",
            &port,
            "--timeout",
            "60",
            "--helo",
            "relay.test",
        ],
    );
    wait_for("a session to the slow MX", Duration::from_secs(15), || {
        slow.connections() == 1
    });
    let sent = queue_sample(&md, "f1", "v@fast.test");
    wait_for(
        "the fast MX to get its mail during the slow session",
        Duration::from_secs(20),
        || fast.messages().len() == 1,
    );
    wait_for(
        "the fast message to be recorded",
        Duration::from_secs(10),
        || list(md.cur_dir()).len() == 1,
    );
    assert!(
        !slow.closed(),
        "the slow session was still in progress: {}",
        d.log()
    );
    assert_eq!(fast.messages()[0].3, vec!["<v@fast.test>".to_string()]);
    assert!(
        list(md.cur_dir())[0]
            .to_string_lossy()
            .contains(&format!("{sent}:2,P"))
    );
    let summary = "1 delivered, 0 deferred, 0 bounced (1 of 2 messages tried, 0 not due, 0 file(s) in new/ not queued messages, 1 already in progress";
    wait_for("the fast pass's summary", Duration::from_secs(10), || {
        d.count(summary) == 1
    });

    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.log());
    eprintln!("stopped {:?} after SIGTERM", t0.elapsed());
    wait_for("the end of the log", Duration::from_secs(10), || {
        d.count("stop signal: exiting") == 1
    });
    assert!(
        d.count("to=<u@slow.test>, relay=mx.slow.test[127.0.27.2]") == 1
            && d.count("status=deferred (mx.slow.test[127.0.27.2:") == 1
            && d.count("smtp-relay is stopping") >= 1,
        "{}",
        d.log()
    );
    assert!(d.count("interrupted by a stop signal") == 1, "{}", d.log());
    assert_eq!(list(md.new_dir()), vec![md.new_dir().join(&stuck)]);
    let st = state_of(&md, &stuck);
    assert!(st.contains("attempts 1\n"), "{st}");
    assert!(st.contains("rcpt 0 deferred "), "{st}");
    // The lock is free again.
    let (listing, _) = ok(&relay(md.root(), &["--list"]));
    assert!(listing.contains("<u@slow.test> deferred ("), "{listing}");
}

/// `--once` handles SIGTERM like the daemon: the session in progress is closed, its messages
/// are deferred and recorded, the summary line says so, exit 0 within 10 s; a later `--now` run
/// delivers everything once.
#[test]
fn once_run_stops_on_sigterm_and_loses_nothing() {
    let ip = "127.0.27.4";
    let slow = BrokenSink::start(&[ip], "trickle-greeting");
    let (_d, md) = temp_maildir();
    let names: Vec<String> = (0..2)
        .map(|i| {
            let to = format!("u{i}@far.test");
            queue(
                &md,
                "<s@src.test>",
                &[&format!("<{to}>")],
                &sample(&format!("o{i}"), &to),
            )
        })
        .collect();
    let host = format!("{ip}:{}", slow.port);
    let args = [
        "--once",
        "--smarthost",
        &host,
        "--timeout",
        "60",
        "--helo",
        "relay.test",
    ];
    let mut child = spawn_relay(md.root(), &args);
    wait_for(
        "a session to the slow host",
        Duration::from_secs(15),
        || slow.connections() == 1,
    );
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut status = None;
    wait_for("smtp-relay to exit", Duration::from_secs(10), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).expect("stdout");
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).expect("stderr");
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out}\n{err}");
    assert!(
        out.contains("0 delivered, 2 deferred, 0 bounced")
            && out.contains("interrupted by a stop signal"),
        "{out}\n{err}"
    );
    assert_eq!(list(md.new_dir()).len(), 2);
    for n in &names {
        let st = state_of(&md, n);
        assert!(
            st.contains("attempts 1\n") && st.contains("rcpt 0 deferred "),
            "{st}"
        );
        assert!(st.contains("smtp-relay is stopping"), "{st}");
    }
    let port = slow.port;
    drop(slow);
    let sink = Sink::start_on(&[ip], port, &[]);
    let mut a = args.to_vec();
    a.push("--now");
    let (out, err) = ok(&relay(md.root(), &a));
    assert!(out.contains("2 delivered, 0 deferred"), "{out}\n{err}");
    assert_eq!(sink.messages().len(), 2, "each message once");
    assert!(list(md.new_dir()).is_empty());
}

/// RFC 5321 §5.1 and Postfix: a 4xx from the first MX host to RCPT or to MAIL FROM is not the
/// end of the run's attempt; the next MX host gets the recipients and takes them.
#[test]
fn soft_failure_at_first_mx_goes_to_the_next() {
    let Some(dns) = Dns::start(
        &["soft.test,mx1.soft.test,10", "soft.test,mx2.soft.test,20"],
        &["mx1.soft.test,127.0.27.5", "mx2.soft.test,127.0.27.6"],
    ) else {
        return;
    };
    let first = Sink::start(
        &["127.0.27.5"],
        &[
            "--code",
            "u@soft.test=451",
            "--mail-code",
            "later@src.test=451",
        ],
    );
    let second = Sink::start_on(&["127.0.27.6"], first.port, &[]);
    let (_d, md) = temp_maildir();
    queue(
        &md,
        "<s@src.test>",
        &["<u@soft.test>", "<w@soft.test>"],
        &sample("t1", "u@soft.test"),
    );
    queue(
        &md,
        "<later@src.test>",
        &["<x@soft.test>"],
        &sample("t2", "x@soft.test"),
    );
    let port = first.port.to_string();
    let (out, err) = ok(&relay(
        md.root(),
        &[
            "--once",
            "--dns",
            &dns.addr,
            "--port",
            &port,
            "--timeout",
            "10",
        ],
    ));
    assert!(
        out.contains("3 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    // <w> went to the first host; <u>, refused there for now at RCPT, and <x>, whose sender
    // was refused for now at MAIL, to the second.
    let m1 = first.messages();
    let mut m2: Vec<Vec<String>> = second.messages().into_iter().map(|m| m.3).collect();
    m2.sort();
    assert_eq!(m1.len(), 1, "{err}");
    assert_eq!(m1[0].3, vec!["<w@soft.test>".to_string()]);
    assert_eq!(
        m2,
        vec![
            vec!["<u@soft.test>".to_string()],
            vec!["<x@soft.test>".to_string()]
        ],
        "{err}"
    );
    assert!(
        err.contains("to=<u@soft.test>, relay=mx1.soft.test[127.0.27.5]")
            && err.contains("trying the next MX host"),
        "{err}"
    );
    assert!(list(md.new_dir()).is_empty());
}

/// Postfix's `smtp_mx_session_limit = 2`: a recipient that gets 4xx everywhere is tried at two
/// hosts that answered, not at every MX host, then deferred.
#[test]
fn soft_failures_stop_after_two_sessions() {
    let Some(dns) = Dns::start(
        &[
            "busy.test,mx1.busy.test,10",
            "busy.test,mx2.busy.test,20",
            "busy.test,mx3.busy.test,30",
        ],
        &[
            "mx1.busy.test,127.0.27.7",
            "mx2.busy.test,127.0.27.8",
            "mx3.busy.test,127.0.27.9",
        ],
    ) else {
        return;
    };
    let sink = Sink::start(
        &["127.0.27.7", "127.0.27.8", "127.0.27.9"],
        &["--code", "u@busy.test=451"],
    );
    let (_d, md) = temp_maildir();
    let name = queue_sample(&md, "b1", "u@busy.test");
    let port = sink.port.to_string();
    let (out, err) = ok(&relay(
        md.root(),
        &[
            "--once",
            "--dns",
            &dns.addr,
            "--port",
            &port,
            "--timeout",
            "10",
        ],
    ));
    assert!(
        out.contains("0 delivered, 1 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    let mut addrs: Vec<String> = sink.connections().into_iter().map(|c| c.1).collect();
    addrs.sort();
    assert_eq!(addrs, vec!["127.0.27.7", "127.0.27.8"], "{err}");
    let st = state_of(&md, &name);
    assert!(st.contains("rcpt 0 deferred 451 4.1.1"), "{st}");
}

/// Postfix's `smtp_mx_address_limit = 5`: of seven MX hosts that all refuse at the greeting
/// (421, which does not count as a session), five are tried, then the mail is deferred.
#[test]
fn at_most_five_mx_addresses_are_tried() {
    let ips: Vec<String> = (10..17).map(|i| format!("127.0.27.{i}")).collect();
    let mx: Vec<String> = (0..7)
        .map(|i| format!("seven.test,mx{i}.seven.test,{}", 10 * (i + 1)))
        .collect();
    let hosts: Vec<String> = (0..7)
        .map(|i| format!("mx{i}.seven.test,{}", ips[i]))
        .collect();
    let mx: Vec<&str> = mx.iter().map(String::as_str).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let Some(dns) = Dns::start(&mx, &hosts) else {
        return;
    };
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let busy = BrokenSink::start(&ip_refs, "421-greeting");
    let (_d, md) = temp_maildir();
    queue_sample(&md, "v1", "u@seven.test");
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
            "10",
        ],
    ));
    assert!(
        out.contains("0 delivered, 1 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    let mut addrs: Vec<String> = busy
        .lines()
        .into_iter()
        .filter(|f| f[0] == "connect" && f.len() == 3)
        .map(|f| f[2].clone())
        .collect();
    addrs.sort();
    assert_eq!(addrs, ips[..5].to_vec(), "{err}");
}

/// `--interval` fed by a stream: two bursts of 100 messages from Postfix's smtp-source through
/// smtpd, the second while the daemon is still sending the first (the sink takes 50 ms a
/// message), so a scan runs while a pass is in flight and must skip its messages; every message
/// reaches the sink exactly once and ends in `cur/`.
#[test]
fn interval_daemon_under_a_stream_sends_each_message_once() {
    if !have("/usr/sbin/smtp-source") {
        return;
    }
    let sink = Sink::start(&["127.0.27.20"], &["--dot-delay", "0.05"]);
    let smtpd = Smtpd::start(&[]);
    let host = format!("127.0.27.20:{}", sink.port);
    let d = Daemon::start(
        &smtpd.maildir,
        &[
            "--interval",
            "3600",
            "--smarthost",
            &host,
            "--timeout",
            "10",
            "--tls",
            "none",
        ],
    );
    wait_for("the first (empty) pass", Duration::from_secs(10), || {
        d.count("smtp-relay: 0 delivered") >= 1
    });
    let burst = || {
        let out = Command::new("/usr/sbin/smtp-source")
            .args(["-s", "5", "-m", "100"])
            .args(["-f", "sender@example.org", "-t", "rcpt@far.test"])
            .arg(smtpd.addr.to_string())
            .output()
            .expect("run smtp-source");
        assert!(
            out.status.success(),
            "smtp-source failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    };
    burst();
    wait_for(
        "the first burst to be on its way",
        Duration::from_secs(20),
        || !sink.messages().is_empty(),
    );
    burst();
    let cur = smtpd.maildir.join("cur");
    wait_for(
        "every message relayed and recorded",
        Duration::from_secs(90),
        || smtpd.new_files().is_empty() && list(&cur).len() == 200,
    );
    // Nothing is left in new/, so no later pass can send anything again.
    assert_eq!(sink.messages().len(), 200, "each message once");
    // The log reaches us through the logging thread and a pipe: wait for the lines first.
    wait_for("the delivery log lines", Duration::from_secs(10), || {
        d.count("status=sent") >= 200
    });
    assert_eq!(d.count("status=sent"), 200, "{}", d.log());
    assert_eq!(d.count("status=deferred"), 0, "{}", d.log());
    wait_for("the passes' summaries", Duration::from_secs(10), || {
        d.count("already in progress") >= 1
    });
}
