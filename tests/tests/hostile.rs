//! Hostile clients and store faults against the real smtpd binary (issue 6): slowloris,
//! connection limits, descriptor exhaustion, garbage and oversized input, a full or read-only
//! or removed Maildir, and SIGKILL at random instants under load.
//!
//! The tests run one at a time (a shared lock) so that the latency and CPU figures are not
//! disturbed by each other. `HOSTILE_LONG=1` selects the long variants: 2,000 slowloris
//! connections instead of 200, and 25 SIGKILL rounds instead of 3.
//!
//! Mounting tmpfs needs root (CAP_SYS_ADMIN); where mounting is refused the full-disk and
//! read-only tests say so and fall back (see `Tmpfs`).

use integration_tests::smtp::{Client, HOST, parse_stored, raise_nofile, server_log, start};
use integration_tests::{Smtpd, list, wait_for};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// One hostile test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn long() -> bool {
    std::env::var_os("HOSTILE_LONG").is_some_and(|v| v != "0" && !v.is_empty())
}

fn pid(s: &Smtpd) -> u32 {
    s.child.id()
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &text[text.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn alive(s: &mut Smtpd) -> bool {
    s.child.try_wait().expect("try_wait").is_none()
}

/// A small message body (CRLF lines, no leading dots).
fn small_body(tag: &str) -> Vec<u8> {
    format!("Subject: {tag}\r\n\r\nhello from {tag}\r\n").into_bytes()
}

/// One whole transaction on a new connection; returns its duration.
fn transaction(s: &Smtpd, tag: &str) -> Duration {
    let t = Instant::now();
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO normal.test", "250");
    c.send_mail("a@x.test", &["b@y.test"], &small_body(tag));
    c.expect("QUIT", "221");
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    eprintln!(
        "  {} transactions: min {:?}, p50 {:?}, p90 {:?}, max {:?}",
        v.len(),
        v[0],
        v[v.len() / 2],
        v[v.len() * 9 / 10],
        v[v.len() - 1]
    );
    v[v.len() / 2]
}

/// After DATA: either `354` (then the body is sent and the final reply returned) or an
/// immediate refusal (returned as is).
fn data_reply(c: &mut Client, body: &[u8]) -> String {
    let r = c.cmd("DATA");
    if r.code != 354 {
        return r.status();
    }
    c.send(body);
    c.send(b".\r\n");
    c.reply().status()
}

fn try_transaction(c: &mut Client, body: &[u8]) -> String {
    c.expect("MAIL FROM:<a@x.test>", "250 2.1.0");
    c.expect("RCPT TO:<b@y.test>", "250 2.1.5");
    data_reply(c, body)
}

// ---------------------------------------------------------------------------------------------
// Slow and abusive clients
// ---------------------------------------------------------------------------------------------

/// Slowloris: many connections that send one byte per second. They must time out as configured
/// (421 4.4.2), smtpd's memory must stay bounded, and a normal client must not be slowed down
/// beyond 2x.
#[test]
fn slowloris_connections_time_out_and_do_not_slow_others() {
    let _g = serial();
    let (n, timeout) = if long() { (2000, 10u64) } else { (200, 3u64) };
    raise_nofile();
    // --no-fsync: the figure compared is the reactor's latency, which is what slow clients
    // could hurt; fsync times on this shared disk vary by far more than 2x from run to run.
    let s = start(&["--timeout", &timeout.to_string(), "--no-fsync"]);
    let p = pid(&s);

    // Unloaded latency (measured before the load and again after it; the lower is kept).
    for i in 0..5 {
        transaction(&s, &format!("warm {i}"));
    }
    let unloaded = median((0..30).map(|i| transaction(&s, &format!("u{i}"))).collect());
    let rss0 = status_kib(p, "VmRSS");

    // The slow clients.
    let mut socks = Vec::with_capacity(n);
    let mut opened = Vec::with_capacity(n);
    for _ in 0..n {
        let st = TcpStream::connect(s.addr).expect("slowloris connect");
        st.set_nodelay(true).unwrap();
        socks.push(st);
        opened.push(Instant::now());
    }
    // Take every greeting, so that the next readability is the 421 (or the close).
    for (i, st) in socks.iter_mut().enumerate() {
        st.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut greeting = Vec::new();
        let mut b = [0u8; 1];
        while !greeting.ends_with(b"\r\n") {
            match st.read(&mut b) {
                Ok(1) => greeting.push(b[0]),
                other => panic!("slow client #{i}: no greeting ({other:?})"),
            }
        }
        assert!(greeting.starts_with(b"220 "), "{greeting:?}");
    }
    let t0 = opened[0];
    let stop = Arc::new(AtomicBool::new(false));
    let drip = {
        let socks: Vec<TcpStream> = socks.iter().map(|s| s.try_clone().unwrap()).collect();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let text = b"EHLO slowloris.example.test\r\n";
            // One byte per second, while the connection should still be open.
            for k in 0..timeout as usize {
                for mut st in &socks {
                    let _ = st.write(&text[k % text.len()..k % text.len() + 1]);
                }
                let next = t0 + Duration::from_secs(k as u64 + 1);
                while Instant::now() < next {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    wait_for(
        "the slow clients to be accepted",
        Duration::from_secs(10),
        || open_fds(p) >= n,
    );

    // Loaded latency, while every slow client is connected.
    let mut loaded = Vec::new();
    let window = t0 + Duration::from_millis(timeout * 1000 - 700);
    let mut rss_peak = status_kib(p, "VmRSS");
    while loaded.len() < 30 && Instant::now() < window {
        loaded.push(transaction(&s, &format!("l{}", loaded.len())));
        rss_peak = rss_peak.max(status_kib(p, "VmRSS"));
    }
    assert!(
        loaded.len() >= 10,
        "only {} transactions in the window",
        loaded.len()
    );
    let loaded = median(loaded);

    // Every slow client gets 421 4.4.2 after `timeout` seconds (since its last line: none).
    let mut late = Vec::new();
    let mut wrong = Vec::new();
    let deadline = t0 + Duration::from_secs(timeout + 10);
    let fds: Vec<i32> = {
        use std::os::fd::AsRawFd;
        socks.iter().map(|s| s.as_raw_fd()).collect()
    };
    let seen = integration_tests::smtp::poll_readable(&fds, deadline);
    for (i, st) in socks.iter_mut().enumerate() {
        st.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = st.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        if !text.starts_with(&format!("421 4.4.2 {HOST} ")) {
            wrong.push(format!("#{i}: {text:?}"));
        }
        match seen[i] {
            Some(at) => {
                let after = at.duration_since(opened[i]);
                if after < Duration::from_millis(timeout * 1000 - 100)
                    || after > Duration::from_secs(timeout + 3)
                {
                    late.push(format!("#{i} after {after:?}"));
                }
            }
            None => late.push(format!("#{i} never closed")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    drip.join().unwrap();
    let hwm = status_kib(p, "VmHWM");
    let unloaded_after = median((0..30).map(|i| transaction(&s, &format!("a{i}"))).collect());
    let unloaded = unloaded.min(unloaded_after);
    eprintln!(
        "slowloris {n} x 1 byte/s, --timeout {timeout}: transaction median unloaded {unloaded:?}, \
         loaded {loaded:?}; VmRSS {rss0} KiB before, {rss_peak} KiB with {n} slow clients \
         ({} B/conn), VmHWM {hwm} KiB",
        (rss_peak.saturating_sub(rss0)) * 1024 / n as u64
    );
    assert!(
        wrong.is_empty(),
        "{} slow clients did not get 220 then 421 4.4.2: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(
        late.is_empty(),
        "{} slow clients not closed at the timeout: {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    // Bounded: at most 64 KiB per idle connection above the unloaded figure (plus slack).
    assert!(
        rss_peak <= rss0 + 64 * n as u64 + 8 * 1024,
        "RSS grew from {rss0} KiB to {rss_peak} KiB with {n} slow clients"
    );
    // 2x the unloaded median; 2 ms of slack for scheduler noise on a shared 2-core machine.
    assert!(
        loaded <= unloaded * 2 + Duration::from_millis(2),
        "normal transaction {loaded:?} under slowloris vs {unloaded:?} unloaded"
    );
    // Served normally afterwards.
    transaction(&s, "after");
}

/// Beyond --max-connections: 421 4.3.2; the admitted clients are still served, and a slot
/// freed is usable again.
#[test]
fn connections_beyond_max_connections_get_421_4_3_2() {
    let _g = serial();
    let s = start(&["--max-connections", "5"]);
    // start() made sure of smtpd with a connection of its own, closed at once: until smtpd has
    // seen that close it holds one of the five slots (it may accept several clients before it
    // next polls for events).
    wait_for(
        "the start-up probe's close",
        Duration::from_secs(10),
        || server_log(&s).contains("disconnect from"),
    );
    let mut held: Vec<Client> = (0..5).map(|_| Client::greeted(s.addr)).collect();
    for _ in 0..3 {
        let mut c = Client::connect(s.addr);
        c.expect_reply("421 4.3.2 ");
        c.expect_close(Duration::from_secs(5));
    }
    // The five admitted clients are served.
    for (i, c) in held.iter_mut().enumerate() {
        c.expect("EHLO held.test", "250");
        if i == 0 {
            c.send_mail("a@x.test", &["b@y.test"], &small_body("held"));
        } else {
            c.expect("NOOP", "250");
        }
    }
    assert_eq!(s.new_files().len(), 1);
    // A slot freed is usable again.
    let mut gone = held.pop().unwrap();
    gone.expect("QUIT", "221");
    gone.expect_close(Duration::from_secs(5));
    let mut ok = None;
    wait_for("a freed slot", Duration::from_secs(5), || {
        let mut c = Client::connect(s.addr);
        let r = c.reply();
        if r.code == 220 {
            ok = Some(c);
            true
        } else {
            false
        }
    });
    let mut c = ok.unwrap();
    c.expect("EHLO again.test", "250");
    c.send_mail("a@x.test", &["b@y.test"], &small_body("again"));
}

/// Beyond --max-per-ip for an untrusted client: 421 4.7.0; other addresses and the admitted
/// connections are still served.
#[test]
fn connections_beyond_max_per_ip_get_421_4_7_0() {
    let _g = serial();
    let s = start(&["--max-per-ip", "2", "--trust", "10.0.0.0/8"]);
    let local = Ipv4Addr::new(127, 0, 0, 1);
    // The start-up probe (a connect and close from 127.0.0.1) holds a slot until the server
    // has read its close: retry until each of the two is admitted.
    let admitted = || {
        let mut got = None;
        wait_for("an admitted connection", Duration::from_secs(10), || {
            let mut c = Client::connect_from(local, s.addr);
            if c.reply().code == 220 {
                got = Some(c);
            }
            got.is_some()
        });
        got.expect("admitted")
    };
    let mut a = admitted();
    let mut b = admitted();
    let mut third = Client::connect_from(local, s.addr);
    third.expect_reply("421 4.7.0 ");
    third.expect_close(Duration::from_secs(5));
    // Another address is served.
    let mut other = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), s.addr);
    other.expect_reply("220 ");
    other.expect("EHLO other.test", "250");
    other.expect("MAIL FROM:<a@x.test>", "250 2.1.0");
    // Untrusted: no relaying (the limit did not change that).
    other.expect("RCPT TO:<b@y.test>", "554 5.7.1");
    // The admitted ones are served.
    a.expect("EHLO a.test", "250");
    b.expect("NOOP", "250");
    b.expect("QUIT", "221");
    b.expect_close(Duration::from_secs(5));
    let mut ok = false;
    wait_for("a freed per-IP slot", Duration::from_secs(5), || {
        let mut c = Client::connect_from(local, s.addr);
        ok = c.reply().code == 220;
        ok
    });
}

/// Descriptors exhausted (RLIMIT_NOFILE lowered to 64 on the running server): accept errors
/// must not spin a core, admitted clients are still served, and service resumes once
/// descriptors are freed, for the connections left waiting in the backlog too.
#[test]
fn descriptor_exhaustion_is_survived_without_spinning() {
    let _g = serial();
    raise_nofile();
    let mut s = start(&[]);
    let p = pid(&s);
    let st = Command::new("prlimit")
        .args(["--pid", &p.to_string(), "--nofile=64:64"])
        .status()
        .expect("run prlimit");
    assert!(st.success(), "prlimit failed");
    let total = 120;
    let mut conns: Vec<Client> = (0..total).map(|_| Client::connect(s.addr)).collect();
    let greet_deadline = Instant::now() + Duration::from_secs(2);
    let mut greeted = Vec::new();
    let mut waiting = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        match c.try_reply_until(greet_deadline.max(Instant::now() + Duration::from_millis(20))) {
            Ok(r) if r.code == 220 => greeted.push(i),
            _ => waiting.push(i),
        }
    }
    assert!(
        !waiting.is_empty(),
        "all {total} connections accepted under a 64-descriptor limit (fds open: {})",
        open_fds(p)
    );
    // Not spinning: CPU time over one second while accepts keep failing.
    let tps = ticks_per_second();
    let c0 = cpu_ticks(p);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(p) - c0;
    eprintln!(
        "descriptor exhaustion: {} of {total} greeted, {} waiting; smtpd used {used}/{tps} ticks \
         of CPU in 1 s; {} fds open",
        greeted.len(),
        waiting.len(),
        open_fds(p)
    );
    assert!(
        used * 4 <= tps,
        "smtpd used {used} of {tps} ticks in 1 s while out of descriptors (spinning?)"
    );
    assert!(alive(&mut s), "smtpd died\n{}", server_log(&s));
    // An admitted client is still served.
    let first = greeted[0];
    conns[first].expect("EHLO admitted.test", "250");
    conns[first].expect("NOOP", "250");
    // Free descriptors: the admitted clients leave.
    for &i in &greeted {
        conns[i].line("QUIT");
    }
    for &i in &greeted {
        conns[i].expect_reply("221");
        conns[i].expect_close(Duration::from_secs(5));
    }
    // The connections that waited in the backlog are now greeted (up to what fits).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut served = 0;
    for &i in &waiting {
        if served >= 30 {
            break;
        }
        match conns[i].try_reply_until(deadline) {
            Ok(r) if r.code == 220 => {
                conns[i].expect("EHLO waited.test", "250");
                served += 1;
            }
            other => panic!(
                "connection #{i} left in the backlog after descriptors were freed: {other:?}\n{}",
                server_log(&s)
            ),
        }
    }
    drop(conns);
    // And a fresh client completes a transaction.
    let mut done = false;
    wait_for(
        "service after the descriptors freed",
        Duration::from_secs(10),
        || {
            let mut c = Client::connect(s.addr);
            if c.try_reply_until(Instant::now() + Duration::from_secs(2))
                .is_ok_and(|r| r.code == 220)
            {
                c.expect("EHLO fresh.test", "250");
                c.send_mail("a@x.test", &["b@y.test"], &small_body("fresh"));
                done = true;
            }
            done
        },
    );
    assert!(alive(&mut s));
}

/// NUL bytes and 8-bit bytes in commands: 500 5.5.2, and the session goes on.
#[test]
fn nul_and_8bit_bytes_in_commands() {
    let _g = serial();
    let s = start(&[]);
    let mut c = Client::greeted(s.addr);
    for (bytes, want) in [
        (&b"NO\0OP\r\n"[..], "500 5.5.2"),
        (b"\0\0\0\0\r\n", "500 5.5.2"),
        (b"EHLO a\0b.test\r\n", "500 5.5.2"),
        (b"EHLO h\xe9llo.test\r\n", "500 5.5.2"),
        (b"\xff\xfe\xfd\r\n", "500 5.5.2"),
        (b"NOOP\x80\r\n", "500 5.5.2"),
    ] {
        c.send(bytes);
        let r = c.reply();
        if r.status() != want {
            c.fail(&format!("{bytes:?}: got {:?}, want {want}", r.last()));
        }
    }
    c.expect("EHLO good.test", "250");
    for (bytes, want) in [
        (&b"MAIL FROM:<a\0@x.test>\r\n"[..], "500 5.5.2"),
        (b"MAIL FROM:<\xe9@x.test>\r\n", "500 5.5.2"),
        // Valid UTF-8 without SMTPUTF8: refused by policy, not as garbage.
        ("MAIL FROM:<é@x.test>\r\n".as_bytes(), "553 5.6.7"),
    ] {
        c.send(bytes);
        let r = c.reply();
        if r.status() != want {
            c.fail(&format!("{bytes:?}: got {:?}, want {want}", r.last()));
        }
    }
    c.expect("MAIL FROM:<a@x.test>", "250 2.1.0");
    c.send(b"RCPT TO:<b\0@y.test>\r\n");
    c.expect_reply("500 5.5.2");
    c.expect("RCPT TO:<b@y.test>", "250 2.1.5");
    // NUL and 8-bit bytes in the message itself are content: stored as sent.
    c.expect("DATA", "354");
    let body = b"Subject: bytes\r\n\r\nnul \0 here, 8-bit \xe9\xff\x80 there\r\n";
    c.send(body);
    c.send(b".\r\n");
    c.expect_reply("250 2.0.0");
    let st = parse_stored(&s.new_files()[0]).unwrap();
    assert_eq!(st.body, body);
}

/// A 10 MiB command line with no newline: one 500 5.5.2 when it ends, nothing buffered.
#[test]
fn ten_mib_line_without_newline() {
    let _g = serial();
    let s = start(&[]);
    let p = pid(&s);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO long.test", "250");
    let rss0 = status_kib(p, "VmRSS");
    let line = vec![b'A'; 10 << 20];
    c.send_chunked(&line, 64 * 1024);
    // Still connected and silent: nothing to answer before the line ends.
    std::thread::sleep(Duration::from_millis(200));
    c.send(b"\r\n");
    c.expect_reply("500 5.5.2");
    c.expect("NOOP", "250");
    let hwm = status_kib(p, "VmHWM");
    // The same inside DATA: a long line is content, streamed to disk, not held.
    c.expect("MAIL FROM:<a@x.test>", "250 2.1.0");
    c.expect("RCPT TO:<b@y.test>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: long\r\n\r\n");
    c.send_chunked(&line, 64 * 1024);
    c.send(b"\r\n.\r\n");
    c.expect_reply("250 2.0.0");
    let hwm_data = status_kib(p, "VmHWM");
    eprintln!(
        "10 MiB line: VmRSS {rss0} KiB before, VmHWM {hwm} KiB after the command line, \
         {hwm_data} KiB after the DATA line"
    );
    assert!(
        hwm < rss0 + 4096,
        "a 10 MiB command line raised smtpd's peak RSS from {rss0} to {hwm} KiB"
    );
    assert!(
        hwm_data < rss0 + 4096,
        "a 10 MiB DATA line raised smtpd's peak RSS from {rss0} to {hwm_data} KiB"
    );
    let st = parse_stored(&s.new_files()[0]).unwrap();
    assert_eq!(
        st.body.len(),
        "Subject: long\r\n\r\n".len() + line.len() + 2
    );
}

/// Sends `lines` from a writer thread while the replies are read here; returns every reply's
/// status, up to `limit` replies or the server's close.
fn pipeline(c: &mut Client, lines: Vec<u8>, limit: usize) -> Vec<String> {
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&lines);
    });
    let mut got = Vec::new();
    while got.len() < limit {
        match c.try_reply_until(Instant::now() + Duration::from_secs(20)) {
            Ok(r) => got.push(r.status()),
            Err(_) => break,
        }
    }
    writer.join().unwrap();
    got
}

/// 10,000 RCPTs: accepted up to --max-recipients, then 452 4.5.3; the first 1,000 of those
/// do not count as errors (issue 10 item 14, Postfix's overshoot limit), the 20th after them
/// brings 421 4.7.0 and the close. With the limit raised, all 10,000 are stored.
#[test]
fn ten_thousand_recipients() {
    let _g = serial();
    let s = start(&[]);
    let p = pid(&s);
    let rss0 = status_kib(p, "VmRSS");
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO many.test", "250");
    c.expect("MAIL FROM:<a@x.test>", "250 2.1.0");
    let mut cmds = Vec::new();
    for i in 0..10_000 {
        cmds.extend_from_slice(format!("RCPT TO:<r{i}@y.test>\r\n").as_bytes());
    }
    let got = pipeline(&mut c, cmds.clone(), 10_000);
    let mut want = vec!["250 2.1.5".to_owned(); 100];
    want.extend(vec!["452 4.5.3".to_owned(); 1020]);
    want.push("421 4.7.0".to_owned());
    assert_eq!(got, want, "replies to 10,000 RCPTs (default limit 100)");
    c.expect_close(Duration::from_secs(5));

    // Raised limit: all 10,000 accepted and stored in the envelope.
    drop(s);
    let s = start(&["--max-recipients", "10000"]);
    let p = pid(&s);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO many.test", "250");
    c.expect("MAIL FROM:<a@x.test>", "250 2.1.0");
    let got = pipeline(&mut c, cmds, 10_000);
    assert_eq!(got.len(), 10_000);
    assert!(got.iter().all(|r| r == "250 2.1.5"), "{:?}", got.last());
    c.expect("DATA", "354");
    c.send(&small_body("many"));
    c.send(b".\r\n");
    c.expect_reply("250 2.0.0");
    let hwm = status_kib(p, "VmHWM");
    let st = parse_stored(&s.new_files()[0]).unwrap();
    assert_eq!(st.rcpts.len(), 10_000);
    assert_eq!(st.rcpts[9_999], "<r9999@y.test>");
    eprintln!("10,000 RCPTs: VmRSS {rss0} KiB at start, VmHWM {hwm} KiB");
    assert!(hwm < rss0 + 16 * 1024, "peak RSS {hwm} KiB");
}

/// 1,000 commands in one write: 1,000 replies, in order.
#[test]
fn thousand_commands_in_one_packet() {
    let _g = serial();
    let s = start(&[]);
    let p = pid(&s);
    let mut c = Client::greeted(s.addr);
    let mut cmds = b"EHLO burst.test\r\n".to_vec();
    let mut want = vec!["250".to_owned()];
    let cycle: [(&str, &str); 7] = [
        ("MAIL FROM:<a@x.test>", "250 2.1.0"),
        ("RCPT TO:<b@y.test>", "250 2.1.5"),
        ("RCPT TO:<c@y.test>", "250 2.1.5"),
        ("RSET", "250 2.0.0"),
        ("NOOP", "250 2.0.0"),
        ("VRFY someone", "252"),
        ("HELP", "214"),
    ];
    for i in 0..999 {
        let (cmd, st) = cycle[i % cycle.len()];
        cmds.extend_from_slice(cmd.as_bytes());
        cmds.extend_from_slice(b"\r\n");
        want.push(st.to_owned());
    }
    c.send(&cmds);
    let mut got = Vec::new();
    for _ in 0..1000 {
        let r = c.reply();
        got.push(r.status());
    }
    // VRFY / HELP codes: compare the code only.
    let norm = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|s| {
                if s.starts_with("252") || s.starts_with("214") {
                    s[..3].to_owned()
                } else {
                    s.clone()
                }
            })
            .collect()
    };
    assert_eq!(norm(&got), norm(&want));
    c.expect("QUIT", "221");
    let hwm = status_kib(p, "VmHWM");
    eprintln!("1,000 commands in one write: VmHWM {hwm} KiB");
}

// ---------------------------------------------------------------------------------------------
// Faults in the store
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted on a fresh temporary directory; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "2m"); None (with the reason printed) where mounting is
    /// not permitted.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            if integration_tests::peers_required() {
                panic!("mount -t tmpfs not permitted: {why}");
            }
            eprintln!("SKIPPED: mount -t tmpfs not permitted here: {why}");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, opt: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(self.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -o remount,{opt} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn start_with_maildir(maildir: &Path, extra: &[&str]) -> Smtpd {
    let mut args = vec!["--hostname", HOST];
    args.extend_from_slice(extra);
    let s = Smtpd::start_in(maildir, "127.0.0.1", &args);
    // start_in only waits for the port: wait for the greeting too, and for the server to close
    // this connection, so that neither it nor start_in's probe (closed before it) still holds
    // a connection slot when a test counts them.
    let mut c = Client::greeted(s.addr);
    c.expect("QUIT", "221");
    c.expect_close(Duration::from_secs(10));
    s
}

/// Fills the filesystem holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let chunk = vec![0x55u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    // The last partial blocks.
    for _ in 0..64 {
        if f.write(&chunk[..512]).is_err() {
            break;
        }
    }
    path
}

