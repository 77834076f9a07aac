//! smtp-relay and the DSN extension (RFC 3461; issue 15): the DSN parameters smtpd keeps in the
//! envelope (`X-Envelope-Params:`, `X-Rcpt-Params:`) go on to MX hosts that offer DSN, and the
//! DSNs the relay generates honour them (NOTIFY, RET, ENVID, ORCPT; RFC 3464 reports), against
//! dnsmasq and the recording sink (`tests/py/sink.py`, `--dsn` to offer the extension). Queue
//! files are written here with the DSN lines directly. Each test has its own 127.0.15N.x
//! addresses. The round trip through the real binaries (Python smtplib → smtpd → smtp-relay →
//! a second smtpd that offers DSN, its queue file holding the same parameters) uses
//! `--smarthost` on 127.0.0.1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use integration_tests::relay::{
    Dns, Sink, SinkEvent, relay, relay_ok, run_args, sample, state_of, temp_maildir,
    without_envelope,
};
use integration_tests::smtp::{self, server_log};
use integration_tests::{list, python};
use maildir_core::{Durability, EnvelopeReader, Maildir, Notify, Ret};

/// Queues a message with a hand-written envelope block (`lines`, CRLF added) in front of
/// [`sample`]; returns its file name.
fn queue_raw(md: &Maildir, lines: &[&str], id: &str) -> String {
    let mut d = md.deliver().expect("deliver");
    for l in lines {
        d.write_all(format!("{l}\r\n").as_bytes()).expect("write");
    }
    d.write_all(&sample(id, "r@dsn.test")).expect("write");
    let done = d.commit(Durability::NoFsync).expect("commit");
    done.path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name")
        .to_owned()
}

/// Every file in `new/` and `cur/` except the original `name`: the DSNs queued.
fn dsns(md: &Maildir, name: &str) -> Vec<PathBuf> {
    let mut v = list(md.new_dir());
    v.extend(list(md.cur_dir()));
    v.retain(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(name))
    });
    v
}

/// Parses a queued DSN with Python's `email`: the envelope lines, then one line per field of
/// interest (subject, per-message fields, each recipient block, the returned content's type and
/// text).
fn parse_dsn(path: &Path) -> String {
    let script = r#"
import sys, email
raw = open(sys.argv[1], 'rb').read()
lines = raw.split(b'\r\n')
print(lines[0].decode()); print(lines[1].decode())
msg = email.message_from_bytes(b'\r\n'.join(lines[2:]))
assert msg.get_content_type() == 'multipart/report', msg.get_content_type()
assert msg.get_param('report-type') == 'delivery-status'
print('Subject:', msg['Subject'])
parts = msg.get_payload()
ds = [p for p in parts if p.get_content_type() == 'message/delivery-status'][0]
blocks = ds.get_payload()
print('Envid:', blocks[0].get('Original-Envelope-Id'))
for b in blocks[1:]:
    print('Rcpt:', b.get('Final-Recipient'), '|', b.get('Action'), '|', b.get('Status'), '|', b.get('Original-Recipient'))
ret = parts[2]
print('Returned:', ret.get_content_type())
print(repr(ret.get_payload()))
"#;
    python(script, &[path.to_str().expect("utf-8 path")])
}

/// The bytes the sink read outside DATA (the commands), all connections together.
fn commands(sink: &Sink) -> String {
    let mut s = String::new();
    for e in sink.events() {
        if let SinkEvent::Read { data, .. } = e {
            s.push_str(&String::from_utf8_lossy(&data));
        }
    }
    s
}

