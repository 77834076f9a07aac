//! smtp-relay's durable state against real peers (dnsmasq, the recording sink, Python's `email`):
//! records that survive a failed move and a SIGKILL, MX lists naming the relay itself, DSN
//! details, address and MX literals, what a run reads of messages that are not due, and the
//! delivery log. One test per defect of issue 10 (items 5, 6, 8, 11); addresses 127.0.40.x up.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use integration_tests::relay::{
    Dns, Sink, queue, queue_sample, relay, run_args, sample, spawn_relay, temp_maildir,
};
use integration_tests::relay::{relay_ok as ok, state_if_any as state_of};
use integration_tests::{bin, list, python, wait_for};
use maildir_core::Maildir;

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
    let name = queue_sample(&md, "mv1", "u@mv.test");
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
    // The delivery line goes to the audit target, which the logging thread never drops.
    assert!(
        err.lines()
            .any(|l| l.contains(" smtp_relay::audit] ") && l.contains("status=sent")),
        "{err}"
    );
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

/// Item 8 when a message's recipients for one host go in several transactions (more than
/// `--max-rcpt-per-transaction`, or "452 too many recipients"): the recipient the server took
/// in the first transaction is recorded as delivered while the second transaction still waits
/// for its final reply, and a SIGTERM then defers only the recipient still under way, so the
/// next run sends to it alone. (The session used to report the first transaction's recipients
/// only when the whole message was done, and the stop recorded them as deferred.)
#[test]
fn recipient_of_an_earlier_transaction_is_recorded_and_kept_at_sigterm() {
    let ip = "127.0.47.2";
    let sink = Sink::start(
        &[ip],
        &["--dot-delay", "600", "--dot-delay-for", "b@split.test"],
    );
    let (_d, md) = temp_maildir();
    let name = queue(
        &md,
        "<s@src.test>",
        &["<a@split.test>", "<b@split.test>"],
        &sample("sp1", "a@split.test"),
    );
    let host = format!("{ip}:{}", sink.port);
    let args = [
        "--once",
        "--smarthost",
        &host,
        "--max-rcpt-per-transaction",
        "1",
        "--timeout",
        "300",
        "--helo",
        "relay.test",
    ];
    let mut child = spawn_relay(md.root(), &args);
    wait_for(
        "the first transaction's message at the sink",
        Duration::from_secs(60),
        || copies(&sink, "<a@split.test>") == 1,
    );
    wait_for(
        "the first transaction's recipient recorded as delivered",
        Duration::from_secs(60),
        || state_of(&md, &name).contains("rcpt 0 delivered"),
    );
    assert_eq!(
        copies(&sink, "<b@split.test>"),
        0,
        "the second transaction still waits"
    );
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut status = None;
    wait_for("smtp-relay to exit", Duration::from_secs(30), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let st = state_of(&md, &name);
    assert!(
        st.contains("rcpt 0 delivered") && st.contains("rcpt 1 deferred"),
        "{st}"
    );
    // The delivery log says the same: one line per recipient outcome.
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    let audit = |rcpt: &str| -> Vec<&str> {
        err.lines()
            .filter(|l| l.contains(" smtp_relay::audit] ") && l.contains(rcpt))
            .collect()
    };
    let a = audit("to=<a@split.test>");
    assert!(a.len() == 1 && a[0].contains("status=sent"), "{err}");
    let b = audit("to=<b@split.test>");
    assert!(b.len() == 1 && b[0].contains("status=deferred"), "{err}");
    let port = sink.port;
    drop(sink);
    let sink = Sink::start_on(&[ip], port, &[]);
    let mut now = args.to_vec();
    now.push("--now");
    let (out, err) = ok(&relay(md.root(), &now));
    assert!(
        out.contains("1 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert_eq!(copies(&sink, "<a@split.test>"), 0, "{:?}", sink.messages());
    assert_eq!(copies(&sink, "<b@split.test>"), 1, "{:?}", sink.messages());
    assert!(list(md.new_dir()).is_empty());
}

/// A message whose relay state cannot be read (here the state path is a directory; a disk
/// error does the same) is left alone, with the reason logged and shown by `--list`: the run
/// sends the other messages. It used to fail the whole scan, so one bad state file stopped
/// all outbound mail, run after run.
#[test]
fn unreadable_state_file_holds_up_only_its_own_message() {
    let ip = "127.0.47.3";
    let sink = Sink::start(&[ip], &[]);
    let (_d, md) = temp_maildir();
    let good = queue_sample(&md, "st1", "a@st.test");
    let bad = queue_sample(&md, "st2", "b@st.test");
    let state = md.root().join(".relay").join(&bad);
    std::fs::create_dir_all(&state).expect("a directory where the state file goes");
    let host = format!("{ip}:{}", sink.port);
    let args = [
        "--once",
        "--smarthost",
        &host,
        "--timeout",
        "10",
        "--helo",
        "relay.test",
    ];
    let (out, err) = ok(&relay(md.root(), &args));
    assert!(
        out.contains("1 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert_eq!(copies(&sink, "<a@st.test>"), 1, "{:?}", sink.messages());
    assert_eq!(copies(&sink, "<b@st.test>"), 0, "{:?}", sink.messages());
    assert!(
        err.lines()
            .any(|l| l.contains(&bad) && l.contains("cannot read its relay state")),
        "{err}"
    );
    assert!(!md.new_dir().join(&good).exists());
    assert!(md.new_dir().join(&bad).exists(), "left in new/");
    let (list_out, _) = ok(&relay(md.root(), &["--list"]));
    assert!(
        list_out
            .lines()
            .any(|l| l.starts_with(&bad) && l.contains("cannot read its relay state")),
        "{list_out}"
    );
}

/// The `Status:` lines of the DSNs in `new/` (files other than `skip`), sorted.
fn dsn_statuses(md: &Maildir, skip: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list(md.new_dir())
        .iter()
        .filter(|p| !skip.iter().any(|s| p.ends_with(s)))
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.lines()
                .filter(|l| l.starts_with("Status: "))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    v.sort();
    v
}

/// Item 6: the relay (`--helo relay.test`) is itself an MX host of the domain. Only hosts
/// strictly more preferred are used (RFC 5321 §5.1); when none is left the mail bounces with
/// 5.4.6 "loops back to myself", as Postfix does. Sinks listen on every address the MX lists
/// name, so on the old code the mail would have been delivered to "itself" or a worse backup.
#[test]
fn mx_lists_naming_the_relay_itself() {
    let Some(dns) = Dns::start(
        &[
            "loop.test,relay.test,10",
            "equal.test,relay.test,10",
            "equal.test,other.equal.test,10",
            "equal.test,backup.equal.test,20",
            "better.test,down.better.test,5",
            "better.test,relay.test,10",
            "better.test,backup.better.test,20",
            "src.test,mx.src.test,10",
        ],
        &[
            "relay.test,127.0.42.2",
            "other.equal.test,127.0.42.3",
            "backup.equal.test,127.0.42.4",
            // Nothing listens here: the only host better than the relay is down.
            "down.better.test,127.0.42.5",
            "backup.better.test,127.0.42.4",
            "mx.src.test,127.0.42.6",
        ],
    ) else {
        return;
    };
    let sink = Sink::start(&["127.0.42.2", "127.0.42.3", "127.0.42.4"], &[]);
    let (_d, md) = temp_maildir();
    let mut names = Vec::new();
    for (i, to) in ["u@loop.test", "u@equal.test", "u@better.test"]
        .iter()
        .enumerate()
    {
        names.push(queue(
            &md,
            "<s@src.test>",
            &[&format!("<{to}>")],
            &sample(&format!("self{i}"), to),
        ));
    }
    let port = sink.port.to_string();
    let (out, err) = ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(
        out.contains("0 delivered, 1 deferred, 2 bounced"),
        "{out}\n{err}"
    );
    assert!(
        sink.connections().is_empty(),
        "no connection to itself or to a less preferred host: {:?}",
        sink.connections()
    );
    assert!(err.contains("loops back to myself"), "{err}");
    let skip: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        dsn_statuses(&md, &skip),
        vec!["Status: 5.4.6", "Status: 5.4.6"]
    );
    let better = state_of(&md, &names[2]);
    assert!(
        better.contains("rcpt 0 deferred") && better.contains("127.0.42.5"),
        "{better}"
    );
}

/// Item 11: an MX record whose target is an IP address in text is skipped with a warning, not
/// looked up as a name; with nothing else usable the domain bounces 5.4.4 saying why. A
/// recipient domain `[ipv6:...]` (lower-case tag) is an address literal like `[IPv6:...]`.
#[test]
fn ip_address_mx_target_and_lower_case_ipv6_literal() {
    let Some(dns) = Dns::start(
        &[
            "ipmx.test,127.0.43.2,10",
            "mixed.test,127.0.43.2,5",
            "mixed.test,mx.mixed.test,10",
            "src.test,mx.src.test,10",
        ],
        &["mx.mixed.test,127.0.43.3", "mx.src.test,127.0.43.4"],
    ) else {
        return;
    };
    let sink = Sink::start(&["127.0.43.2", "127.0.43.3"], &[]);
    let (_d, md) = temp_maildir();
    let ipmx = queue_sample(&md, "ip1", "u@ipmx.test");
    queue_sample(&md, "ip2", "u@mixed.test");
    // IPv4-mapped, so the sink on 127.0.43.2 receives it.
    queue_sample(&md, "ip3", "u@[ipv6:::ffff:127.0.43.2]");
    let port = sink.port.to_string();
    let (out, err) = ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(
        out.contains("2 delivered, 0 deferred, 1 bounced"),
        "{out}\n{err}"
    );
    assert!(
        err.contains("numeric domain name in resource data of MX record for ipmx.test"),
        "{err}"
    );
    let msgs = sink.messages();
    let to_mixed: Vec<_> = msgs.iter().filter(|m| m.3 == ["<u@mixed.test>"]).collect();
    assert_eq!(to_mixed.len(), 1, "{msgs:?}");
    assert_eq!(
        to_mixed[0].1, "127.0.43.3",
        "the host name MX, not the numeric one"
    );
    let literal: Vec<_> = msgs
        .iter()
        .filter(|m| m.3 == ["<u@[ipv6:::ffff:127.0.43.2]>"])
        .collect();
    assert_eq!(literal.len(), 1, "{msgs:?}");
    assert_eq!(dsn_statuses(&md, &[&ipmx]), vec!["Status: 5.4.4"]);
    let dsn = list(md.new_dir())
        .into_iter()
        .find(|p| !p.ends_with(&ipmx))
        .expect("a DSN");
    let text = std::fs::read_to_string(dsn).expect("read the DSN");
    assert!(text.contains("is an IP address, not a host name"), "{text}");
}

/// Every DSN file (from `<>`) in `new/` and `cur/`.
fn dsn_files(md: &Maildir) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = list(md.new_dir())
        .into_iter()
        .chain(list(md.cur_dir()))
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.starts_with(b"Return-Path: <>\r\n"))
                .unwrap_or(false)
        })
        .collect();
    v.sort();
    v
}

