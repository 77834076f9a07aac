//! Many threads delivering into one Maildir at once: names never collide, every file in `new/`
//! is complete, and nothing is left in `tmp/`.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::thread;

use maildir_core::{Delivered, Durability, Maildir};

const THREADS: usize = 8;
const PER_THREAD: usize = 5_000;

/// The exact bytes of message `i` of thread `t`: sizes vary, and the content names its origin.
fn message(t: usize, i: usize) -> Vec<u8> {
    let mut m = format!("Subject: t{t} i{i}\r\n\r\n").into_bytes();
    let fill = (t * 7919 + i * 104_729) % 3000;
    m.extend((0..fill).map(|k| b'a' + ((k + t + i) % 26) as u8));
    m.extend_from_slice(format!("\r\nend t{t} i{i}\r\n").as_bytes());
    m
}

/// Parses `Subject: t<t> i<i>` back out of a message.
fn origin(bytes: &[u8]) -> (usize, usize) {
    let line = bytes.split(|b| *b == b'\r').next().unwrap();
    let text = std::str::from_utf8(line).unwrap();
    let (t, i) = text
        .strip_prefix("Subject: t")
        .unwrap()
        .split_once(" i")
        .unwrap();
    (t.parse().unwrap(), i.parse().unwrap())
}

/// Every file in `new/` is one of ours, complete, named with its size, and appears once.
fn check_new(md: &Maildir, delivered: &[Delivered], expected: usize) {
    let ids: HashSet<&str> = delivered.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), expected, "duplicate ids");
    let listed = md.scan_new().unwrap();
    assert_eq!(listed.len(), expected);
    let mut seen = HashSet::new();
    for entry in &listed {
        let bytes = fs::read(&entry.path).unwrap();
        let (t, i) = origin(&bytes);
        assert_eq!(bytes, message(t, i), "{} is not complete", entry.name);
        assert!(seen.insert((t, i)), "message t{t} i{i} twice");
        let size: usize = entry.name.rsplit_once(",S=").unwrap().1.parse().unwrap();
        assert_eq!(size, bytes.len());
    }
    assert_eq!(fs::read_dir(md.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn eight_threads_no_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let md = Maildir::open(dir.path()).unwrap();
    let delivered: Vec<Delivered> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let md = &md;
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let mut d = md.deliver().unwrap();
                            d.write_all(&message(t, i)).unwrap();
                            d.commit(Durability::NoFsync).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    check_new(&md, &delivered, THREADS * PER_THREAD);
}

#[test]
fn eight_threads_fsync_and_batches() {
    const BATCHES: usize = 6;
    const BATCH: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let md = Maildir::open(dir.path()).unwrap();
    let delivered: Vec<Delivered> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let md = &md;
                s.spawn(move || {
                    let mut done = Vec::new();
                    for b in 0..BATCHES {
                        let batch: Vec<_> = (0..BATCH)
                            .map(|k| {
                                let mut d = md.deliver().unwrap();
                                d.write_all(&message(t, b * BATCH + k)).unwrap();
                                d
                            })
                            .collect();
                        for r in md.commit_batch(batch, Durability::Fsync) {
                            done.push(r.unwrap());
                        }
                    }
                    // A few single commits interleaved with the other threads' batches.
                    for k in 0..4 {
                        let mut d = md.deliver().unwrap();
                        d.write_all(&message(t, BATCHES * BATCH + k)).unwrap();
                        done.push(d.commit(Durability::Fsync).unwrap());
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    check_new(&md, &delivered, THREADS * (BATCHES * BATCH + 4));
}
