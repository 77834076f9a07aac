//! Prometheus metrics (issue 14, test 4): `/metrics` of smtpd and of smtp-relay `--interval`,
//! fetched over HTTP and parsed by Python's `prometheus_client.parser`
//! (`tests/py/scrape.py`), nobody here wrote either; the counters must match what the test
//! did. Relay addresses: 127.0.14.x.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::relay::{Daemon, Dns, Sink, queue_sample, temp_maildir};
use integration_tests::smtp::{self, server_log};
use integration_tests::{free_port, peers_required, python, wait_for};

/// What the parser made of one scrape.
#[derive(Debug, Default)]
struct Scrape {
    /// Family name → type (`counter`, `gauge`, `histogram`).
    types: BTreeMap<String, String>,
    /// (sample name, `k=v,...` sorted) → value.
    samples: BTreeMap<(String, String), f64>,
}

impl Scrape {
    /// The value of a sample, panicking with the whole scrape when it is missing.
    fn get(&self, name: &str, labels: &str) -> f64 {
        match self.samples.get(&(name.to_owned(), labels.to_owned())) {
            Some(v) => *v,
            None => panic!("no sample {name}{{{labels}}} in {self:#?}"),
        }
    }

    /// The type the parser gave a family.
    fn kind(&self, family: &str) -> &str {
        self.types.get(family).map_or("missing", String::as_str)
    }

    /// Checks a histogram: typed as one, buckets cumulative, `+Inf` equal to the count; returns
    /// (count, sum).
    fn histogram(&self, name: &str) -> (f64, f64) {
        assert_eq!(self.kind(name), "histogram", "{name}");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|((n, _), _)| *n == format!("{name}_bucket"))
            .map(|((_, l), v)| {
                let le = l.strip_prefix("le=").unwrap_or_else(|| panic!("{l}"));
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or_else(|e| panic!("{le}: {e}"))
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 2, "{name}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} buckets are cumulative: {buckets:?}"
        );
        let count = self.get(&format!("{name}_count"), "");
        assert_eq!(buckets.last().map(|b| b.1), Some(count), "{name}: +Inf");
        (count, self.get(&format!("{name}_sum"), ""))
    }
}

/// prometheus_client is there (or, under CI / scripts/test.sh, must be).
fn have_prometheus_client() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !peers_required(),
            "python3 prometheus_client is required: scripts/install-peers.sh installs it"
        );
        eprintln!("SKIPPED: python3 prometheus_client is not installed");
    }
    ok
}

/// Fetches and parses `http://ADDR/metrics`.
fn scrape(addr: &str) -> Scrape {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/scrape.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://{addr}/metrics"))
        .output()
        .expect("run python3 scrape.py");
    assert!(
        out.status.success(),
        "scrape.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = Scrape::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.split('\t').collect::<Vec<_>>().as_slice() {
            ["family", name, kind] => {
                s.types.insert((*name).to_owned(), (*kind).to_owned());
            }
            ["sample", name, labels, value] => {
                let v: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
                s.samples
                    .insert(((*name).to_owned(), (*labels).to_owned()), v);
            }
            _ => panic!("unexpected line from scrape.py: {line:?}"),
        }
    }
    s
}

/// Sends, with smtplib: 4 messages to 2 recipients each (their sizes printed), a recipient
/// refused (`<postmaster>` with none configured: 550), and a message over `--max-size` sent
/// without `SIZE=` so that it is refused after the data (552).
const SEND: &str = r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
total = 0
with smtplib.SMTP(host, int(port), timeout=20) as s:
    for i in range(4):
        msg = ("From: <me@src.test>\r\nSubject: m%d\r\n\r\n%s\r\n" % (i, "x" * (10 * i))).encode()
        s.sendmail("me@src.test", ["a@far.test", "b@far.test"], msg)
        total += len(msg)
    s.ehlo()
    s.mail("me@src.test")
    code, _ = s.rcpt("<postmaster>")
    assert code == 550, code
    s.rset()
    s.mail("me@src.test")
    code, _ = s.rcpt("a@far.test")
    assert code == 250, code
    code, _ = s.data(b"Subject: big\r\n\r\n" + b"y" * 3000 + b"\r\n")
    assert code == 552, code
print(total)
"#;