/// NOTIFY=NEVER to an MX that refuses (5xx): that recipient bounces without a DSN; a recipient
/// of the same message without NOTIFY still gets one, naming it alone.
#[test]
fn notify_never_bounces_without_a_dsn() {
    let Some(dns) = Dns::start(&["n.test,mx.n.test,10"], &["mx.n.test,127.0.151.2"]) else {
        return;
    };
    let sink = Sink::start(
        &["127.0.151.2"],
        &["--code", "never@n.test=550", "--code", "usual@n.test=550"],
    );
    let (_d, md) = temp_maildir();
    let port = sink.port.to_string();
    let quiet = queue_raw(
        &md,
        &[
            "Return-Path: <s@src.test>",
            "X-Original-To: <never@n.test>",
            "X-Rcpt-Params: NOTIFY=NEVER",
        ],
        "n1",
    );
    let (out, _) = relay_ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(out.contains("0 delivered, 0 deferred, 1 bounced"), "{out}");
    assert!(dsns(&md, &quiet).is_empty(), "{:?}", dsns(&md, &quiet));
    // The message is finished (bounced), nothing left in new/.
    assert!(list(md.new_dir()).is_empty());
    let mixed = queue_raw(
        &md,
        &[
            "Return-Path: <s@src.test>",
            "X-Original-To: <never@n.test>",
            "X-Rcpt-Params: NOTIFY=NEVER",
            "X-Original-To: <usual@n.test>",
        ],
        "n2",
    );
    let (out, _) = relay_ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(out.contains("0 delivered, 0 deferred, 2 bounced"), "{out}");
    let found: Vec<PathBuf> = dsns(&md, &mixed)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains(&quiet))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let got = parse_dsn(&found[0]);
    assert!(
        got.contains("Rcpt: rfc822; usual@n.test | failed | 5.1.1"),
        "{got}"
    );
    assert!(!got.contains("never@n.test"), "{got}");
    // To a sink without DSN nothing extra was sent.
    assert!(!commands(&sink).contains("NOTIFY"), "{}", commands(&sink));
}

/// NOTIFY=SUCCESS,FAILURE delivered to a sink that lacks DSN: a "relayed" DSN to the sender,
/// with ENVID and ORCPT decoded in Original-Envelope-Id and Original-Recipient; the DSN lines
/// never reach the sink (stripped with the envelope) and no parameter is sent.
#[test]
fn notify_success_without_dsn_at_the_next_hop_gives_a_relayed_dsn() {
    let Some(dns) = Dns::start(&["s.test,mx.s.test,10"], &["mx.s.test,127.0.152.2"]) else {
        return;
    };
    let sink = Sink::start(&["127.0.152.2"], &[]);
    let (_d, md) = temp_maildir();
    let port = sink.port.to_string();
    let name = queue_raw(
        &md,
        &[
            "Return-Path: <s@src.test>",
            "X-Envelope-Params: RET=HDRS ENVID=QQ+2Bxyz",
            "X-Original-To: <ok@s.test>",
            "X-Rcpt-Params: NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ok+40s.test",
            "X-Original-To: <plain@s.test>",
        ],
        "s1",
    );
    let (out, _) = relay_ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(out.contains("2 delivered, 0 deferred, 0 bounced"), "{out}");
    let found = dsns(&md, &name);
    assert_eq!(found.len(), 1, "{found:?}");
    let got = parse_dsn(&found[0]);
    assert!(
        got.starts_with("Return-Path: <>\nX-Original-To: <s@src.test>\n"),
        "{got}"
    );
    assert!(
        got.contains("Subject: Successful Mail Delivery Report"),
        "{got}"
    );
    assert!(got.contains("Envid: QQ+xyz\n"), "{got}");
    assert!(
        got.contains("Rcpt: rfc822; ok@s.test | relayed | 2.0.0 | rfc822;ok@s.test\n"),
        "{got}"
    );
    assert!(
        !got.contains("plain@s.test"),
        "no NOTIFY, no success DSN: {got}"
    );
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    // What arrived is the stored file minus every envelope line, the DSN lines included.
    let stored = list(md.cur_dir())
        .into_iter()
        .find(|p| p.to_string_lossy().contains(&name))
        .expect("the original in cur/");
    let stored = std::fs::read(stored).expect("read the original");
    assert_eq!(msgs[0].4, without_envelope(&stored));
    let data = String::from_utf8_lossy(&msgs[0].4);
    assert!(data.starts_with("Received: "), "{data}");
    assert!(!data.contains("X-Rcpt-Params") && !data.contains("X-Envelope-Params"));
    let cmds = commands(&sink);
    assert!(
        !cmds.contains("NOTIFY") && !cmds.contains("ENVID"),
        "{cmds}"
    );
}