/// A Maildir on a full filesystem: 452 4.3.1 (after the dot, or instead of 354), nothing in
/// `new/`, nothing left in `tmp/`, and mail is accepted again once space is freed.
#[test]
fn full_filesystem_gives_452_4_3_1_and_recovers() {
    let _g = serial();
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let maildir = fs.path().join("Maildir");
    let mut s = start_with_maildir(&maildir, &[]);

    // A message bigger than the filesystem.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..60_000 {
        big.extend_from_slice(
            format!("line {i:06} of a message larger than the disk....\r\n").as_bytes(),
        );
    }
    assert!(big.len() > 2 << 20);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO full.test", "250");
    let st = try_transaction(&mut c, &big);
    assert_eq!(st, "452 4.3.1", "{}", server_log_or_transcript(&s, &c));
    assert!(list(&maildir.join("new")).is_empty(), "something in new/");
    wait_for("the aborted tmp file to go", Duration::from_secs(5), || {
        list(&maildir.join("tmp")).is_empty()
    });
    // The space it took is free again: the same session is accepted.
    let st = try_transaction(&mut c, &small_body("after big"));
    assert_eq!(st, "250 2.0.0", "{}", c.transcript);

    // Now fill the disk from outside: refused, at DATA or after the dot.
    let filler = fill(fs.path());
    let mut refused = 0;
    for i in 0..3 {
        let st = try_transaction(&mut c, &small_body(&format!("while full {i}")));
        assert_eq!(st, "452 4.3.1", "{}", c.transcript);
        refused += 1;
    }
    assert_eq!(refused, 3);
    assert_eq!(list(&maildir.join("new")).len(), 1);
    assert!(alive(&mut s));
    // Space freed: accepted again, on the same connection and on a new one.
    std::fs::remove_file(&filler).unwrap();
    let st = try_transaction(&mut c, &small_body("freed"));
    assert_eq!(st, "250 2.0.0", "{}", c.transcript);
    c.expect("QUIT", "221");
    transaction(&s, "freed, new connection");
    let files = list(&maildir.join("new"));
    assert_eq!(files.len(), 3);
    for f in &files {
        let st = parse_stored(f).unwrap_or_else(|e| panic!("partial file in new/: {e}"));
        assert!(st.body.ends_with(b"\r\n"));
    }
    assert!(list(&maildir.join("tmp")).is_empty());
    drop(s);
}

