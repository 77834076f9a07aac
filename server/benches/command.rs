//! Command-line parser throughput (commands/s): `proto::smtp::server::command::parse` over a realistic mix of
//! the lines a session sends (mostly RCPT and MAIL, with EHLO, DATA, QUIT, RSET, NOOP, and a
//! few refused ones).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MIX: &[&[u8]] = &[
    b"EHLO client.example.org",
    b"MAIL FROM:<sender.name@example.org> SIZE=4096 BODY=8BITMIME",
    b"RCPT TO:<alice@example.com>",
    b"RCPT TO:<bob+tag@mail.example.net>",
    b"RCPT TO:<carol.d@sub.example.co.uk>",
    b"DATA",
    b"MAIL FROM:<>",
    b"RCPT TO:<postmaster>",
    b"DATA",
    b"rcpt to:<\"quoted local\"@example.com>",
    b"MAIL FROM:<j\xc3\xb6s\xc3\xa9@exa\xcc\x88mple.test> SMTPUTF8",
    b"RCPT TO:<dave@example.com>",
    b"RSET",
    b"NOOP",
    b"XYZZY frob",
    b"MAIL FROM:<a b@example.com>",
    b"QUIT",
];

fn parse_mix(c: &mut Criterion) {
    let mut g = c.benchmark_group("command");
    g.throughput(Throughput::Elements(MIX.len() as u64));
    g.bench_function("parse mix", |b| {
        b.iter(|| {
            for line in MIX {
                let _ = black_box(proto::smtp::server::command::parse(black_box(line)));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse RCPT", |b| {
        b.iter(|| proto::smtp::server::command::parse(black_box(b"RCPT TO:<alice@example.com>")))
    });
    g.finish();
}

criterion_group!(benches, parse_mix);
criterion_main!(benches);
