//! smtpd under real clients and load (issue 3, acceptance items 2 and 10): swaks with
//! pipelining, curl, Postfix's smtp-source, and a Python smtplib load that records every queue
//! id acknowledged with 250 while the server is killed (SIGKILL) or stopped (SIGTERM).

use integration_tests::smtp::{Load, Stored, parse_stored, server_log, start, stored, wait_exit};
use integration_tests::{Smtpd, have, wait_for};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

fn port(s: &Smtpd) -> String {
    s.addr.port().to_string()
}

/// Lines of a client's output that report a `250 2.0.0 ... queued as` after DATA.
fn queued_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.contains("250 2.0.0") && l.contains("queued as"))
        .collect()
}

// ---- item 2: swaks, curl, smtp-source ---------------------------------------------------

#[test]
fn swaks_with_pipelining_is_accepted_and_stored() {
    if !have("swaks") {
        return;
    }
    let s = start(&[]);
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port(&s)])
        .args(["--from", "sender@example.org"])
        .args(["--to", "a@example.com,b@example.net"])
        .args(["--helo", "swaks.test", "--pipeline", "--timeout", "20"])
        .args(["--header", "Subject: swaks pipelined"])
        .args(["--body", "swaks body\n.leading dot\nlast line"])
        .output()
        .expect("run swaks");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "swaks failed\n{text}\n{}",
        server_log(&s)
    );
    let acks = queued_lines(&text);
    assert_eq!(acks.len(), 1, "swaks transcript:\n{text}");
    assert_eq!(
        s.new_files().len(),
        acks.len(),
        "files vs 250 replies\n{text}"
    );
    let st = &stored(&s)[0];
    assert_eq!(st.return_path, "<sender@example.org>");
    assert_eq!(st.rcpts, ["<a@example.com>", "<b@example.net>"]);
    st.check_received("swaks.test", "127.0.0.1")
        .unwrap_or_else(|e| panic!("{e}"));
    let body = String::from_utf8_lossy(&st.body);
    assert!(
        body.contains("\r\n\r\nswaks body\r\n.leading dot\r\nlast line\r\n"),
        "body not stored as sent (dot-unstuffed, CRLF): {body:?}"
    );
}

#[test]
fn curl_smtp_upload_is_accepted_and_stored_byte_for_byte() {
    if !have("curl") {
        return;
    }
    let s = start(&[]);
    let msg = "From: <sender@example.org>\r\nTo: <r1@example.com>\r\nSubject: curl upload\r\n\r\n\
               curl body\r\n.dot line\r\n..two dots\r\nend\r\n";
    let file = s.maildir.parent().expect("tmp").join("curl.eml");
    std::fs::write(&file, msg).expect("write message");
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "20"])
        .arg(format!("smtp://127.0.0.1:{}/curl.test", port(&s)))
        .args(["--mail-from", "sender@example.org"])
        .args([
            "--mail-rcpt",
            "r1@example.com",
            "--mail-rcpt",
            "r2@example.com",
        ])
        .arg("-T")
        .arg(&file)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "curl failed\n{text}\n{}",
        server_log(&s)
    );
    let acks = queued_lines(&text);
    assert_eq!(acks.len(), 1, "curl transcript:\n{text}");
    assert_eq!(
        s.new_files().len(),
        acks.len(),
        "files vs 250 replies\n{text}"
    );
    let st = &stored(&s)[0];
    assert_eq!(st.rcpts, ["<r1@example.com>", "<r2@example.com>"]);
    st.check_received("curl.test", "127.0.0.1")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        st.body == msg.as_bytes(),
        "curl upload not stored byte for byte: {:?}",
        String::from_utf8_lossy(&st.body)
    );
}

#[test]
fn smtp_source_20_sessions_2000_messages_all_stored() {
    if !have("/usr/sbin/smtp-source") {
        return;
    }
    let s = start(&[]);
    let t = Instant::now();
    let out = Command::new("/usr/sbin/smtp-source")
        .args(["-s", "20", "-m", "2000"])
        .args(["-f", "sender@example.org", "-t", "rcpt@example.com"])
        .arg(format!("127.0.0.1:{}", port(&s)))
        .output()
        .expect("run smtp-source");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "smtp-source failed ({}): {}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server_log(&s)
    );
    // smtp-source exits non-zero on any reply it did not expect: success means 2000 x 250.
    let files = s.new_files();
    assert_eq!(files.len(), 2000, "files in new/ after 2000 acknowledged");
    for f in &files {
        let st = parse_stored(f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st.return_path, "<sender@example.org>");
        assert_eq!(st.rcpts, ["<rcpt@example.com>"]);
        assert!(st.body.ends_with(b"\r\n"), "{}", f.display());
    }
    eprintln!(
        "smtp-source -s 20 -m 2000 (new connection per message, durable, debug build): {:.2?}, {:.0} msg/s",
        took,
        2000.0 / took.as_secs_f64()
    );
}

// ---- item 10: kill or stop the server under load; nothing acknowledged is lost -----------