fn server_log_or_transcript(s: &Smtpd, c: &Client) -> String {
    format!("{}\n--- transcript ---\n{}", server_log(s), c.transcript)
}

/// The Maildir's filesystem remounted read-only, then the Maildir removed, while smtpd runs:
/// 451 4.3.0, no crash, and service resumes when the store is writable again.
#[test]
fn read_only_or_removed_maildir_gives_451_4_3_0() {
    let _g = serial();
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let maildir = fs.path().join("Maildir");
    let mut s = start_with_maildir(&maildir, &[]);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO ro.test", "250");
    assert_eq!(try_transaction(&mut c, &small_body("before")), "250 2.0.0");

    fs.remount("ro");
    for i in 0..3 {
        let st = try_transaction(&mut c, &small_body(&format!("ro {i}")));
        assert_eq!(st, "451 4.3.0", "{}", c.transcript);
    }
    c.expect("NOOP", "250");
    assert!(alive(&mut s), "smtpd died\n{}", server_log(&s));
    fs.remount("rw");
    assert_eq!(
        try_transaction(&mut c, &small_body("rw again")),
        "250 2.0.0"
    );
    assert_eq!(list(&maildir.join("new")).len(), 2);

    // The Maildir removed while running.
    std::fs::remove_dir_all(&maildir).unwrap();
    for i in 0..3 {
        let st = try_transaction(&mut c, &small_body(&format!("removed {i}")));
        assert_eq!(st, "451 4.3.0", "{}", c.transcript);
    }
    c.expect("NOOP", "250");
    let mut other = Client::greeted(s.addr);
    other.expect("EHLO other.test", "250");
    assert_eq!(
        try_transaction(&mut other, &small_body("removed, other")),
        "451 4.3.0"
    );
    assert!(alive(&mut s), "smtpd died\n{}", server_log(&s));
    drop(s);
}