/// A sink that offers DSN gets RET/ENVID on MAIL and NOTIFY/ORCPT on RCPT exactly as stored
/// (xtext untouched); the success notice is then its job: no DSN from the relay.
#[test]
fn parameters_go_on_to_a_sink_that_offers_dsn() {
    let Some(dns) = Dns::start(&["d.test,mx.d.test,10"], &["mx.d.test,127.0.153.2"]) else {
        return;
    };
    let sink = Sink::start(&["127.0.153.2"], &["--dsn"]);
    let (_d, md) = temp_maildir();
    let port = sink.port.to_string();
    let name = queue_raw(
        &md,
        &[
            "Return-Path: <s@src.test>",
            "X-Envelope-Params: RET=HDRS ENVID=QQ+2Bxyz",
            "X-Original-To: <a@d.test>",
            "X-Rcpt-Params: NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40d.test",
            "X-Original-To: <b@d.test>",
        ],
        "d1",
    );
    let (out, _) = relay_ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(out.contains("2 delivered, 0 deferred, 0 bounced"), "{out}");
    let cmds = commands(&sink);
    let mail = cmds
        .lines()
        .find(|l| l.starts_with("MAIL FROM:"))
        .unwrap_or_default();
    assert!(
        mail.starts_with("MAIL FROM:<s@src.test> ") && mail.ends_with(" RET=HDRS ENVID=QQ+2Bxyz"),
        "{cmds}"
    );
    assert!(
        cmds.contains("RCPT TO:<a@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40d.test\r\n"),
        "{cmds}"
    );
    assert!(cmds.contains("RCPT TO:<b@d.test>\r\n"), "{cmds}");
    assert!(dsns(&md, &name).is_empty(), "{:?}", dsns(&md, &name));
    assert_eq!(sink.messages().len(), 1);
}

/// RET=HDRS: the bounce returns the header section only, never the body.
#[test]
fn ret_hdrs_bounce_holds_no_body() {
    let Some(dns) = Dns::start(&["h.test,mx.h.test,10"], &["mx.h.test,127.0.154.2"]) else {
        return;
    };
    let sink = Sink::start(&["127.0.154.2"], &["--code", "gone@h.test=550"]);
    let (_d, md) = temp_maildir();
    let port = sink.port.to_string();
    let name = queue_raw(
        &md,
        &[
            "Return-Path: <s@src.test>",
            "X-Envelope-Params: RET=HDRS",
            "X-Original-To: <gone@h.test>",
        ],
        "h1",
    );
    let (out, _) = relay_ok(&relay(md.root(), &run_args(&dns, &port)));
    assert!(out.contains("0 delivered, 0 deferred, 1 bounced"), "{out}");
    let found = dsns(&md, &name);
    assert_eq!(found.len(), 1, "{found:?}");
    let got = parse_dsn(&found[0]);
    assert!(
        got.contains("Rcpt: rfc822; gone@h.test | failed | 5.1.1"),
        "{got}"
    );
    assert!(got.contains("Returned: text/rfc822-headers\n"), "{got}");
    assert!(got.contains("Subject: test h1"), "{got}");
    let raw = std::fs::read(&found[0]).expect("read DSN");
    let raw = String::from_utf8_lossy(&raw);
    for body in ["Hello h1.", "leading dot line", "two dots", "last line"] {
        assert!(!raw.contains(body), "{body:?} in {raw}");
    }
}

