//! The delay proxy (`smtp-stress proxy`, issue 15), the real binary on loopback: the round trip
//! it adds to SMTP commands against the real smtpd (on one connection and on fifty at once),
//! bytes identical both ways with the end of
//! stream passed on after the data (and half-closed connections still carrying the other way),
//! bounded buffering in front of a peer that stops reading, an unreachable target, and the
//! loopback-only listener.

use integration_tests::proxy::Proxy;
use integration_tests::smtp::{self, Client};
use integration_tests::{bin, free_port, wait_for};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most a round trip may exceed twice the delay on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

#[test]
fn noop_round_trips_to_smtpd_take_twice_the_delay() {
    let s = smtp::start(&[]);
    let delay = Duration::from_millis(20);
    let p = Proxy::start("20ms", s.addr, &[]);
    let t0 = Instant::now();
    let mut c = Client::connect(p.addr);
    c.expect_reply("220 ");
    // The greeting travels server to client once: at least one delay.
    assert!(t0.elapsed() >= delay, "greeting after {:?}", t0.elapsed());
    c.expect("EHLO proxy.test", "250");
    let mut rtts = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        c.expect("NOOP", "250 2.0.0");
        rtts.push(t.elapsed());
    }
    eprintln!("NOOP round trips through a 20 ms proxy: {rtts:?}");
    for rtt in &rtts {
        assert!(
            *rtt >= 2 * delay,
            "a NOOP round trip took {rtt:?}: {rtts:?}"
        );
        assert!(
            *rtt < 2 * delay + SLACK,
            "a NOOP round trip took {rtt:?}: {rtts:?}"
        );
    }
    // Pipelined commands cost one round trip together, not one each.
    let t = Instant::now();
    c.send(b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n");
    for _ in 0..4 {
        c.expect_reply("250 2.0.0");
    }
    assert!(t.elapsed() >= 2 * delay, "{:?}", t.elapsed());
    assert!(
        t.elapsed() < 4 * 2 * delay,
        "4 pipelined NOOPs took {:?}",
        t.elapsed()
    );
    // smtpd's close after QUIT reaches the client as an end of stream.
    c.expect("QUIT", "221");
    c.expect_close(Duration::from_secs(10));
    // Half-closed until the client closes too: then the proxy closes both sides.
    assert!(!p.log().contains(" closed;"), "{}", p.log());
    drop(c);
    wait_for(
        "the proxy to log the close",
        Duration::from_secs(10),
        || p.log().contains(" closed;"),
    );
}

#[test]
fn fifty_connections_wait_out_the_delay_together() {
    let s = smtp::start(&[]);
    let delay = Duration::from_millis(20);
    let p = Proxy::start("20ms", s.addr, &[]);
    let mut clients: Vec<Client> = (0..50).map(|_| Client::connect(p.addr)).collect();
    for c in &mut clients {
        c.expect_reply("220 ");
    }
    // One NOOP on every connection, then every reply: the delays overlap, so the whole round
    // costs about one round trip, not fifty.
    let t = Instant::now();
    for c in &mut clients {
        c.line("NOOP");
    }
    for c in &mut clients {
        c.expect_reply("250 2.0.0");
    }
    let took = t.elapsed();
    assert!(took >= 2 * delay, "{took:?}");
    // Fifty round trips one after the other: 2 s.
    assert!(
        took < Duration::from_millis(1500),
        "50 concurrent NOOPs took {took:?}"
    );
    for c in &mut clients {
        c.expect("QUIT", "221");
    }
    drop(clients);
    wait_for("the proxy to close all 50", Duration::from_secs(10), || {
        p.log().matches(" closed;").count() == 50
    });
}

/// A peer that echoes what it reads, records it, and after the end of stream writes `TRAILER`
/// (the client's half-closed connection must still carry it) and shuts down its writing half.
/// Sends (bytes read, when the end of stream was read) once done.
fn echo_server() -> (SocketAddr, mpsc::Receiver<(Vec<u8>, Instant)>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
    let addr = l.local_addr().expect("local addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
        let eof_at = Instant::now();
        let _ = s.write_all(TRAILER);
        let _ = s.shutdown(Shutdown::Write);
        let _ = tx.send((got, eof_at));
    });
    (addr, rx)
}

const TRAILER: &[u8] = b"written after the client's end of stream";