/// smtpd's counters after 4 accepted messages, 1 refused for its size and 1 refused
/// recipient; its histograms hold one observation per commit, per batch and per transaction.
#[test]
fn smtpd_metrics_count_what_was_sent() {
    if !have_prometheus_client() {
        return;
    }
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let s = smtp::start(&["--metrics", &metrics, "--max-size", "2000"]);
    let before = scrape(&metrics);
    assert_eq!(before.get("smtpd_messages_accepted_total", ""), 0.0);
    // smtp::start's probe for the greeting is a session too.
    let probes = before.get("smtpd_connections_total", "");
    let bytes: f64 = python(SEND, &[&s.addr.to_string()])
        .trim()
        .parse()
        .expect("the total size");
    // The session's octets are counted when it ends, just after the client saw 221.
    let mut m = Scrape::default();
    wait_for("the session to end", Duration::from_secs(10), || {
        m = scrape(&metrics);
        m.get("smtpd_sessions_active", "") == 0.0
            && m.get("smtpd_connections_total", "") == probes + 1.0
    });
    let log = server_log(&s);
    assert_eq!(m.kind("smtpd_messages_accepted"), "counter", "{log}");
    assert_eq!(m.get("smtpd_messages_accepted_total", ""), 4.0, "{log}");
    assert_eq!(m.get("smtpd_accepted_bytes_total", ""), bytes);
    assert_eq!(m.get("smtpd_accepted_recipients_total", ""), 8.0);
    assert_eq!(m.get("smtpd_recipients_accepted_total", ""), 9.0);
    assert_eq!(
        m.get("smtpd_messages_refused_total", "reason=size"),
        1.0,
        "{m:#?}"
    );
    for other in ["hops", "loop", "quota", "storage"] {
        assert_eq!(
            m.get("smtpd_messages_refused_total", &format!("reason={other}")),
            0.0
        );
    }
    assert_eq!(
        m.get("smtpd_recipients_refused_total", "reason=no_postmaster"),
        1.0
    );
    assert!(m.get("smtpd_received_bytes_total", "") > bytes + 3000.0);
    assert!(m.get("smtpd_sent_bytes_total", "") > 0.0);
    assert_eq!(m.get("smtpd_local_deliveries_total", ""), 0.0);
    assert_eq!(m.get("smtpd_auth_total", "result=failure"), 0.0);
    assert_eq!(m.kind("smtpd_sessions_active"), "gauge");
    assert!(m.get("smtpd_uptime_seconds", "") >= 0.0);

    let (commits, latency) = m.histogram("smtpd_commit_latency_seconds");
    assert_eq!(commits, 4.0, "one commit per accepted message");
    assert!(latency > 0.0 && latency < 60.0, "{latency}");
    let (batches, in_batches) = m.histogram("smtpd_commit_batch_size");
    assert_eq!(batches, m.get("smtpd_commit_batches_total", ""));
    assert_eq!(in_batches, 4.0, "every accepted message in a batch");
    let (txs, tx_time) = m.histogram("smtpd_transaction_duration_seconds");
    assert_eq!(txs, 5.0, "4 stored and 1 refused after the data");
    assert!(tx_time > 0.0 && tx_time < 60.0, "{tx_time}");
}