/// `--delay-warning 1` after a 4xx: one `Action: delayed` DSN on the first run, none on the
/// second (the state file records it), while the message stays deferred.
#[test]
fn delay_warning_once_over_two_runs() {
    let Some(dns) = Dns::start(&["w.test,mx.w.test,10"], &["mx.w.test,127.0.155.2"]) else {
        return;
    };
    let sink = Sink::start(&["127.0.155.2"], &["--code", "slow@w.test=451"]);
    let (_d, md) = temp_maildir();
    let port = sink.port.to_string();
    let name = queue_raw(
        &md,
        &[
            "Return-Path: <s@src.test>",
            "X-Original-To: <slow@w.test>",
            "X-Rcpt-Params: NOTIFY=DELAY,FAILURE ORCPT=rfc822;slow+40w.test",
        ],
        "w1",
    );
    // Queued a minute ago (the arrival is the file's modification time): past the threshold
    // whatever the clock, without waiting.
    let path = md.new_dir().join(&name);
    let past = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(past))
        .expect("set the arrival time");
    let mut args = run_args(&dns, &port);
    args.extend(["--delay-warning", "1"]);
    let (out, _) = relay_ok(&relay(md.root(), &args));
    assert!(out.contains("0 delivered, 1 deferred, 0 bounced"), "{out}");
    let found = dsns(&md, &name);
    assert_eq!(found.len(), 1, "{found:?}");
    let got = parse_dsn(&found[0]);
    assert!(
        got.contains("Subject: Delayed Mail (still being retried)"),
        "{got}"
    );
    assert!(
        got.contains("Rcpt: rfc822; slow@w.test | delayed | 4.1.1 | rfc822;slow@w.test\n"),
        "{got}"
    );
    assert!(state_of(&md, &name).contains("warned 1\n"));
    let (listing, _) = relay_ok(&relay(md.root(), &["--list"]));
    assert!(listing.contains("  delay warning sent\n"), "{listing}");
    // Second run: deferred again, no second warning.
    args.push("--now");
    let (out, _) = relay_ok(&relay(md.root(), &args));
    assert!(out.contains("1 deferred"), "{out}");
    let again = dsns(&md, &name);
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(list(md.new_dir()).iter().any(|p| p.ends_with(&name)));
    // Without --delay-warning the default (4 h) is far off: a fresh message gets none.
    let (_d2, md2) = temp_maildir();
    let fresh = queue_raw(
        &md2,
        &["Return-Path: <s@src.test>", "X-Original-To: <slow@w.test>"],
        "w2",
    );
    let (out, _) = relay_ok(&relay(md2.root(), &run_args(&dns, &port)));
    assert!(out.contains("1 deferred"), "{out}");
    assert!(dsns(&md2, &fresh).is_empty());
}

/// Everything of a file smtpd wrote up to (not including) its `Received:` header: the
/// envelope block.
fn envelope_block(raw: &[u8]) -> &[u8] {
    let at = raw
        .windows(12)
        .position(|w| w == b"\r\nReceived: ")
        .unwrap_or_else(|| panic!("no Received: in {:?}", String::from_utf8_lossy(raw)));
    &raw[..at + 2]
}

/// What follows the first `Received:` header (and its continuation lines).
fn after_first_received(raw: &[u8]) -> &[u8] {
    let start = envelope_block(raw).len();
    let mut at = start;
    for (k, line) in raw[start..].split_inclusive(|&b| b == b'\n').enumerate() {
        if k > 0 && !line.starts_with(b" ") && !line.starts_with(b"\t") {
            break;
        }
        at += line.len();
    }
    &raw[at..]
}

