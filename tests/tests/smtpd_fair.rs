//! smtpd fairness (issue 10 item 12): clients that stream without pause (an endless command
//! line, DATA past `--max-size`) must not keep the reactor from the others. In its own test
//! binary so that no other test disturbs the latency measured.

use integration_tests::smtp::{Client, server_log, start};
use integration_tests::wait_for;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The slowest of `n` NOOP round trips, or an error if one took longer than `limit`.
fn slowest_noop(c: &mut Client, n: usize, limit: Duration) -> Result<Duration, String> {
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        c.line("NOOP");
        let r = c.try_reply_until(t + limit)?;
        if !r.starts("250 2.0.0") {
            return Err(format!("NOOP answered {:?}", r.last()));
        }
        worst = worst.max(t.elapsed());
    }
    Ok(worst)
}

#[test]
fn streaming_clients_do_not_freeze_a_probe() {
    let s = start(&["--max-size", "100000"]);
    let mut probe = Client::greeted(s.addr);
    probe.expect("EHLO probe.test", "250");
    let idle = slowest_noop(&mut probe, 20, Duration::from_secs(15)).expect("idle server");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut streamers = Vec::new();
    // One streams a command line that never ends, one streams DATA past --max-size.
    for prologue in [
        &b"EHLO endless.test\r\nNOOP "[..],
        b"EHLO data.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    ] {
        let mut stream = TcpStream::connect(s.addr).expect("connect streamer");
        let (stop, sent) = (stop.clone(), sent.clone());
        let chunk: Vec<u8> = if prologue.ends_with(b"NOOP ") {
            vec![b'x'; 64 * 1024]
        } else {
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
                .repeat(900)
        };
        streamers.push(std::thread::spawn(move || {
            if stream.write_all(prologue).is_err() {
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&chunk).is_err() {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    // Streaming is under way (the server has taken megabytes) before the probe measures.
    wait_for(
        "the streamers to push 16 MiB",
        Duration::from_secs(60),
        || sent.load(Ordering::Relaxed) > 16 << 20,
    );
    // The probe goes on (rounds of 20 NOOPs, the slowest kept) until the streamers have pushed
    // another MiB meanwhile: on a loaded machine 20 NOOPs can finish before a streamer thread
    // runs at all, and such a measurement would not be "while others stream".
    let before = sent.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(60);
    let mut busy = Ok(Duration::ZERO);
    while let Ok(worst) = busy {
        busy = slowest_noop(&mut probe, 20, Duration::from_secs(10)).map(|w| w.max(worst));
        if sent.load(Ordering::Relaxed) - before >= 1 << 20 || Instant::now() > until {
            break;
        }
    }
    let during = sent.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let log = server_log(&s);
    drop(s); // Unblocks the streamers' writes.
    for t in streamers {
        let _ = t.join();
    }
    let busy = busy.unwrap_or_else(|e| panic!("probe starved while others stream: {e}\n{log}"));
    eprintln!(
        "NOOP round trip: idle {idle:?}, while streaming {busy:?} ({during} octets streamed meanwhile)"
    );
    assert!(during > 0, "the streamers stopped during the measurement");
    // Generous: an idle server answers in well under a millisecond; the old reactor took
    // seconds while a streamer kept it busy.
    assert!(
        busy < idle + Duration::from_secs(1),
        "NOOP took {busy:?} while others streamed (idle: {idle:?})\n{log}"
    );
}
