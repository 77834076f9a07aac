//! smtp-relay's durable state against real peers (dnsmasq, the recording sink, Python's `email`):
//! records that survive a failed move and a SIGKILL, MX lists naming the relay itself, DSN
//! details, address and MX literals, what a run reads of messages that are not due, and the
//! delivery log. One test per defect of issue 10 (items 5, 6, 8, 11); addresses 127.0.40.x up.

use std::process::Output;
use std::time::Duration;

use integration_tests::relay::{Dns, Sink, queue, relay, run_args, sample, temp_maildir};
use integration_tests::{bin, list, wait_for};
use maildir_core::Maildir;

fn ok(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "smtp-relay failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

/// The state file of a queued message, or "" when there is none.
fn state_of(md: &Maildir, name: &str) -> String {
    std::fs::read_to_string(md.root().join(".relay").join(name)).unwrap_or_default()
}

/// Messages the sink received for one recipient.
fn copies(sink: &Sink, rcpt: &str) -> usize {
    sink.messages()
        .iter()
        .filter(|m| m.3.iter().any(|r| r == rcpt))
        .count()
}

/// Item 5: the move into `cur/` fails (the target name is taken by a directory: rename(2) fails
/// with EISDIR, for root too). The delivered recipient must never get a second copy, however
/// many runs follow, and the message must still be moved once the obstacle is gone.
#[test]
fn failed_move_to_cur_never_resends() {
    let Some(dns) = Dns::start(&["mv.test,mx.mv.test,10"], &["mx.mv.test,127.0.40.2"]) else {
        return;
    };
    let sink = Sink::start(&["127.0.40.2"], &[]);
    let (_d, md) = temp_maildir();
    let name = queue(
        &md,
        "<s@src.test>",
        &["<u@mv.test>"],
        &sample("mv1", "u@mv.test"),
    );
    let blocker = md.cur_dir().join(format!("{name}:2,P"));
    std::fs::create_dir(&blocker).expect("directory in the way");
    std::fs::write(blocker.join("x"), b"not empty").expect("file in the way");
    let port = sink.port.to_string();
    let mut now = run_args(&dns, &port);
    now.push("--now");
    let (out, err) = ok(&relay(md.root(), &now));
    assert!(out.contains("1 delivered"), "{out}");
    assert_eq!(list(md.new_dir()).len(), 1, "still in new/");
    assert!(
        state_of(&md, &name).contains("rcpt 0 delivered"),
        "{}",
        state_of(&md, &name)
    );
    assert!(err.contains("cannot move to cur/"), "{err}");
    for _ in 0..2 {
        let (out, _) = ok(&relay(md.root(), &now));
        assert!(out.contains("0 delivered, 0 deferred, 0 bounced"), "{out}");
    }
    assert_eq!(copies(&sink, "<u@mv.test>"), 1, "{:?}", sink.messages());
    // The obstacle gone, the next run moves it and forgets its record.
    std::fs::remove_dir_all(&blocker).expect("remove the obstacle");
    let (out, _) = ok(&relay(md.root(), &now));
    assert!(out.contains("1 finished"), "{out}");
    assert!(list(md.new_dir()).is_empty());
    assert!(
        list(md.cur_dir())
            .iter()
            .any(|p| p.to_string_lossy().ends_with(&format!("{name}:2,P")))
    );
    assert_eq!(state_of(&md, &name), "", "state removed after the move");
    assert_eq!(copies(&sink, "<u@mv.test>"), 1);
}

/// Item 8: a message to two domains; the fast MX accepts at once, the slow one never answers
/// the final dot. The fast recipient's 250 must be on disk before the message's attempt ends,
/// so a SIGKILL then does not send to it again.
#[test]
fn delivered_recipient_recorded_before_the_slow_one_ends() {
    let Some(dns) = Dns::start(
        &["fast.test,mx.fast.test,10", "slow.test,mx.slow.test,10"],
        &["mx.fast.test,127.0.41.2", "mx.slow.test,127.0.41.3"],
    ) else {
        return;
    };
    let fast = Sink::start(&["127.0.41.2"], &[]);
    let slow = Sink::start_on(&["127.0.41.3"], fast.port, &["--dot-delay", "600"]);
    let (_d, md) = temp_maildir();
    let name = queue(
        &md,
        "<s@src.test>",
        &["<a@fast.test>", "<b@slow.test>"],
        &sample("pr1", "a@fast.test"),
    );
    let port = fast.port.to_string();
    // Timeouts long enough that the slow MX is still stalling when the relay is killed.
    let args = [
        "--once",
        "--dns",
        &dns.addr,
        "--port",
        &port,
        "--timeout",
        "300",
        "--helo",
        "relay.test",
    ];
    let mut child = std::process::Command::new(bin("smtp-relay"))
        .arg("--maildir")
        .arg(md.root())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn smtp-relay");
    wait_for(
        "the fast recipient recorded as delivered",
        Duration::from_secs(60),
        || state_of(&md, &name).contains("rcpt 0 delivered"),
    );
    assert_eq!(
        copies(&slow, "<b@slow.test>"),
        0,
        "the slow MX still stalls"
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    drop(slow);
    let slow = Sink::start_on(&["127.0.41.3"], fast.port, &[]);
    let (out, _) = ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(out.contains("1 delivered, 0 deferred, 0 bounced"), "{out}");
    assert_eq!(copies(&fast, "<a@fast.test>"), 1, "{:?}", fast.messages());
    assert_eq!(copies(&slow, "<b@slow.test>"), 1, "{:?}", slow.messages());
    assert!(list(md.new_dir()).is_empty());
    assert_eq!(state_of(&md, &name), "");
}