/// Bytes from a small generator (xorshift), so a reordering or a lost chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn bytes_identical_both_ways_and_end_of_stream_after_the_data() {
    let (echo, done) = echo_server();
    let delay = Duration::from_millis(10);
    // A 1 MiB bound with 6 MiB to move: reading pauses and resumes on the way.
    let p = Proxy::start("10ms", echo, &["--buffer", "1048576"]);
    let data = pattern(6 * 1024 * 1024 + 12_345);
    let mut c = TcpStream::connect(p.addr).expect("connect to the proxy");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut w = c.try_clone().expect("clone the client socket");
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        // Writes of every size from 1 octet to 64 KiB, then the end of stream.
        let (mut at, mut n) = (0, 1);
        while at < sent.len() {
            let end = (at + n).min(sent.len());
            w.write_all(&sent[at..end]).expect("write to the proxy");
            at = end;
            n = n * 7 % 65_521 + 1;
        }
        w.shutdown(Shutdown::Write)
            .expect("shut down the client's writing half");
        Instant::now()
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back)
        .expect("read back to the end of stream");
    let shut_at = writer.join().expect("writer thread");
    let (got, eof_at) = done
        .recv_timeout(Duration::from_secs(60))
        .expect("the echo server saw the end of stream");
    assert!(
        got == data,
        "the target got {} bytes, not the {} sent (or other ones)",
        got.len(),
        data.len()
    );
    let (echoed, trailer) = back.split_at(back.len().saturating_sub(TRAILER.len()));
    assert!(
        echoed == &data[..],
        "{} bytes came back, not the {} sent",
        echoed.len(),
        data.len()
    );
    assert_eq!(
        trailer, TRAILER,
        "the half-closed connection did not carry the trailer"
    );
    // The end of stream is delayed like the data.
    let eof_delay = eof_at.saturating_duration_since(shut_at);
    assert!(
        eof_delay >= delay,
        "the end of stream arrived {eof_delay:?} after the shutdown"
    );
    wait_for(
        "the proxy to log the close",
        Duration::from_secs(10),
        || {
            p.log().contains(&format!(
                "closed; {} bytes to the target, {} bytes back",
                data.len(),
                data.len() + TRAILER.len()
            ))
        },
    );
}

#[test]
fn a_target_that_stops_reading_bounds_what_the_proxy_holds() {
    // The target accepts and never reads.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = l.local_addr().expect("local addr");
    let p = Proxy::start("1ms", target, &[]);
    let mut c = TcpStream::connect(p.addr).expect("connect to the proxy");
    let _target_side = l.accept().expect("the proxy connects to the target");
    c.set_nonblocking(true).expect("non-blocking");
    let chunk = vec![b'x'; 256 * 1024];
    let mut written: usize = 0;
    let mut last_progress = Instant::now();
    // Write until nothing has moved for 2 s (everything between here and the target is full) or
    // 256 MiB went through (an unbounded proxy).
    while written < 256 << 20 && last_progress.elapsed() < Duration::from_secs(2) {
        match c.write(&chunk) {
            Ok(n) => {
                written += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5)); // polling interval, not a sync
            }
            Err(e) => panic!("write to the proxy: {e}"),
        }
    }
    // 4 MiB in the proxy plus the kernel's socket buffers on the way (a few MiB each).
    assert!(
        written < 64 << 20,
        "{} MiB written and still going",
        written >> 20
    );
    let rss = p.rss_kib();
    assert!(
        rss < 24 * 1024,
        "the proxy holds {rss} KiB after {} MiB",
        written >> 20
    );
}

#[test]
fn an_unreachable_target_closes_the_client() {
    let target: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .expect("address");
    let p = Proxy::start("5ms", target, &[]);
    let mut c = TcpStream::connect(p.addr).expect("connect to the proxy");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut buf = [0u8; 16];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    wait_for(
        "the proxy to log the failure",
        Duration::from_secs(10),
        || p.log().contains("connect to the target"),
    );
    // The proxy still serves the next connection.
    assert!(TcpStream::connect(p.addr).is_ok());
}

#[test]
fn listens_on_loopback_only_and_load_runs_still_parse() {
    let out = Command::new(bin("smtp-stress"))
        .args(["proxy", "--delay", "1ms", "0.0.0.0:0", "127.0.0.1:25"])
        .output()
        .expect("run smtp-stress proxy");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A load run's command line is unchanged: a closed port makes it fail to connect, not to
    // parse (exit 1 with a summary, not the usage error 2).
    let port = free_port("127.0.0.1");
    let out = Command::new(bin("smtp-stress"))
        .args(["--count", "1", "--connections", "1", "--reply-timeout", "5"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("run smtp-stress");
    assert_ne!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mismatches"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