/// Python's `email` reads a DSN; prints Message-ID, the headers part's type, its first lines'
/// lengths, and per recipient its fields.
const READ_DSN: &str = r#"
import sys, email, email.policy
for path in sys.argv[1:]:
    raw = open(path, 'rb').read()
    msg = email.message_from_bytes(raw.split(b'\r\n', 2)[2], policy=email.policy.compat32)
    print('id', msg['Message-ID'])
    for part in msg.get_payload():
        ct = part.get_content_type()
        if ct == 'message/delivery-status':
            for block in part.get_payload()[1:]:
                print('rcpt', block['Final-Recipient'], '|', block['Status'], '|',
                      block['Original-Recipient'], '|', block['Remote-MTA'])
        elif ct != 'text/plain':
            payload = part.get_payload()
            if isinstance(payload, list):
                payload = payload[0].as_string()
            names = [l.split(':')[0] + ':' + str(len(l)) for l in payload.splitlines() if l]
            print('headers', ct, ' '.join(names))
"#;

/// Item 11 (DSN details): two DSNs about one message (a 550 now, a 451 that becomes a 550 on a
/// later run) carry different Message-IDs; no `Original-Recipient` without ORCPT;
/// `Remote-MTA: dns; <MX host name>` for a reply, none for an expiry without one; a 5,000-octet
/// header line is copied whole; 8-bit headers are `message/global-headers` (RFC 6533).
#[test]
fn dsn_details() {
    let Some(dns) = Dns::start(
        &[
            "d.test,mx.d.test,10",
            "down.test,mx.down.test,10",
            "src.test,mx.src.test,10",
        ],
        // Nothing listens on .9: connections to mx.down.test are refused.
        &[
            "mx.d.test,127.0.44.2",
            "mx.down.test,127.0.44.9",
            "mx.src.test,127.0.44.3",
        ],
    ) else {
        return;
    };
    let sink = Sink::start(
        &["127.0.44.2", "127.0.44.3"],
        &["--code", "a@d.test=550", "--code", "b@d.test=451"],
    );
    let (_d, md) = temp_maildir();
    let long = format!("X-Long: {}", "x".repeat(5000));
    let mut msg = format!(
        "Received: from c.test by relay.test; Tue, 24 Nov 2026 04:07:30 +0000\r\n{long}\r\n"
    )
    .into_bytes();
    msg.extend_from_slice(
        "Subject: caf\u{e9} cr\u{e8}me\r\nFrom: <s@src.test>\r\n\r\nbody\r\n".as_bytes(),
    );
    queue(&md, "<s@src.test>", &["<a@d.test>", "<b@d.test>"], &msg);
    let port = sink.port.to_string();
    let (out, _) = ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(out.contains("0 delivered, 1 deferred, 1 bounced"), "{out}");
    let sink_port = sink.port;
    drop(sink);
    let _sink = Sink::start_on(
        &["127.0.44.2", "127.0.44.3"],
        sink_port,
        &["--code", "b@d.test=550"],
    );
    let mut now = run_args(&dns, &port);
    now.push("--now");
    let (out, _) = ok(&relay(md.root(), &now));
    assert!(out.contains("1 bounced"), "{out}");
    // An expiry after refused connections: no SMTP reply, so no Remote-MTA.
    queue_sample(&md, "exp", "c@down.test");
    now.extend(["--queue-lifetime", "0"]);
    let (out, _) = ok(&relay(md.root(), &now));
    assert!(out.contains("1 bounced"), "{out}");
    let files = dsn_files(&md);
    assert_eq!(files.len(), 3, "{files:?}");
    let args: Vec<&str> = files.iter().map(|p| p.to_str().expect("UTF-8")).collect();
    let got = python(READ_DSN, &args);
    let ids: std::collections::HashSet<&str> =
        got.lines().filter(|l| l.starts_with("id ")).collect();
    assert_eq!(ids.len(), 3, "every DSN its own Message-ID:\n{got}");
    let rcpts: Vec<&str> = got.lines().filter(|l| l.starts_with("rcpt ")).collect();
    let mut rcpts = rcpts.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec![
            "rcpt rfc822; a@d.test | 5.1.1 | None | dns; mx.d.test",
            "rcpt rfc822; b@d.test | 5.1.1 | None | dns; mx.d.test",
            "rcpt rfc822; c@down.test | 4.4.7 | None | None",
        ],
        "{got}"
    );
    let headers: Vec<&str> = got.lines().filter(|l| l.starts_with("headers ")).collect();
    assert_eq!(headers.len(), 3, "{got}");
    let eight: Vec<&&str> = headers
        .iter()
        .filter(|l| l.contains("X-Long:5008"))
        .collect();
    assert_eq!(
        eight.len(),
        2,
        "the long line whole in both DSNs of it:\n{got}"
    );
    for l in eight {
        assert!(l.starts_with("headers message/global-headers "), "{l}");
        assert!(
            !l.contains(" x"),
            "no line made of the long line's rest: {l}"
        );
    }
}