/// The message the Python load sends as number `i`, as it must be stored (unstuffed).
fn load_body(i: usize) -> Vec<u8> {
    let mut lines = vec![
        format!("Subject: load {i}"),
        format!("Message-ID: <load-{i}@example.org>"),
        String::new(),
    ];
    for k in 0..10 + (i * 37) % 150 {
        lines.push(format!("message {i} line {k} {}", "abcdefghij".repeat(5)));
        if k % 10 == 3 {
            lines.push(format!(".dot line {k}"));
        }
    }
    lines.push(format!("END {i}"));
    (lines.join("\r\n") + "\r\n").into_bytes()
}

/// Every file in `new/` is complete; every acknowledged queue id is there with its message.
/// Returns the number of files.
fn verify_nothing_lost(s: &Smtpd, lines: &[String]) -> usize {
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let files = s.new_files();
    for f in &files {
        let st: Stored = parse_stored(f).unwrap_or_else(|e| panic!("partial file in new/: {e}"));
        let subject = st
            .header("Subject")
            .unwrap_or_else(|| panic!("{}: no Subject (partial?)", f.display()));
        let i: usize = subject
            .strip_prefix("load ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: Subject {subject:?}", f.display()));
        assert!(
            st.body == load_body(i),
            "{}: body of message {i} is not complete ({} octets, want {})",
            f.display(),
            st.body.len(),
            load_body(i).len()
        );
        assert_eq!(st.return_path, format!("<load{i}@example.org>"));
        assert_eq!(st.rcpts, [format!("<rcpt{i}@example.com>")]);
        let id = st
            .check_received("load.test", "127.0.0.1")
            .unwrap_or_else(|e| panic!("{e}"));
        by_id.insert(id, i);
    }
    let mut acked = 0;
    for l in lines.iter().filter(|l| l.starts_with("ACK ")) {
        let mut w = l.splitn(3, ' ');
        let i: usize = w.nth(1).and_then(|n| n.parse().ok()).expect("ACK number");
        let id = l
            .split("queued as ")
            .nth(1)
            .map(str::trim)
            .unwrap_or_else(|| panic!("no queue id in {l:?}"));
        assert_eq!(
            by_id.get(id),
            Some(&i),
            "message {i} was acknowledged as {id} but is not in new/ ({} files)",
            files.len()
        );
        acked += 1;
    }
    assert!(files.len() >= acked);
    files.len()
}

const LOAD_TOTAL: usize = 2000;
const LOAD_THREADS: usize = 10;
const STOP_AFTER: usize = 300;

#[test]
fn sigkill_during_load_loses_nothing_acknowledged() {
    sigkill_during_load(&[]);
}

/// The same with one syncfs per batch instead of an fdatasync per file (`--sync filesystem`).
#[test]
fn sigkill_during_load_with_syncfs_loses_nothing_acknowledged() {
    sigkill_during_load(&["--sync", "filesystem"]);
}

fn sigkill_during_load(args: &[&str]) {
    if !have("python3") {
        return;
    }
    let s = start(args);
    let load = Load::start(
        &port(&s),
        LOAD_TOTAL,
        LOAD_THREADS,
        "example.org",
        &["rcpt%d@example.com"],
    );
    wait_for(
        &format!("{STOP_AFTER} messages acknowledged"),
        Duration::from_secs(60),
        || load.acks() >= STOP_AFTER,
    );
    s.signal(libc::SIGKILL);
    let lines = load.finish();
    let acked = lines.iter().filter(|l| l.starts_with("ACK ")).count();
    assert!(
        acked < LOAD_TOTAL,
        "the load finished before the kill: the test proved nothing"
    );
    let files = verify_nothing_lost(&s, &lines);
    eprintln!("SIGKILL under load {args:?}: {acked} acknowledged, {files} complete files in new/");
}

#[test]
fn sigterm_during_load_exits_0_and_loses_nothing() {
    if !have("python3") {
        return;
    }
    let mut s = start(&[]);
    let load = Load::start(
        &port(&s),
        LOAD_TOTAL,
        LOAD_THREADS,
        "example.org",
        &["rcpt%d@example.com"],
    );
    wait_for(
        &format!("{STOP_AFTER} messages acknowledged"),
        Duration::from_secs(60),
        || load.acks() >= STOP_AFTER,
    );
    s.signal(libc::SIGTERM);
    let code = wait_exit(&mut s, Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "exit status after SIGTERM\n{}",
        server_log(&s)
    );
    let lines = load.finish();
    let acked = lines.iter().filter(|l| l.starts_with("ACK ")).count();
    assert!(
        acked < LOAD_TOTAL,
        "the load finished before SIGTERM: the test proved nothing"
    );
    let files = verify_nothing_lost(&s, &lines);
    assert_eq!(
        files,
        acked,
        "after a clean stop every file in new/ should have been acknowledged\n{}",
        lines
            .iter()
            .filter(|l| !l.starts_with("ACK "))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("SIGTERM under load: {acked} acknowledged, {files} files in new/");
}