/// smtp-relay `--interval`: after its first pass (3 messages to a domain whose MX takes them,
/// 1 to a domain whose MX refuses connections), the counters, the queue gauges, the
/// connections per MX and the DNS latency of the 2 domains.
#[test]
fn relay_metrics_after_one_interval_run() {
    if !have_prometheus_client() {
        return;
    }
    let Some(dns) = Dns::start(
        &["ok.test,mx.ok.test,10", "down.test,mx.down.test,10"],
        &["mx.ok.test,127.0.14.2", "mx.down.test,127.0.14.3"],
    ) else {
        return;
    };
    let sink = Sink::start(&["127.0.14.2"], &[]);
    let (_dir, md) = temp_maildir();
    for i in 0..3 {
        queue_sample(&md, &format!("m{i}"), "you@ok.test");
    }
    queue_sample(&md, "m3", "you@down.test");
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let port = sink.port.to_string();
    let d = Daemon::start(
        md.root(),
        &[
            "--interval",
            "3600",
            "--dns",
            &dns.addr,
            "--port",
            &port,
            "--timeout",
            "10",
            "--helo",
            "relay.test",
            "--metrics",
            &metrics,
        ],
    );
    wait_for("the first pass", Duration::from_secs(30), || {
        d.count("smtp-relay: 3 delivered, 1 deferred, 0 bounced") == 1
    });
    let m = scrape(&metrics);
    let log = d.log();
    assert_eq!(m.kind("smtp_relay_delivered"), "counter", "{log}");
    assert_eq!(m.get("smtp_relay_delivered_total", ""), 3.0, "{log}");
    assert_eq!(m.get("smtp_relay_deferred_total", ""), 1.0);
    assert_eq!(m.get("smtp_relay_bounced_total", ""), 0.0);
    assert_eq!(m.get("smtp_relay_messages_finished_total", ""), 3.0);
    assert_eq!(m.get("smtp_relay_passes_total", ""), 1.0);
    assert_eq!(m.kind("smtp_relay_queue_size"), "gauge");
    assert_eq!(m.get("smtp_relay_queue_size", ""), 1.0, "the deferred one");
    let age = m.get("smtp_relay_oldest_message_age_seconds", "");
    assert!((0.0..600.0).contains(&age), "{age}");
    assert_eq!(
        m.get("smtp_relay_connections_total", "mx=mx.ok.test"),
        1.0,
        "{m:#?}"
    );
    assert_eq!(
        m.get("smtp_relay_connect_failures_total", "mx=mx.down.test"),
        1.0
    );
    let (lookups, took) = m.histogram("smtp_relay_dns_latency_seconds");
    assert_eq!(lookups, 2.0, "one resolution per domain");
    assert!(took > 0.0 && took < 30.0, "{took}");
    assert_eq!(sink.messages().len(), 3);
}

/// Local delivery: one message to an alias of two users and to a third user makes 3 durable
/// copies, counted once each; a recipient of a local domain that names nobody is refused with
/// its reason.
#[test]
fn smtpd_metrics_count_local_deliveries() {
    if !have_prometheus_client() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let users = dir.path().join("users");
    let aliases = dir.path().join("aliases");
    let mailboxes = dir.path().join("mailboxes");
    std::fs::write(&users, "alice:*::::\nbob:*::::\ncarol:*::::\n").expect("write users");
    std::fs::write(&aliases, "postmaster: alice\nteam: alice, bob\n").expect("write aliases");
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let (u, a, m) = (
        users.to_string_lossy().into_owned(),
        aliases.to_string_lossy().into_owned(),
        mailboxes.to_string_lossy().into_owned(),
    );
    let s = smtp::start(&[
        "--local-domain",
        "example.test",
        "--mailboxes",
        &m,
        "--users",
        &u,
        "--aliases",
        &a,
        "--metrics",
        &metrics,
    ]);
    let script = r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
with smtplib.SMTP(host, int(port), timeout=20) as s:
    refused = s.sendmail("me@src.test", ["team@example.test", "carol@example.test", "nobody@example.test"],
                         b"Subject: hello\r\n\r\nhi\r\n")
    assert list(refused) == ["nobody@example.test"], refused
"#;
    python(script, &[&s.addr.to_string()]);
    let m = scrape(&metrics);
    let log = server_log(&s);
    assert_eq!(m.get("smtpd_messages_accepted_total", ""), 1.0, "{log}");
    assert_eq!(m.get("smtpd_local_deliveries_total", ""), 3.0, "{log}");
    assert_eq!(
        m.get("smtpd_recipients_refused_total", "reason=unknown_user"),
        1.0
    );
    for user in ["alice", "bob", "carol"] {
        let new = mailboxes.join(user).join("new");
        assert_eq!(integration_tests::list(&new).len(), 1, "{user}");
    }
}

/// A metrics address that cannot be bound is one line on stderr and exit 1 (like any other
/// listener); smtp-relay refuses `--metrics` without `--interval` (a run that exits has nothing
/// to be scraped for).
#[test]
fn metrics_address_problems_are_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let err = smtp::startup_failure(&[
        "--maildir",
        "Maildir",
        "--listen",
        &format!("127.0.0.1:{}", free_port("127.0.0.1")),
        "--metrics",
        &addr,
    ]);
    assert!(
        err.contains(&format!("cannot listen on {addr} for metrics")),
        "{err}"
    );
    let (_d, md) = temp_maildir();
    let out = integration_tests::relay::relay(md.root(), &["--once", "--metrics", &addr]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--interval"), "{err}");
}
