//! smtp-relay's progress bar (issue 17): on a terminal (tmux, a real one nobody here wrote) a
//! `--once` run shows messages finished of those tried and recipients sent, deferred and
//! bounced while it works, then only the summary line; with stdout not a terminal (cron,
//! systemd, a pipe) it prints nothing but the summary line.

use std::process::Command;
use std::time::Duration;

use integration_tests::relay::{Sink, queue, relay, sample, temp_maildir, text};
use integration_tests::{bin, have, wait_for};

fn fill(md: &maildir_core::Maildir, n: usize) {
    for i in 0..n {
        let id = format!("p{i}");
        queue(
            md,
            "<s@src.test>",
            &["<r@one.test>"],
            &sample(&id, "r@one.test"),
        );
    }
}

/// Not a terminal: stdout is the one summary line and stderr holds no bar.
#[test]
fn nothing_extra_when_not_a_terminal() {
    let sink = Sink::start(&["127.0.0.1"], &[]);
    let (_d, md) = temp_maildir();
    fill(&md, 20);
    let host = format!("127.0.0.1:{}", sink.port);
    let out = relay(
        md.root(),
        &["--once", "--smarthost", &host, "--timeout", "10"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("smtp-relay: 20 delivered, 0 deferred, 0 bounced"),
        "{stdout}"
    );
    let stderr = text(&out.stderr);
    for bar in ["messages,", "ETA", "\r", "\u{1b}["] {
        assert!(!stderr.contains(bar), "{bar:?} on stderr: {stderr:?}");
    }
}

/// On a terminal (tmux): the bar is seen while the run works (a sink that takes 50 ms per
/// message), and the screen keeps only the summary at the end.
#[test]
fn a_bar_on_a_terminal() {
    if !have("tmux") {
        return;
    }
    let sink = Sink::start(&["127.0.0.1"], &["--dot-delay", "0.05"]);
    let (d, md) = temp_maildir();
    fill(&md, 80);
    let socket = d.path().join("tmux.sock");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(args)
            .output()
            .expect("tmux")
    };
    let done = d.path().join("done");
    let cmd = format!(
        "{} --maildir {} --once --smarthost 127.0.0.1:{} --timeout 30 --no-chunking 2>&1; touch {}; sleep 600",
        bin("smtp-relay").display(),
        md.root().display(),
        sink.port,
        done.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-x",
        "160",
        "-y",
        "10",
        "sh",
        "-c",
        &cmd,
    ]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    let screen = || text(&tmux(&["capture-pane", "-p"]).stdout);
    let mut seen = String::new();
    wait_for("the progress bar", Duration::from_secs(30), || {
        let s = screen();
        let shown = s.contains("/80 messages,") && s.contains(" sent, ") && s.contains("ETA");
        if shown {
            seen = s;
        }
        shown || done.exists()
    });
    wait_for("the run to end", Duration::from_secs(60), || done.exists());
    let end = screen();
    let _ = tmux(&["kill-server"]);
    assert!(!seen.is_empty(), "no bar seen; final screen: {end}");
    assert!(
        end.contains("smtp-relay: 80 delivered, 0 deferred, 0 bounced"),
        "{end}"
    );
    assert!(!end.contains("messages,"), "the bar is cleared: {end}");
}
