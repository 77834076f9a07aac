//! Storing one 4 KiB message as a queue file, without fsync (the reactor thread's share of the
//! work; issue 16): created in `tmp/`, written, renamed into `new/`. Two ways side by side:
//! - `by path, two writes`: what smtpd did before, each step walking the whole path and the
//!   envelope written apart from the body;
//! - `open dirs, one writev`: what smtpd's queue does now ([`Maildir::with_open_dirs`]:
//!   `openat`, `renameat2` relative to `tmp/` and `new/` held open; `smtpd::store::QueueFile`
//!   holds the envelope back to write it with the body in one `writev`).
//!
//! Each iteration removes the file it delivered, so that `new/` stays the same size.

use std::hint::black_box;
use std::io::{IoSlice, Write};

use criterion::{Criterion, criterion_group, criterion_main};
use maildir_core::{Durability, Maildir};

const HEAD: &[u8] = b"X-Envelope: from=<a@example.org> to=<b@example.net>\r\n\
Received: from client (unknown [127.0.0.1])\r\n\tby bench with ESMTP id 1;\r\n\tThu, 3 Dec 2026 19:00:00 +0000\r\n";

fn queue_file(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let body: Vec<u8> = (0..4096).map(|i| b"abcdefghij\r\n"[i % 12]).collect();
    let mut g = c.benchmark_group("queue file, 4 KiB, no fsync");
    g.sample_size(50);

    let plain = Maildir::open(dir.path().join("plain")).expect("Maildir");
    g.bench_function("by path, two writes", |b| {
        b.iter(|| {
            let mut d = plain.deliver().expect("deliver");
            d.write_all(HEAD).expect("write");
            d.write_all(&body).expect("write");
            let done = d.commit(Durability::NoFsync).expect("commit");
            std::fs::remove_file(black_box(done.path)).expect("remove");
        })
    });

    let open = Maildir::open(dir.path().join("open"))
        .and_then(Maildir::with_open_dirs)
        .expect("Maildir");
    g.bench_function("open dirs, one writev", |b| {
        b.iter(|| {
            let mut d = open.deliver().expect("deliver");
            let n = d
                .write_vectored(&[IoSlice::new(HEAD), IoSlice::new(&body)])
                .expect("writev");
            assert_eq!(n, HEAD.len() + body.len());
            let done = d.commit(Durability::NoFsync).expect("commit");
            std::fs::remove_file(black_box(done.path)).expect("remove");
        })
    });
    g.finish();
}

criterion_group!(benches, queue_file);
criterion_main!(benches);
