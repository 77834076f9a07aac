//! smtpd idle timeouts with `--timeout 2` (issue 3, acceptance item 6): `421 4.4.2` no earlier
//! than 2 s and no later than 3 s after the server began to wait for a line. The sleeps here
//! keep a client idle or slow on purpose: that is what is under test, not synchronisation.

use integration_tests::smtp::{Client, HOST, server_log, start};
use integration_tests::{Smtpd, list, wait_for};
use std::thread::sleep;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(2);
const LATEST: Duration = Duration::from_secs(3);

fn server() -> Smtpd {
    start(&["--timeout", "2"])
}

/// Expects the timeout reply and the close. `not_before`: the server cannot have started
/// waiting earlier than this; `not_after`: it had certainly started waiting by then.
fn expect_timeout(c: &mut Client, not_before: Instant, not_after: Instant) -> Duration {
    let r = match c.try_reply_until(not_after + LATEST + Duration::from_secs(2)) {
        Ok(r) => r,
        Err(e) => c.fail(&format!("no timeout reply: {e}")),
    };
    let at = Instant::now();
    if !r.starts(&format!("421 4.4.2 {HOST}")) {
        c.fail("expected 421 4.4.2 <host> Error: timeout exceeded");
    }
    assert!(
        r.last().contains("timeout exceeded"),
        "text of {:?}",
        r.last()
    );
    let waited = at - not_before;
    if waited < LIMIT {
        c.fail(&format!("421 after {waited:?}, earlier than {LIMIT:?}"));
    }
    let late = at - not_after;
    if late > LATEST {
        c.fail(&format!("421 after {late:?}, later than {LATEST:?}"));
    }
    c.expect_close(Duration::from_secs(2));
    late
}

#[test]
fn idle_client_gets_421_between_2_and_3_seconds() {
    let s = server();
    let before = Instant::now();
    let mut c = Client::connect(s.addr);
    c.expect_reply("220 ");
    let greeted = Instant::now();
    let took = expect_timeout(&mut c, before, greeted);
    eprintln!("idle after greeting: 421 {took:.2?} after the greeting");
}

#[test]
fn each_command_restarts_the_clock() {
    let s = server();
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO slow.test", "250");
    // 1.5 s + 1.5 s idle: more than the timeout in all, less between two commands.
    sleep(Duration::from_millis(1500));
    c.expect("NOOP", "250 2.0.0");
    sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    expect_timeout(&mut c, sent, Instant::now());
}

#[test]
fn slow_but_steady_data_is_not_cut() {
    let s = server();
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO steady.test", "250");
    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    c.expect("RCPT TO:<rcpt@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: steady\r\n\r\n");
    // One line every 1.2 s: the whole DATA phase (4.8 s) is longer than the timeout, each
    // wait for a line is not.
    for k in 0..4 {
        sleep(Duration::from_millis(1200));
        c.send(format!("line {k}\r\n").as_bytes());
    }
    c.send(b".\r\n");
    c.expect_reply("250 2.0.0");
    c.expect("QUIT", "221 2.0.0");
    assert_eq!(s.new_files().len(), 1, "{}", server_log(&s));
}

#[test]
fn client_silent_in_data_gets_421_and_nothing_is_stored() {
    let s = server();
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO silent.test", "250");
    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    c.expect("RCPT TO:<rcpt@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    let before = Instant::now();
    c.send(b"Subject: cut\r\n\r\nhalf a li");
    expect_timeout(&mut c, before, Instant::now());
    assert!(s.new_files().is_empty(), "a timed-out message is in new/");
    wait_for("tmp/ to be emptied", Duration::from_secs(5), || {
        list(&s.maildir.join("tmp")).is_empty()
    });
}

#[test]
fn a_command_line_trickled_byte_by_byte_is_cut_at_the_timeout() {
    let s = server();
    let before = Instant::now();
    let mut c = Client::connect(s.addr);
    c.expect_reply("220 ");
    let greeted = Instant::now();
    // "NOOP" one octet every 0.45 s, never finished: the wait for this line started at the
    // greeting, and partial input does not restart it.
    for b in b"NOOP" {
        sleep(Duration::from_millis(450));
        c.send(std::slice::from_ref(b));
    }
    expect_timeout(&mut c, before, greeted);
}