/// Runs smtp-relay to its exit and returns its output and the octets it read (`rchar` of
/// `/proc/PID/io`, read while the exited child is not reaped yet: `waitid(WNOWAIT)`).
fn relay_counting_reads(maildir: &Path, args: &[&str]) -> (Output, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = std::process::Command::new(bin("smtp-relay"))
        .arg("--maildir")
        .arg(maildir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn smtp-relay");
    // SAFETY: waitid(2) on our own child with a zeroed siginfo_t it fills in.
    let rc = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PID,
            child.id(),
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    let io = std::fs::read_to_string(format!("/proc/{}/io", child.id())).expect("/proc/PID/io");
    let rchar = io
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/PID/io");
    let status = child.wait().expect("reap smtp-relay");
    let out = Output {
        status,
        stdout: std::fs::read(&out_path).expect("read stdout"),
        stderr: std::fs::read(&err_path).expect("read stderr"),
    };
    (out, rchar)
}

/// Item 11 (queue reading): a run reads the envelope and state of every queued message but the
/// body only of those it sends. 20 deferred messages of 1 MiB each, not due: the run sends the
/// one due message and reads far less than the 20 MiB it used to (the 8-bit check read every
/// body). A file in `new/` that is not a queued message is counted in the summary line.
#[test]
fn run_reads_bodies_of_due_messages_only() {
    let Some(dns) = Dns::start(&["rd.test,mx.rd.test,10"], &["mx.rd.test,127.0.45.2"]) else {
        return;
    };
    let sink = Sink::start(&["127.0.45.2"], &[]);
    let (_d, md) = temp_maildir();
    let mut big = sample("big", "u@rd.test");
    let line = format!("{}\u{e9}\r\n", "z".repeat(1000));
    while big.len() < 1 << 20 {
        big.extend_from_slice(line.as_bytes());
    }
    let states = md.root().join(".relay");
    std::fs::create_dir_all(&states).expect("state dir");
    for _ in 0..20 {
        let name = queue(&md, "<big@src.test>", &["<u@rd.test>"], &big);
        // Deferred once, next attempt far in the future (the state file format of state.rs).
        std::fs::write(
            states.join(&name),
            "attempts 1\nnext 99999999999\nerror 451 4.3.0 later\nrcpt 0 deferred 451 4.3.0 later\n",
        )
        .expect("state file");
    }
    queue_sample(&md, "due", "now@rd.test");
    std::fs::write(md.new_dir().join("stray.txt"), b"not a queued message\n").expect("stray");
    let port = sink.port.to_string();
    let (out, rchar) = relay_counting_reads(md.root(), &run_args(&dns, &port));
    let (stdout, stderr) = ok(&out);
    assert!(
        rchar < 4 << 20,
        "read {rchar} octets for a run that sends one small message (the 20 waiting bodies are 20 MiB)"
    );
    assert!(
        stdout.contains("1 delivered, 0 deferred, 0 bounced (1 of 21 messages tried, 20 not due, 1 file(s) in new/ not queued messages;"),
        "{stdout}"
    );
    assert!(stderr.contains("stray.txt"), "{stderr}");
    assert_eq!(sink.messages().len(), 1);
    // With --now every body is needed, and read (8-bit check, then sending): the measure can
    // fail.
    let mut now = run_args(&dns, &port);
    now.push("--now");
    let (out, rchar) = relay_counting_reads(md.root(), &now);
    let (stdout, _) = ok(&out);
    assert!(stdout.contains("20 delivered"), "{stdout}");
    assert!(rchar > 20 << 20, "{rchar}");
    // The 8-bit check ran for the bodies sent: their MAIL commands (those in the sink's reads
    // outside DATA) carry BODY=8BITMIME.
    let mails: Vec<String> = sink
        .events()
        .iter()
        .flat_map(|e| match e {
            integration_tests::relay::SinkEvent::Read { data, .. } => String::from_utf8_lossy(data)
                .lines()
                .filter(|l| l.starts_with("MAIL FROM:<big@src.test>"))
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    assert!(!mails.is_empty());
    assert!(
        mails.iter().all(|l| l.ends_with(" BODY=8BITMIME")),
        "{mails:?}"
    );
}

/// A non-loopback address of this machine (the source address toward a TEST-NET address; no
/// packet is sent), if it has one.
fn own_address() -> Option<std::net::IpAddr> {
    [
        "192.0.2.1:9",
        "198.51.100.1:9",
        "203.0.113.1:9",
        "10.255.255.1:9",
    ]
    .iter()
    .find_map(|dest| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        s.connect(dest).ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    })
}

/// Item 6 (addresses): an MX host whose address is one of this machine's interfaces is this
/// host, whatever its name: with nothing more preferred, the mail bounces 5.4.6 instead of
/// being sent to itself (here: a refused connection and a deferral, on the old code).
#[test]
fn mx_host_with_an_address_of_this_machine_is_itself() {
    let Some(ip) = own_address() else {
        eprintln!("no non-loopback address on this machine: skipping");
        return;
    };
    let record = format!("mx.selfip.test,{ip}");
    let Some(dns) = Dns::start(
        &["selfip.test,mx.selfip.test,10", "src.test,mx.src.test,10"],
        &[&record, "mx.src.test,127.0.46.3"],
    ) else {
        return;
    };
    let sink = Sink::start(&["127.0.46.2"], &[]);
    let (_d, md) = temp_maildir();
    let name = queue_sample(&md, "sip", "u@selfip.test");
    let port = sink.port.to_string();
    let (out, err) = ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(
        out.contains("0 delivered, 0 deferred, 1 bounced"),
        "{out}\n{err}"
    );
    assert!(
        err.contains("loops back to myself (MX host mx.selfip.test is this host)"),
        "{err}"
    );
    assert_eq!(dsn_statuses(&md, &[&name]), vec!["Status: 5.4.6"]);
}
