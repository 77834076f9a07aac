//! smtp-stress against the real smtpd (issue 5): randomised sessions with every error class,
//! every reply checked, and the Maildir count equal to the messages acknowledged; then 5,000
//! concurrent connections.

use integration_tests::{Smtpd, bin};
use std::process::Command;

/// smtp-stress sends some messages to the bare `<postmaster>` and expects 250: smtpd delivers
/// those only with `--postmaster`.
const POSTMASTER: &str = "postmaster@stress.test";

/// Runs smtp-stress against `s` with `args`; returns (success, stdout, stderr).
fn stress(s: &Smtpd, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("smtp-stress"))
        .args(args)
        .arg("--maildir")
        .arg(&s.maildir)
        .arg(s.addr.to_string())
        .output()
        .expect("run smtp-stress");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number after `key` in the summary (`operations 1234 (...)`).
fn figure(out: &str, key: &str) -> u64 {
    out.split(key)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} in output:\n{out}"))
}

#[test]
fn random_sessions_with_errors_at_32_connections() {
    let s = Smtpd::start(&[
        "--postmaster",
        POSTMASTER,
        "--max-size",
        "200000",
        "--max-recipients",
        "20",
        "--timeout",
        "2",
    ]);
    let (ok, out, err) = stress(
        &s,
        &[
            "--connections",
            "32",
            "--duration",
            "10",
            "--seed",
            "0x5eed",
            "--error-rate",
            "0.2",
            "--max-size",
            "200000",
            "--max-recipients",
            "20",
            "--silent-timeout",
            "2",
        ],
    );
    assert!(ok, "smtp-stress failed\n{out}\n{err}");
    assert_eq!(figure(&out, "mismatches: "), 0, "{out}\n{err}");
    assert!(figure(&out, "operations ") >= 1_000, "{out}");
    assert!(figure(&out, "errors provoked: ") > 0, "{out}");
    let delivered = figure(&out, "messages delivered ");
    assert!(delivered > 0, "{out}");
    assert!(out.contains(": ok"), "maildir check missing\n{out}");
    assert_eq!(s.new_files().len() as u64, delivered, "{out}");
}

#[test]
fn five_thousand_connections() {
    let s = Smtpd::start(&[
        "--max-size",
        "200000",
        "--max-recipients",
        "20",
        "--postmaster",
        POSTMASTER,
    ]);
    let (ok, out, err) = stress(
        &s,
        &[
            "--connections",
            "5000",
            "--count",
            "5000",
            "--seed",
            "5000",
            "--error-rate",
            "0.2",
            "--max-size",
            "200000",
            "--max-recipients",
            "20",
        ],
    );
    assert!(ok, "smtp-stress failed\n{out}\n{err}");
    assert_eq!(figure(&out, "mismatches: "), 0, "{out}\n{err}");
    assert_eq!(figure(&out, "sessions "), 5_000, "{out}");
    assert_eq!(
        s.new_files().len() as u64,
        figure(&out, "messages delivered "),
        "{out}"
    );
}
