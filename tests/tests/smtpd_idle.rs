//! smtpd holding many idle connections, and a client that never reads (issue 3, acceptance
//! item 5; DESIGN.md principle 4: one client never delays another). Its own test binary so
//! the latency figures are not disturbed by the other smtpd tests.

use integration_tests::smtp::{Client, percentile, poll_readable, raise_nofile, server_log, start};
use std::io::{ErrorKind, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The two tests here run one after the other, so each measures the server alone.
static ALONE: Mutex<()> = Mutex::new(());

const IDLE: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn thousand_idle_connections_are_kept_until_their_timeout_while_another_client_works() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let nofile = raise_nofile();
    assert!(
        nofile > IDLE as u64 + 100,
        "open files limit {nofile} too low"
    );
    let s = start(&["--timeout", "10", "--max-connections", "5000"]);

    let t_open = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    let mut opened = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        opened.push(Instant::now());
        idle.push(Client::connect(s.addr));
    }
    for c in &mut idle {
        c.expect_reply("220 ");
    }
    let open_took = t_open.elapsed();

    let mut a = Client::greeted(s.addr);
    a.expect("EHLO active.test", "250");
    let mut lat = Vec::with_capacity(100);
    let t_active = Instant::now();
    for i in 0..100 {
        let t = Instant::now();
        a.send_mail(
            "sender@example.org",
            &["rcpt@example.com"],
            format!("Subject: active {i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
        lat.push(t.elapsed());
    }
    let active_took = t_active.elapsed();
    a.expect("QUIT", "221 2.0.0");
    assert_eq!(s.new_files().len(), 100, "{}", server_log(&s));

    // While the active client worked, no idle connection heard anything (they are idle for
    // less than TIMEOUT so far).
    let fds: Vec<i32> = idle.iter().map(Client::fd).collect();
    let early = poll_readable(&fds, Instant::now());
    let now = Instant::now();
    for (i, seen) in early.iter().enumerate() {
        if seen.is_some() && now - opened[i] < TIMEOUT {
            let c = &mut idle[i];
            let r = c.try_reply_until(Instant::now() + Duration::from_secs(1));
            c.fail(&format!(
                "idle connection {i} cut after {:?}, before its {TIMEOUT:?} timeout: {r:?}",
                now - opened[i]
            ));
        }
    }

    // Then each one gets its 421 4.4.2, never before TIMEOUT after it was opened.
    let seen = poll_readable(&fds, opened[0] + TIMEOUT + Duration::from_secs(10));
    let mut waits = Vec::with_capacity(IDLE);
    let mut early = Vec::new();
    for (i, at) in seen.iter().enumerate() {
        let c = &mut idle[i];
        let Some(at) = at else {
            c.fail(&format!(
                "idle connection {i} not timed out after {TIMEOUT:?} + 10 s"
            ))
        };
        let waited = *at - opened[i];
        if waited < TIMEOUT {
            early.push((i, waited));
        }
        waits.push(waited);
        c.expect_reply("421 4.4.2");
    }
    waits.sort();
    lat.sort();
    eprintln!(
        "{IDLE} idle connections opened and greeted in {open_took:.2?}; 100 transactions \
         (MAIL..250 queued, durable) by another client in {active_took:.2?}: latency p50 \
         {:.2?}, p99 {:.2?}, max {:.2?}; idle ones cut after {:.3?}..{:.3?}",
        percentile(&lat, 50),
        percentile(&lat, 99),
        lat[lat.len() - 1],
        waits[0],
        waits[waits.len() - 1]
    );
    assert!(
        active_took < TIMEOUT,
        "100 transactions took {active_took:?} while {IDLE} connections were idle"
    );
    if let Some(&(i, waited)) = early.iter().min_by_key(|(_, w)| *w) {
        idle[i].fail(&format!(
            "{} of {IDLE} idle connections got 421 less than {TIMEOUT:?} after connect() was \
             called (earliest: connection {i}, after {waited:?}); first: {:?}",
            early.len(),
            early[0]
        ));
    }
}

#[test]
fn a_client_that_never_reads_is_bounded_and_delays_no_one() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let s = start(&[]);
    let mut hog = Client::greeted(s.addr);
    hog.expect("EHLO hog.test", "250");
    // Pipeline NOOPs without reading a single reply, until the server stops reading us.
    let chunk = b"NOOP\r\n".repeat(10_000);
    let cap = 256 * 1024 * 1024;
    hog.stream.set_nonblocking(true).expect("nonblocking");
    let mut sent = 0usize;
    let mut stalled_since: Option<Instant> = None;
    let t = Instant::now();
    while sent < cap {
        match hog.stream.write(&chunk) {
            Ok(n) => {
                sent += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
                std::thread::yield_now();
            }
            Err(e) => panic!(
                "hog write failed after {sent} octets: {e}\n{}",
                server_log(&s)
            ),
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "still writing after 60 s ({sent} octets)"
        );
    }
    assert!(
        sent < cap,
        "the server read {sent} octets of commands without our reading one reply: \
         its output is not bounded"
    );

    // Meanwhile another client is served promptly.
    let mut a = Client::greeted(s.addr);
    a.expect("EHLO polite.test", "250");
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        a.send_mail(
            "sender@example.org",
            &["rcpt@example.com"],
            format!("Subject: polite {i}\r\n\r\nok\r\n").as_bytes(),
        );
        worst = worst.max(t.elapsed());
    }
    a.expect("QUIT", "221 2.0.0");
    assert!(
        worst < Duration::from_secs(2),
        "a transaction took {worst:?} beside a client that does not read"
    );
    eprintln!(
        "client that never reads: server stopped reading after {} KiB of NOOPs; \
         another client's worst transaction {worst:.2?}",
        sent / 1024
    );
    // The hog's first replies are still the right ones.
    hog.stream.set_nonblocking(false).expect("blocking");
    for _ in 0..3 {
        hog.expect_reply("250 2.0.0");
    }
}