const PY_DSN_CLIENT: &str = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
s = smtplib.SMTP(host, port, local_hostname="client.test", timeout=20)
s.ehlo()
print("extn", s.has_extn("dsn"))
print("mail", s.mail("s@src.test", ["RET=HDRS", "ENVID=QQ+2Bid+20x"])[0])
print("rcpt", s.rcpt("a@d.test", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;A+2Bx+40d.test"])[0])
print("rcpt", s.rcpt("b@d.test")[0])
print("rcpt", s.rcpt("c@d.test", ["NOTIFY=NEVER"])[0])
print("rcpt", s.rcpt("e@d.test", ["ORCPT=rfc822;e+40old.test"])[0])
print("data", s.data(b"From: <s@src.test>\r\nSubject: round trip\r\n\r\nbody\r\n")[0])
s.quit()
"#;

/// The DSN round trip through the real binaries: Python smtplib gives smtpd RET/ENVID on MAIL
/// and NOTIFY/ORCPT on RCPT (one recipient with none); smtp-relay takes the queued message to
/// a second smtpd that offers DSN; that smtpd's queue file holds the same envelope, parameter
/// lines and all, and the same message after its own `Received:`. The next hop offers DSN, so
/// the relay sends no "relayed" notice of its own. The message goes as BDAT.
#[test]
fn dsn_parameters_round_trip_through_the_relay_to_smtpd() {
    let first = smtp::start(&[]);
    let second = smtp::start(&["--no-fsync"]);
    let out = python(
        PY_DSN_CLIENT,
        &["127.0.0.1", &first.addr.port().to_string()],
    );
    let logs = || format!("{out}\n{}\n{}", server_log(&first), server_log(&second));
    let field = |k: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("{k} ")).map(str::to_owned))
            .collect()
    };
    assert_eq!(field("extn"), ["True"], "{}", logs());
    assert_eq!(field("mail"), ["250"], "{}", logs());
    assert_eq!(field("rcpt"), ["250", "250", "250", "250"], "{}", logs());
    assert_eq!(field("data"), ["250"], "{}", logs());
    let queued = first.new_files();
    assert_eq!(queued.len(), 1, "{}", logs());
    let original = std::fs::read(&queued[0]).expect("read the queued file");
    let block = envelope_block(&original);
    assert_eq!(
        String::from_utf8_lossy(block),
        "Return-Path: <s@src.test>\r\n\
         X-Envelope-Params: RET=HDRS ENVID=QQ+2Bid+20x\r\n\
         X-Original-To: <a@d.test>\r\n\
         X-Rcpt-Params: NOTIFY=SUCCESS,DELAY ORCPT=rfc822;A+2Bx+40d.test\r\n\
         X-Original-To: <b@d.test>\r\n\
         X-Original-To: <c@d.test>\r\n\
         X-Rcpt-Params: NOTIFY=NEVER\r\n\
         X-Original-To: <e@d.test>\r\n\
         X-Rcpt-Params: ORCPT=rfc822;e+40old.test\r\n",
        "{}",
        logs()
    );

    let md = Maildir::open(&first.maildir).expect("the first smtpd's Maildir");
    let host = second.addr.to_string();
    let (out, err) = relay_ok(&relay(
        &first.maildir,
        &[
            "--once",
            "--smarthost",
            &host,
            "--timeout",
            "30",
            "--helo",
            "relay.test",
        ],
    ));
    assert!(
        out.contains("4 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}\n{}",
        logs()
    );
    // Finished, and no DSN of the relay's own (the next hop offers DSN: success is its job).
    assert!(list(md.new_dir()).is_empty(), "{:?}", list(md.new_dir()));
    assert_eq!(list(md.cur_dir()).len(), 1, "{:?}", list(md.cur_dir()));

    let got = second.new_files();
    assert_eq!(got.len(), 1, "{out}\n{err}\n{}", logs());
    let arrived = std::fs::read(&got[0]).expect("read the second smtpd's file");
    assert_eq!(
        String::from_utf8_lossy(envelope_block(&arrived)),
        String::from_utf8_lossy(block),
        "{}",
        logs()
    );
    let (a, _) = EnvelopeReader::open(&original[..]).unwrap_or_else(|e| panic!("{e}"));
    let (b, _) = EnvelopeReader::open(&arrived[..]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b);
    assert_eq!(b.ret, Some(Ret::Hdrs));
    assert_eq!(
        b.envid.as_ref().map(|e| e.decode()),
        Some(b"QQ+id x".to_vec())
    );
    assert_eq!(
        b.rcpt_params(0).orcpt.as_ref().map(|o| o.address.decode()),
        Some(b"A+x@d.test".to_vec())
    );
    assert_eq!(b.rcpt_params(2).notify, Some(Notify::Never));
    // It went as BDAT (smtpd offers CHUNKING): the parameters travel on that path too.
    integration_tests::wait_for(
        "the second smtpd to log the relay's session",
        Duration::from_secs(10),
        || server_log(&second).contains(" mail=1 rcpt=4 bdat=1 "),
    );
    // The message itself: the first smtpd's trace header and what the client sent.
    let sent = &original[block.len()..];
    assert!(sent.starts_with(b"Received: from client.test "));
    assert_eq!(
        String::from_utf8_lossy(after_first_received(&arrived)),
        String::from_utf8_lossy(sent)
    );
}
