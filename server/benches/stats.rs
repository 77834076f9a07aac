//! What counting costs the reactor, and what a scrape costs the exporter's thread:
//! `Stats::record_timed` and the other bumps for the events of one message's session (connect,
//! MAIL, RCPT, the commit and its batch, the end of data, the close), and encoding every
//! metric with prometheus-client (`smtpd::metrics::registry`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use maildir_core::ReversePath;
use proto::smtp::server::session::{Counts, Event};
use smtpd::stats::{Stats, TxTimer};

fn per_message(c: &mut Criterion) {
    let stats = Stats::new();
    let committed = Event::TxCommitted {
        id: "1796313727.M255017P28741Q30.vm".into(),
        from: ReversePath::Null,
        rcpts: 1,
        size: 4096,
    };
    let counts = Counts {
        bytes_in: 4300,
        bytes_out: 300,
        ..Counts::default()
    };
    let mut g = c.benchmark_group("stats");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one message's session", |b| {
        b.iter(|| {
            let mut tx = TxTimer::default();
            for e in [&Event::Connected, &Event::TxBegin, &Event::RcptAccepted] {
                stats.record_timed(black_box(e), &mut tx, Instant::now);
            }
            stats.commit_batch(1);
            stats.commit_latency(Duration::from_micros(800));
            stats.local_delivered(0);
            stats.record_timed(black_box(&committed), &mut tx, Instant::now);
            stats.record_timed(&Event::Closed, &mut tx, Instant::now);
            stats.connection_closed(black_box(&counts));
        })
    });
    let registry = smtpd::metrics::registry(Arc::new(stats));
    g.bench_function("scrape: encode every metric", |b| {
        b.iter(|| {
            let mut text = String::with_capacity(8 * 1024);
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
                .expect("encodes");
            black_box(text)
        })
    });
    g.finish();
}

criterion_group!(benches, per_message);
criterion_main!(benches);
