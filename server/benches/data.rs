//! The DATA path (GB/s): `proto::smtp::server::data::DataDecoder::feed` over a 4 MiB message with
//! dot-stuffed lines, fed in 64 KiB chunks as the reactor reads them, against plain `memchr`
//! scans of the same buffer (every LF; the end-of-data marker) as the yardstick.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proto::smtp::server::data::DataDecoder;

const SIZE: usize = 4 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Message lines of 60-76 octets, every 8th dot-stuffed, some long lines; ends with `.` CR LF.
fn message() -> Vec<u8> {
    let mut m = Vec::with_capacity(SIZE + 1024);
    let mut i = 0usize;
    while m.len() < SIZE {
        if i % 8 == 3 {
            m.extend_from_slice(b"..");
        }
        let len = if i.is_multiple_of(97) {
            990
        } else {
            60 + i % 17
        };
        m.extend((0..len).map(|k| b"abcdefghij klmnopqrstuvwxyz"[(i + k) % 27]));
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn data_path(c: &mut Criterion) {
    let msg = message();
    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.sample_size(30);
    let mut out = Vec::with_capacity(CHUNK * 2);
    g.bench_function("DataDecoder::feed 64KiB chunks", |b| {
        b.iter(|| {
            let mut d = DataDecoder::new(u64::MAX);
            let mut done = false;
            for chunk in msg.chunks(CHUNK) {
                out.clear();
                let fed = d.feed(black_box(chunk), &mut out);
                done = fed.done;
            }
            assert!(done);
            d.size()
        })
    });
    g.bench_function("memchr LF count (yardstick)", |b| {
        b.iter(|| memchr::memchr_iter(b'\n', black_box(&msg)).count())
    });
    g.bench_function("memmem CRLF.CRLF (yardstick)", |b| {
        b.iter(|| memchr::memmem::find(black_box(&msg), b"\r\n.\r\n"))
    });
    g.finish();
}

criterion_group!(benches, data_path);
criterion_main!(benches);