// ---------------------------------------------------------------------------------------------
// SIGKILL at random instants
// ---------------------------------------------------------------------------------------------

fn kill_body(n: usize) -> Vec<u8> {
    let mut v = format!("Subject: kill {n}\r\nMessage-ID: <kill-{n}@x.test>\r\n\r\n").into_bytes();
    let lines = 5 + (n * 7919) % 1500;
    for k in 0..lines {
        v.extend_from_slice(
            format!("message {n} line {k} 0123456789abcdefghijklmnop\r\n").as_bytes(),
        );
    }
    v.extend_from_slice(format!("END {n}\r\n").as_bytes());
    v
}

/// xorshift seeded from the clock: the kill instants differ per run (printed for replay).
fn rng_seed() -> u64 {
    std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Every acknowledged message is complete in `new/`; every file in `new/` is complete.
fn check_new(maildir: &Path, acked: &[(usize, String)]) -> usize {
    let mut by_id = std::collections::HashMap::new();
    let files = list(&maildir.join("new"));
    for f in &files {
        let st = parse_stored(f).unwrap_or_else(|e| panic!("partial file in new/: {e}"));
        let subject = st.header("Subject").expect("Subject");
        let n: usize = subject
            .strip_prefix("kill ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: Subject {subject:?}", f.display()));
        assert!(
            st.body == kill_body(n),
            "{}: message {n} incomplete ({} octets, want {})",
            f.display(),
            st.body.len(),
            kill_body(n).len()
        );
        by_id.insert(st.id().expect("queue id"), n);
    }
    for (n, id) in acked {
        assert_eq!(
            by_id.get(id),
            Some(n),
            "message {n} acknowledged as {id} is not in new/"
        );
    }
    files.len()
}

