//! scripts/bench.sh's plot (issue 17): smtp-stress against the real smtpd writes its
//! transaction latencies (`--latencies`), and scripts/bench_plot.py (matplotlib) draws them as
//! a histogram beside the throughput-against-sessions lines of an intake table; the SVG is
//! well-formed (Python's XML parser) and carries the titles, every server and the percentiles.

use std::path::Path;
use std::process::Command;

use integration_tests::relay::text;
use integration_tests::{Smtpd, bin, peers_required, python};

#[test]
fn latencies_and_intake_plotted_as_svg() {
    let have_matplotlib = Command::new("python3")
        .args(["-c", "import matplotlib"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_matplotlib {
        assert!(
            !peers_required(),
            "matplotlib is required (scripts/install-peers.sh)"
        );
        eprintln!("SKIPPED: matplotlib is not installed");
        return;
    }
    let s = Smtpd::start(&["--postmaster", "postmaster@stress.test"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let lat = dir.path().join("latencies.txt");
    let out = Command::new(bin("smtp-stress"))
        .args(["--connections", "8", "--count", "200", "--error-rate", "0"])
        .arg("--latencies")
        .arg(&lat)
        .arg(s.addr.to_string())
        .output()
        .expect("smtp-stress");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let samples: Vec<u64> = std::fs::read_to_string(&lat)
        .expect("latencies")
        .lines()
        .map(|l| l.parse().expect("microseconds"))
        .collect();
    assert!(samples.len() >= 150, "{} samples", samples.len());
    assert!(samples.iter().all(|&us| us > 0 && us < 60_000_000));
    let intake = dir.path().join("intake.tsv");
    std::fs::write(
        &intake,
        "smtpd (fsync before 250)\t1\tnew\t900\n\
         smtpd (fsync before 250)\t20\tnew\t5200\n\
         smtpd (fsync before 250)\t200\tnew\t6100\n\
         smtpd (fsync before 250)\t20\treuse\t9100\n\
         Postfix smtp-sink (discards)\t1\tnew\t1500\n\
         Postfix smtp-sink (discards)\t20\tnew\t\n\
         Postfix smtp-sink (discards)\t200\tnew\tsmtp-source failed\n",
    )
    .expect("intake");
    let svg = dir.path().join("bench.svg");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_plot.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--intake")
        .arg(&intake)
        .arg("--latencies")
        .arg(&lat)
        .arg("--out")
        .arg(&svg)
        .output()
        .expect("bench_plot.py");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let root = python(
        "import sys, xml.etree.ElementTree as E; print(E.parse(sys.argv[1]).getroot().tag)",
        &[svg.to_str().expect("path")],
    );
    assert_eq!(root.trim(), "{http://www.w3.org/2000/svg}svg");
    let t = std::fs::read_to_string(&svg).expect("svg");
    for want in [
        "Intake throughput",
        "smtpd (fsync before 250)",
        "(-d, connection reuse)",
        "Postfix smtp-sink (discards)",
        &format!("Transaction latency, {} transactions", samples.len()),
        "p50 ",
        "p99 ",
    ] {
        assert!(t.contains(want), "{want:?} not in the plot");
    }
}
