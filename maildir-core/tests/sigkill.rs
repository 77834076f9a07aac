//! A delivering process killed with SIGKILL: nothing partial in `new/`, everything it reported
//! committed is there, and the Maildir opens again afterwards.
//!
//! The child is this test binary run again with `MAILDIR_CORE_KILL_CHILD` set: it delivers in
//! batches with `commit_batch(Fsync)` and prints `committed <name>` for each message only once
//! the batch has returned.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use maildir_core::{Durability, Envelope, EnvelopeReader, ForwardPath, Maildir, ReversePath};

const CHILD_ENV: &str = "MAILDIR_CORE_KILL_CHILD";
/// Committed messages to see before the kill.
const KILL_AFTER: usize = 120;

/// Message `n`: envelope, headers, a body whose length varies up to ~200 KiB (so that a kill
/// often lands mid-write), and a trailer naming its length.
fn message(n: u64) -> Vec<u8> {
    let envelope = Envelope {
        sender: ReversePath::parse("<sender@example.org>").unwrap(),
        recipients: vec![ForwardPath::parse(&format!("<r{n}@example.net>")).unwrap()],
        ret: None,
        envid: None,
        rcpt_dsn: Vec::new(),
    };
    let mut m = envelope.to_bytes();
    m.extend_from_slice(format!("Subject: {n}\r\n\r\n").as_bytes());
    let fill = (n as usize * 48_271) % (200 * 1024);
    m.extend((0..fill).map(|k| {
        if k % 78 == 77 {
            b'\n'
        } else {
            b'a' + (k % 23) as u8
        }
    }));
    m.extend_from_slice(format!("\r\nEND {n}\r\n").as_bytes());
    m
}

/// The child: deliver until killed (or, as a safety net, for at most 60 s).
fn child(dir: &Path) {
    let md = Maildir::open(dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stdout = std::io::stdout().lock();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let batch: Vec<_> = (0..8)
            .map(|_| {
                let mut d = md.deliver().unwrap();
                // Written in pieces, so a kill can leave a half-written file in tmp/.
                for chunk in message(n).chunks(16 * 1024) {
                    d.write_all(chunk).unwrap();
                }
                n += 1;
                d
            })
            .collect();
        for r in md.commit_batch(batch, Durability::Fsync) {
            let done = r.unwrap();
            let name = done.path.file_name().unwrap().to_str().unwrap().to_owned();
            writeln!(stdout, "committed {name}").unwrap();
        }
        stdout.flush().unwrap();
    }
}

#[test]
fn kill_child_mid_delivery() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Maildir");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_child_mid_delivery",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(name) = line.strip_prefix("committed ") else {
                continue;
            };
            if tx.send(name.to_owned()).is_err() {
                break;
            }
        }
    });
    let mut committed = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(25);
    while committed.len() < KILL_AFTER {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(name) => {
                committed.insert(name);
            }
            Err(e) => panic!("child reported {} commits before {e:?}", committed.len()),
        }
    }
    proc.kill().unwrap(); // SIGKILL
    let status = proc.wait().unwrap();
    assert!(!status.success());
    reader.join().unwrap();
    // Whatever the child printed before dying was committed too.
    committed.extend(rx.try_iter());

    let md = Maildir::open(&root).expect("a killed delivery must not break open");
    let listed = md.scan_new().unwrap();
    let names: HashSet<String> = listed.iter().map(|e| e.name.clone()).collect();
    for name in &committed {
        assert!(
            names.contains(name),
            "committed {name} is missing from new/"
        );
    }
    for entry in &listed {
        let bytes = fs::read(&entry.path).unwrap();
        let (envelope, _) = EnvelopeReader::open(&bytes[..]).unwrap();
        let rcpt = envelope.recipients[0].to_string();
        let n: u64 = rcpt
            .strip_prefix("<r")
            .and_then(|r| r.strip_suffix("@example.net>"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(bytes, message(n), "{} is not complete", entry.name);
        let size: usize = entry.name.rsplit_once(",S=").unwrap().1.parse().unwrap();
        assert_eq!(size, bytes.len());
    }
    // Young leftovers in tmp/ stay (only files older than 36 h are removed).
    let tmp_left = fs::read_dir(md.tmp_dir()).unwrap().count();
    eprintln!(
        "killed after {} committed; {} in new/, {} left in tmp/",
        committed.len(),
        listed.len(),
        tmp_left
    );
}