#[test]
fn sigkill_at_random_instants_loses_nothing_acknowledged() {
    let _g = serial();
    let rounds = if long() { 25 } else { 3 };
    let seed = rng_seed();
    let mut x = seed;
    eprintln!("sigkill: {rounds} rounds, HOSTILE_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("Maildir");
    let counter = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<(usize, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut stale_expected: Vec<PathBuf> = Vec::new();
    let mut kept_expected: Vec<PathBuf> = Vec::new();
    let mut total_leftovers = 0;
    for round in 0..=rounds {
        let mut s = start_with_maildir(&maildir, &[]);
        // Leftovers of the previous round: the backdated ones are gone, the recent ones kept.
        for p in &stale_expected {
            assert!(
                !p.exists(),
                "stale tmp file {} not cleaned on start",
                p.display()
            );
        }
        for p in &kept_expected {
            assert!(
                p.exists(),
                "recent tmp file {} removed on start",
                p.display()
            );
            std::fs::remove_file(p).unwrap();
        }
        stale_expected.clear();
        kept_expected.clear();
        if round == rounds {
            break;
        }
        let before = acked.lock().unwrap().len();
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (counter, acked, stop, addr) = (
                    Arc::clone(&counter),
                    Arc::clone(&acked),
                    Arc::clone(&stop),
                    s.addr,
                );
                std::thread::spawn(move || {
                    let run = || -> Result<(), String> {
                        while !stop.load(Ordering::Relaxed) {
                            let st = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                            let mut c = Client::from_stream(st);
                            let dl = || Instant::now() + Duration::from_secs(10);
                            c.try_reply_until(dl())?;
                            c.line("EHLO kill.test");
                            c.try_reply_until(dl())?;
                            for _ in 0..5 {
                                let n = counter.fetch_add(1, Ordering::Relaxed);
                                let mut b = format!(
                                    "MAIL FROM:<k{n}@x.test>\r\nRCPT TO:<r{n}@y.test>\r\nDATA\r\n"
                                )
                                .into_bytes();
                                let w = b.len();
                                b.extend_from_slice(&kill_body(n));
                                b.extend_from_slice(b".\r\n");
                                // Pipelined up to DATA, then the body.
                                c.stream.write_all(&b[..w]).map_err(|e| e.to_string())?;
                                for want in [250, 250, 354] {
                                    let r = c.try_reply_until(dl())?;
                                    if r.code != want {
                                        return Err(format!("got {:?}", r.last()));
                                    }
                                }
                                c.stream.write_all(&b[w..]).map_err(|e| e.to_string())?;
                                let r = c.try_reply_until(dl())?;
                                let id = r.queue_id().ok_or(format!("{:?}", r.last()))?;
                                acked.lock().unwrap().push((n, id));
                            }
                            c.line("QUIT");
                        }
                        Ok(())
                    };
                    let _ = run();
                })
            })
            .collect();
        wait_for(
            "some messages acknowledged",
            Duration::from_secs(20),
            || acked.lock().unwrap().len() >= before + 5,
        );
        std::thread::sleep(Duration::from_millis(next(&mut x) % 400));
        s.signal(libc::SIGKILL);
        let _ = s.child.wait();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        let acked_now = acked.lock().unwrap().clone();
        let files = check_new(&maildir, &acked_now);
        let leftovers = list(&maildir.join("tmp"));
        total_leftovers += leftovers.len();
        eprintln!(
            "round {round}: {} acknowledged so far, {files} complete files in new/, {} left in tmp/",
            acked_now.len(),
            leftovers.len()
        );
        // Age half of the leftovers past the convention's 36 hours.
        let old = SystemTime::now() - Duration::from_secs(37 * 3600);
        for (i, p) in leftovers.into_iter().enumerate() {
            if i % 2 == 0 {
                let f = std::fs::File::options().write(true).open(&p).unwrap();
                f.set_modified(old).unwrap();
                stale_expected.push(p);
            } else {
                kept_expected.push(p);
            }
        }
        // Keep the server handle's Drop from killing a reused pid.
        drop(s);
    }
    let acked = acked.lock().unwrap().len();
    eprintln!(
        "sigkill: {rounds} kills, {acked} acknowledged, all complete; {total_leftovers} tmp/ leftovers handled"
    );
}
