//! smtpd against real clients and a raw socket: the protocol, what lands in `new/`, limits,
//! relay policy, SMTP smuggling and SIGTERM (issue 3, acceptance items 1, 3, 4, 7, 8, 9).
//!
//! Load, idle connections and timeouts live in `smtpd_load.rs`, `smtpd_idle.rs` and
//! `smtpd_timeout.rs`, so their timing is not disturbed by these tests.

use integration_tests::smtp::{
    Client, HOST, Reply, Stored, only_one, parse_stored, server_log, start, startup_failure,
    stored, wait_exit,
};
use integration_tests::{have, python, wait_for};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const LOCAL2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn assert_body(st: &Stored, want: &[u8]) {
    assert!(
        st.body == want,
        "stored body differs from what was sent\n want: {:?}\n  got: {:?}",
        String::from_utf8_lossy(want),
        String::from_utf8_lossy(&st.body)
    );
}

/// `<secs>.M<usecs>P<pid>Q<seq>.<host>,S=<size>` with the server's pid and the file's size.
fn check_file_name(st: &Stored, pid: u32) {
    let name = st
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name");
    let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts = (|| {
        let (base, size) = name.rsplit_once(",S=")?;
        let (secs, rest) = base.split_once('.')?;
        let (usecs, rest) = rest.strip_prefix('M')?.split_once('P')?;
        let (p, rest) = rest.split_once('Q')?;
        let (seq, host) = rest.split_once('.')?;
        let ok = num(size)
            && num(secs)
            && num(usecs)
            && num(seq)
            && !host.is_empty()
            && p == pid.to_string();
        ok.then_some((size, usecs))
    })();
    let Some((size, usecs)) = parts else {
        panic!("file name {name:?} does not follow <secs>.M<usecs>P{pid}Q<seq>.<host>,S=<size>")
    };
    assert_eq!(
        size.parse::<usize>().ok(),
        Some(st.raw.len()),
        "S= in {name:?} is not the file size {}",
        st.raw.len()
    );
    assert!(
        usecs.parse::<u32>().expect("usecs") < 1_000_000,
        "usecs in {name:?}"
    );
}

// ---- item 1: Python smtplib writes, Python mailbox reads ---------------------------------

const PY_SEND_AND_READ: &str = r#"
import mailbox, smtplib, sys
host, port, mdir, msgfile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
msg = open(msgfile, "rb").read()
s = smtplib.SMTP(host, port, local_hostname="python.test", timeout=20)
code, _ = s.ehlo()
assert code == 250, code
s.mail("sender@example.org")
for r in ("a@example.com", "b@example.net", "c@example.com"):
    code, resp = s.rcpt(r)
    assert code == 250, (r, code, resp)
code, resp = s.data(msg)
print("data", code, resp.decode())
s.quit()
md = mailbox.Maildir(mdir, factory=None, create=False)
keys = md.keys()
print("count", len(keys))
m = md[keys[0]]
print("return_path", m["Return-Path"])
for t in m.get_all("X-Original-To"):
    print("to", t)
print("subject", m["Subject"])
print("payload", m.get_payload().replace("\r\n", "\n").encode().hex())
"#;

#[test]
fn python_smtplib_three_recipients_read_back_by_python_mailbox() {
    if !have("python3") {
        return;
    }
    let s = start(&[]);
    let headers = "From: Sender <sender@example.org>\r\nTo: a@example.com\r\n\
                   Subject: smtplib to three\r\nMessage-ID: <item1@example.org>\r\n\r\n";
    let text = "First line\r\n.leading dot\r\n..two leading dots\r\n.\r\n \
                . space then dot\r\n...\r\nLast line\r\n";
    let msg = format!("{headers}{text}");
    let file = s.maildir.parent().expect("tmp dir").join("msg.eml");
    std::fs::write(&file, &msg).expect("write message");
    let out = python(
        PY_SEND_AND_READ,
        &[
            "127.0.0.1",
            &s.addr.port().to_string(),
            s.maildir.to_str().expect("utf-8 path"),
            file.to_str().expect("utf-8 path"),
        ],
    );
    let field = |k: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("{k} ")).map(str::to_owned))
            .collect()
    };
    let data = field("data").concat();
    assert!(
        data.starts_with("250 2.0.0"),
        "smtplib got {data:?} after DATA\n{out}"
    );
    let queue_id = data
        .split("queued as ")
        .nth(1)
        .map(|t| t.trim().to_owned())
        .unwrap_or_else(|| panic!("no queue id in {data:?}"));
    assert_eq!(field("count"), ["1"], "python mailbox count\n{out}");
    assert_eq!(field("return_path"), ["<sender@example.org>"], "{out}");
    assert_eq!(
        field("to"),
        ["<a@example.com>", "<b@example.net>", "<c@example.com>"],
        "{out}"
    );
    assert_eq!(field("subject"), ["smtplib to three"], "{out}");
    let payload_hex = field("payload").concat();
    assert_eq!(
        payload_hex,
        text.replace("\r\n", "\n")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        "python mailbox payload differs from the text sent"
    );

    let st = only_one(&s);
    assert_eq!(st.return_path, "<sender@example.org>");
    assert_eq!(
        st.rcpts,
        ["<a@example.com>", "<b@example.net>", "<c@example.com>"]
    );
    let id = st
        .check_received("python.test", "127.0.0.1")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(id, queue_id, "Received id vs queue id in the 250 reply");
    assert_body(&st, msg.as_bytes());
    check_file_name(&st, s.child.id());
}

// ---- item 3: every error class in one session, then a delivery ---------------------------

#[test]
fn every_error_class_answered_then_delivery_succeeds() {
    let s = start(&["--max-recipients", "3", "--max-size", "10000"]);
    let mut c = Client::connect(s.addr);
    c.expect_reply(&format!("220 {HOST} ESMTP"));
    c.expect("MAIL FROM:<sender@example.org>", "503 5.5.1");
    let ehlo = c.expect("EHLO client.test", "250");
    assert!(ehlo.texts().contains(&"SIZE 10000"), "{:?}", ehlo.lines);
    c.expect("RCPT TO:<r1@example.com>", "503 5.5.1");
    c.expect("DATA", "503 5.5.1");
    c.expect("FROBNICATE now", "500 5.5.2");
    c.expect("MAIL FROM", "501 5.5.4");
    c.expect("HELO", "501 5.5.4");
    c.expect(&format!("NOOP {}", "x".repeat(600)), "500 5.5.2");
    c.expect("MAIL FROM:<sender@bad..domain>", "501 5.1.7");
    c.expect("MAIL FROM:<jörg@example.org>", "553 5.6.7");
    c.expect("MAIL FROM:<sender@example.org> FROB=1", "555 5.5.4");
    c.expect("MAIL FROM:<sender@example.org> SIZE=20000", "552 5.3.4");
    c.expect("MAIL FROM:<sender@example.org> SIZE=500", "250 2.1.0");
    c.expect("MAIL FROM:<other@example.org>", "503 5.5.1");
    c.expect("DATA", "503 5.5.1");
    c.expect("RCPT TO:<a b@example.com>", "501 5.1.3");
    c.expect("RCPT TO:<r1@example.com>", "250 2.1.5");
    c.expect("RCPT TO:<r2@example.com>", "250 2.1.5");
    c.expect("RCPT TO:<r3@example.com>", "250 2.1.5");
    c.expect("RCPT TO:<r4@example.com>", "452 4.5.3");
    c.expect("DATA now", "501 5.5.4");
    c.expect("DATA", "354");
    let big = "y".repeat(78) + "\r\n";
    c.send(big.repeat(300).as_bytes());
    c.send(b".\r\n");
    c.expect_reply("552 5.3.4");
    assert!(s.new_files().is_empty(), "the too-big message was stored");

    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    c.expect("RCPT TO:<r1@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: after errors\r\n\r\nstill works\r\n.\r\n");
    c.expect_reply("250 2.0.0");
    c.expect("VRFY postmaster", "252 2.0.0");
    c.expect("HELP", "214 2.0.0");
    c.expect("NOOP", "250 2.0.0");
    c.expect("RSET", "250 2.0.0");
    c.expect("QUIT", "221 2.0.0");
    c.expect_close(Duration::from_secs(5));
    let st = only_one(&s);
    assert_eq!(st.rcpts, ["<r1@example.com>"]);
    assert_body(&st, b"Subject: after errors\r\n\r\nstill works\r\n");
}

#[test]
fn twenty_errors_get_421_and_close() {
    let s = start(&[]);
    let mut c = Client::greeted(s.addr);
    let mut errors = 0;
    loop {
        let r = c.cmd(&format!("BOGUS{errors}"));
        if r.code == 421 {
            assert!(
                r.starts(&format!("421 4.7.0 {HOST}")),
                "{:?}\n{}",
                r.last(),
                c.transcript
            );
            break;
        }
        if !r.starts("500 5.5.2") {
            c.fail("expected 500 5.5.2 for an unknown command");
        }
        errors += 1;
        if errors > 25 {
            c.fail("no 421 after 25 errors");
        }
    }
    assert!(
        (19..=20).contains(&errors),
        "421 came after {errors} error replies, want it at the 20th\n{}",
        c.transcript
    );
    c.expect_close(Duration::from_secs(5));
}

// ---- item 4: the same dialogue byte by byte, in chunks, in one write ---------------------

const DIALOGUE: &[u8] = b"EHLO split.test\r\n\
MAIL FROM:<sender@example.org>\r\n\
RCPT TO:<one@example.com>\r\n\
RCPT TO:<two@example.net>\r\n\
DATA\r\n\
Subject: first\r\n\r\nline 1\r\n..stuffed\r\n\r\n.\r\n\
NOOP\r\n\
MAIL FROM:<>\r\n\
RCPT TO:<three@example.org>\r\n\
DATA\r\n\
Subject: second\r\n\r\nx\r\n.\r\n\
RSET\r\n\
QUIT\r\n";

const DIALOGUE_REPLIES: &[&str] = &[
    "250",
    "250 2.1.0",
    "250 2.1.5",
    "250 2.1.5",
    "354",
    "250 2.0.0",
    "250 2.0.0",
    "250 2.1.0",
    "250 2.1.5",
    "354",
    "250 2.0.0",
    "250 2.0.0",
    "221 2.0.0",
];

/// Runs DIALOGUE with `send`; returns the reply statuses and the stored messages by subject.
fn run_dialogue(how: &str, send: impl FnOnce(&mut Client)) -> (Vec<String>, Vec<Stored>) {
    let s = start(&[]);
    let mut c = Client::greeted(s.addr);
    send(&mut c);
    let mut statuses = Vec::new();
    for _ in DIALOGUE_REPLIES {
        let r: Reply = c.reply();
        statuses.push(r.status());
    }
    c.expect_close(Duration::from_secs(5));
    if statuses != DIALOGUE_REPLIES {
        c.fail(&format!(
            "{how}: replies {statuses:?}, want {DIALOGUE_REPLIES:?}"
        ));
    }
    let mut all = stored(&s);
    all.sort_by_key(|st| st.header("Subject"));
    assert_eq!(all.len(), 2, "{how}: {:?}", s.new_files());
    (statuses, all)
}

#[test]
fn dialogue_one_octet_per_write_in_chunks_and_in_one_write_agree() {
    let whole = run_dialogue("one write", |c| c.send(DIALOGUE));
    let bytewise = run_dialogue("one octet per write", |c| c.send_bytewise(DIALOGUE));
    let chunks = run_dialogue("7 octets per write", |c| c.send_chunked(DIALOGUE, 7));
    for (how, (statuses, msgs)) in [("one octet per write", &bytewise), ("chunks", &chunks)] {
        assert_eq!(statuses, &whole.0, "{how}: replies differ from one write");
        for (a, b) in msgs.iter().zip(&whole.1) {
            assert_eq!(a.return_path, b.return_path, "{how}");
            assert_eq!(a.rcpts, b.rcpts, "{how}");
            assert_body(a, &b.body);
        }
    }
    let (_, msgs) = whole;
    assert_eq!(msgs[0].return_path, "<sender@example.org>");
    assert_eq!(msgs[0].rcpts, ["<one@example.com>", "<two@example.net>"]);
    assert_body(
        &msgs[0],
        b"Subject: first\r\n\r\nline 1\r\n.stuffed\r\n\r\n",
    );
    assert_eq!(msgs[1].return_path, "<>");
    assert_eq!(msgs[1].rcpts, ["<three@example.org>"]);
    assert_body(&msgs[1], b"Subject: second\r\n\r\nx\r\n");
    for m in &msgs {
        m.check_received("split.test", "127.0.0.1")
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

// ---- item 7: SMTP smuggling, one test per sequence ---------------------------------------

fn smuggle(seq: &[u8]) {
    let s = start(&[]);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    c.expect("RCPT TO:<rcpt@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    let mut data = b"Subject: smuggle\r\n\r\nhello".to_vec();
    data.extend_from_slice(seq);
    data.extend_from_slice(
        b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n\
          Subject: smuggled\r\n\r\nSmuggled body\r\n.\r\n",
    );
    c.send(&data);
    c.expect_reply("250 2.0.0");
    // Had the server ended the data at `seq`, this reply would be the smuggled MAIL's.
    c.expect("QUIT", "221 2.0.0");
    c.expect_close(Duration::from_secs(5));
    let st = only_one(&s);
    assert_eq!(st.return_path, "<sender@example.org>");
    assert_eq!(st.rcpts, ["<rcpt@example.com>"]);
    assert_body(
        &st,
        b"Subject: smuggle\r\n\r\nhello\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n\
          RCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nSmuggled body\r\n",
    );
}

#[test]
fn smuggling_lf_dot_lf_is_content() {
    smuggle(b"\n.\n");
}

#[test]
fn smuggling_cr_dot_cr_is_content() {
    smuggle(b"\r.\r");
}

#[test]
fn smuggling_lf_dot_crlf_is_content() {
    smuggle(b"\n.\r\n");
}

#[test]
fn smuggling_crlf_dot_lf_is_content() {
    smuggle(b"\r\n.\n");
}

#[test]
fn data_edges_empty_message_unstuffing_bare_eols_long_lines_8bit() {
    let s = start(&[]);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO client.test", "250");
    // `.` right after 354: the CRLF that ended DATA counts, so this is an empty message.
    c.send_mail("sender@example.org", &["empty@example.com"], b"");
    // A leading `..` right after 354 is unstuffed too.
    let long = "L".repeat(2500);
    let mut body = format!("..first\r\n..\r\n...\r\nnormal\r\n{long}\r\n").into_bytes();
    body.extend_from_slice(b"caf\xc3\xa9 \xff\xfe\x80\r\n");
    c.expect("MAIL FROM:<sender@example.org> BODY=8BITMIME", "250 2.1.0");
    c.expect("RCPT TO:<stuffed@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(&body);
    c.send(b".\r\n");
    c.expect_reply("250 2.0.0");
    // Bare LF and bare CR are stored as CRLF.
    c.send_mail(
        "sender@example.org",
        &["bare@example.com"],
        b"Subject: bare\r\n\r\na\nb\r\nc\rd\r\n",
    );
    c.expect("QUIT", "221 2.0.0");

    let all = stored(&s);
    assert_eq!(all.len(), 3, "{:?}", s.new_files());
    let by = |r: &str| {
        all.iter()
            .find(|st| st.rcpts == [format!("<{r}>")])
            .unwrap_or_else(|| panic!("no message for {r}"))
    };
    assert_body(by("empty@example.com"), b"");
    let mut want = format!(".first\r\n.\r\n..\r\nnormal\r\n{long}\r\n").into_bytes();
    want.extend_from_slice(b"caf\xc3\xa9 \xff\xfe\x80\r\n");
    assert_body(by("stuffed@example.com"), &want);
    assert_body(
        by("bare@example.com"),
        b"Subject: bare\r\n\r\na\r\nb\r\nc\r\nd\r\n",
    );
}

// ---- item 8: overlong line, too big a message, too many recipients ----------------------

#[test]
fn overlong_command_lines_are_discarded_and_the_session_goes_on() {
    let s = start(&[]);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO client.test", "250");
    // 512 octets with CRLF is the limit: accepted.
    c.expect(&format!("NOOP {}", "a".repeat(505)), "250 2.0.0");
    // 513: refused.
    c.expect(&format!("NOOP {}", "b".repeat(506)), "500 5.5.2");
    // A 100 kB line is one error, not many, and the next command is answered normally.
    c.expect(
        &format!("MAIL FROM:<{}@example.org>", "c".repeat(100_000)),
        "500 5.5.2",
    );
    c.expect("NOOP", "250 2.0.0");
    c.send_mail(
        "sender@example.org",
        &["rcpt@example.com"],
        b"Subject: after a long line\r\n\r\nok\r\n",
    );
    c.expect("QUIT", "221 2.0.0");
    let st = only_one(&s);
    assert_body(&st, b"Subject: after a long line\r\n\r\nok\r\n");
}

#[test]
fn three_mib_message_over_max_size_gets_552_and_nothing_is_stored() {
    let s = start(&["--max-size", "1048576"]);
    let mut c = Client::greeted(s.addr);
    let ehlo = c.expect("EHLO client.test", "250");
    assert!(
        ehlo.texts().contains(&"SIZE 1048576"),
        "EHLO does not advertise SIZE 1048576: {:?}",
        ehlo.lines
    );
    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    c.expect("RCPT TO:<rcpt@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    let line = format!("{}\r\n", "z".repeat(78));
    let big = line.repeat(3 * 1024 * 1024 / line.len() + 1);
    assert!(big.len() > 3 * 1024 * 1024);
    c.send(big.as_bytes());
    c.send(b".\r\n");
    c.expect_reply("552 5.3.4");
    assert!(s.new_files().is_empty(), "the 3 MiB message is in new/");
    wait_for(
        "tmp/ to be emptied of the rejected message",
        Duration::from_secs(5),
        || integration_tests::list(&s.maildir.join("tmp")).is_empty(),
    );
    // The session is still usable.
    c.send_mail(
        "sender@example.org",
        &["rcpt@example.com"],
        b"Subject: small\r\n\r\nfits\r\n",
    );
    c.expect("QUIT", "221 2.0.0");
    let st = only_one(&s);
    assert_body(&st, b"Subject: small\r\n\r\nfits\r\n");
}

#[test]
fn recipient_101_gets_452_and_the_first_100_are_delivered() {
    let s = start(&[]);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    // Pipelined: all 101 RCPTs in one write.
    let rcpts: Vec<String> = (1..=101).map(|i| format!("r{i}@example.com")).collect();
    let batch: String = rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n")).collect();
    c.send(batch.as_bytes());
    for i in 1..=100 {
        let r = c.reply();
        if !r.starts("250 2.1.5") {
            c.fail(&format!("RCPT {i}: {:?}", r.last()));
        }
    }
    c.expect_reply("452 4.5.3");
    c.expect("DATA", "354");
    c.send(b"Subject: hundred\r\n\r\nto many\r\n.\r\n");
    c.expect_reply("250 2.0.0");
    c.expect("QUIT", "221 2.0.0");
    let st = only_one(&s);
    let want: Vec<String> = rcpts[..100].iter().map(|r| format!("<{r}>")).collect();
    assert_eq!(st.rcpts, want);
}

// ---- item 9: relay policy, and the connection limits ------------------------------------

#[test]
fn untrusted_client_gets_554_at_rcpt_trusted_one_delivers() {
    let s = start(&["--trust", "127.0.0.2/32"]);
    let mut c = Client::connect_from(Ipv4Addr::LOCALHOST, s.addr);
    c.expect_reply("220 ");
    c.expect("EHLO untrusted.test", "250");
    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    let r = c.expect("RCPT TO:<rcpt@example.com>", "554 5.7.1");
    assert!(
        r.last().contains("<rcpt@example.com>") && r.last().contains("Relay access denied"),
        "{:?}",
        r.last()
    );
    let r = c.cmd("DATA");
    if r.code < 500 {
        c.fail("DATA after a refused recipient must be refused");
    }
    c.expect("QUIT", "221 2.0.0");
    assert!(s.new_files().is_empty());

    let mut t = Client::connect_from(LOCAL2, s.addr);
    t.expect_reply("220 ");
    t.expect("EHLO trusted.test", "250");
    let id = t.send_mail(
        "sender@example.org",
        &["rcpt@example.com"],
        b"Subject: trusted\r\n\r\nok\r\n",
    );
    t.expect("QUIT", "221 2.0.0");
    let st = only_one(&s);
    let rid = st
        .check_received("trusted.test", "127.0.0.2")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rid, id);
}

/// Connects from `from` and reads the first reply; Err describes a failure.
fn try_greet(from: Ipv4Addr, addr: SocketAddr) -> Result<Client, String> {
    let stream = integration_tests::smtp::connect_from(from, addr).map_err(|e| e.to_string())?;
    let mut c = Client::from_stream(stream);
    let r = c.try_reply_until(Instant::now() + Duration::from_secs(5))?;
    if r.starts("220 ") {
        Ok(c)
    } else {
        Err(format!("got {:?}", r.last()))
    }
}

/// Opens `n` greeted connections from `from`, retrying while the server still counts the
/// connections of an earlier attempt (or of the start-up probe).
fn greeted_set(n: usize, from: Ipv4Addr, addr: SocketAddr) -> Vec<Client> {
    let mut held = Vec::new();
    wait_for(
        &format!("{n} connections from {from} to be greeted with 220"),
        Duration::from_secs(5),
        || {
            held.clear();
            for _ in 0..n {
                match try_greet(from, addr) {
                    Ok(c) => held.push(c),
                    Err(_) => {
                        held.clear();
                        return false;
                    }
                }
            }
            true
        },
    );
    held
}

#[test]
fn per_ip_limit_refuses_untrusted_clients_only() {
    let s = start(&["--trust", "127.0.0.2/32", "--max-per-ip", "2"]);
    let mut held = greeted_set(2, Ipv4Addr::LOCALHOST, s.addr);
    let mut third = Client::connect_from(Ipv4Addr::LOCALHOST, s.addr);
    third.expect_reply("421 4.7.0");
    third.expect_close(Duration::from_secs(5));
    // A trusted client is not limited per IP.
    let trusted = greeted_set(4, LOCAL2, s.addr);
    assert_eq!(trusted.len(), 4);
    // Closing one untrusted connection frees its place.
    held.pop();
    wait_for(
        "a freed per-IP slot to be reusable",
        Duration::from_secs(5),
        || try_greet(Ipv4Addr::LOCALHOST, s.addr).is_ok(),
    );
    // The ones held are still served.
    held[0].expect("NOOP", "250 2.0.0");
}

#[test]
fn max_connections_refuses_with_421_4_3_2() {
    let s = start(&["--max-connections", "3"]);
    let mut held = greeted_set(3, Ipv4Addr::LOCALHOST, s.addr);
    let mut fourth = Client::connect(s.addr);
    fourth.expect_reply("421 4.3.2");
    fourth.expect_close(Duration::from_secs(5));
    held.pop();
    wait_for(
        "a freed connection slot to be reusable",
        Duration::from_secs(5),
        || try_greet(Ipv4Addr::LOCALHOST, s.addr).is_ok(),
    );
    held[0].expect("NOOP", "250 2.0.0");
}

// ---- the rest of the command set --------------------------------------------------------

#[test]
fn greeting_helo_ehlo_and_informational_commands() {
    let s = start(&[]);
    let mut c = Client::connect(s.addr);
    let g = c.expect_reply(&format!("220 {HOST} ESMTP"));
    assert_eq!(g.lines.len(), 1, "{:?}", g.lines);
    let h = c.expect("HELO helo.test", &format!("250 {HOST}"));
    assert_eq!(
        h.lines.len(),
        1,
        "HELO reply must be one line: {:?}",
        h.lines
    );
    let e = c.expect("EHLO ehlo.test", "250");
    assert_eq!(e.lines[0], format!("250-{HOST}"), "{:?}", e.lines);
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(e.texts().contains(&ext), "EHLO lacks {ext}: {:?}", e.lines);
    }
    c.expect("VRFY postmaster", "252 2.0.0");
    c.expect("HELP", "214 2.0.0");
    c.expect("NOOP", "250 2.0.0");
    c.expect("RSET", "250 2.0.0");
    c.expect("QUIT", "221 2.0.0");
    c.expect_close(Duration::from_secs(5));
}

#[test]
fn lower_case_space_after_colon_and_postmaster_are_accepted() {
    let s = start(&["--postmaster", "hostmaster@example.net"]);
    let mut c = Client::greeted(s.addr);
    c.expect("ehlo lower.test", "250");
    c.expect("mail from: <sender@example.org>", "250 2.1.0");
    c.expect("rcpt to:<postmaster>", "250 2.1.5");
    c.expect("RcPt To: <Other@Example.COM>", "250 2.1.5");
    c.expect("rcpt to:<third@example.com>  ", "250 2.1.5");
    c.expect("data", "354");
    c.send(b"Subject: lower\r\n\r\nok\r\n.\r\n");
    c.expect_reply("250 2.0.0");
    c.expect("quit", "221 2.0.0");
    let st = only_one(&s);
    assert_eq!(st.return_path, "<sender@example.org>");
    assert_eq!(
        st.rcpts,
        [
            "<hostmaster@example.net>",
            "<Other@Example.COM>",
            "<third@example.com>"
        ]
    );
}

#[test]
fn utf8_addresses_need_and_accept_smtputf8() {
    let s = start(&[]);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO utf8.test", "250");
    c.expect("MAIL FROM:<jörg@example.org>", "553 5.6.7");
    c.expect(
        "MAIL FROM:<jörg@example.org> SMTPUTF8 BODY=8BITMIME SIZE=100",
        "250 2.1.0",
    );
    c.expect("RCPT TO:<usér@exämple.com>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send("Subject: ünïcode\r\n\r\nhéllo\r\n.\r\n".as_bytes());
    c.expect_reply("250 2.0.0");
    c.expect("QUIT", "221 2.0.0");
    let st = only_one(&s);
    assert_eq!(st.return_path, "<jörg@example.org>");
    assert_eq!(st.rcpts, ["<usér@exämple.com>"]);
    assert_body(&st, "Subject: ünïcode\r\n\r\nhéllo\r\n".as_bytes());
}

#[test]
fn second_ehlo_and_rset_reset_the_transaction() {
    let s = start(&[]);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO one.test", "250");
    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    c.expect("RCPT TO:<rcpt@example.com>", "250 2.1.5");
    c.expect("EHLO two.test", "250");
    c.expect("DATA", "503 5.5.1");
    c.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    c.expect("RSET", "250 2.0.0");
    c.expect("RCPT TO:<rcpt@example.com>", "503 5.5.1");
    c.expect("HELO three.test", &format!("250 {HOST}"));
    let id = c.send_mail(
        "sender@example.org",
        &["rcpt@example.com"],
        b"Subject: reset\r\n\r\nok\r\n",
    );
    c.expect("QUIT", "221 2.0.0");
    let st = only_one(&s);
    assert_eq!(
        st.check_received_with("three.test", "127.0.0.1", "SMTP")
            .unwrap_or_else(|e| panic!("{e}")),
        id
    );
}

// ---- SIGTERM: idle sessions get 421, a transfer in progress finishes, exit 0 -----------

#[test]
fn sigterm_answers_idle_421_finishes_transfer_and_exits_0() {
    let mut s = start(&[]);
    let mut busy = Client::greeted(s.addr);
    busy.expect("EHLO busy.test", "250");
    busy.expect("MAIL FROM:<sender@example.org>", "250 2.1.0");
    busy.expect("RCPT TO:<rcpt@example.com>", "250 2.1.5");
    busy.expect("DATA", "354");
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    let mut idle = Client::greeted(s.addr);
    idle.expect("EHLO idle.test", "250");

    s.signal(libc::SIGTERM);
    idle.expect_reply("421 4.3.2");
    idle.expect_close(Duration::from_secs(5));
    // No new connection is greeted any more.
    if let Ok(stream) = std::net::TcpStream::connect(s.addr) {
        let mut late = Client::from_stream(stream);
        if let Ok(r) = late.try_reply_until(Instant::now() + Duration::from_millis(500))
            && r.code == 220
        {
            late.fail("a connection made after SIGTERM was greeted with 220");
        }
    }
    busy.send(b"second half\r\n.\r\n");
    busy.expect_reply("250 2.0.0");
    busy.line("QUIT");
    // 221, or a 421 sent before our QUIT arrived, or the close: all fine after the 250.
    if let Ok(r) = busy.try_reply_until(Instant::now() + Duration::from_secs(5))
        && r.code != 221
        && r.code != 421
    {
        busy.fail("unexpected reply after the transfer finished");
    }
    let code = wait_exit(&mut s, Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "exit status after SIGTERM\n{}",
        server_log(&s)
    );
    let st = only_one(&s);
    assert_body(
        &st,
        b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n",
    );
    let _ = parse_stored(&st.path).expect("parses");
}

#[test]
fn sigint_is_a_stop_signal_too() {
    let mut s = start(&[]);
    let mut idle = Client::greeted(s.addr);
    idle.expect("EHLO idle.test", "250");
    s.signal(libc::SIGINT);
    idle.expect_reply("421 4.3.2");
    idle.expect_close(Duration::from_secs(5));
    let code = wait_exit(&mut s, Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "exit status after SIGINT\n{}",
        server_log(&s)
    );
}

// ---- many transactions pipelined in one write, durable and --no-fsync -------------------

fn pipelined_transactions(extra: &[&str]) {
    let s = start(extra);
    let mut c = Client::greeted(s.addr);
    c.expect("EHLO pipe.test", "250");
    let n = 50;
    let mut all = Vec::new();
    for i in 0..n {
        all.extend_from_slice(
            format!(
                "MAIL FROM:<s{i}@example.org>\r\nRCPT TO:<r{i}@example.com>\r\nDATA\r\n\
                 Subject: pipe {i}\r\n\r\n.body {i}\r\n.\r\n"
            )
            .as_bytes(),
        );
    }
    all.extend_from_slice(b"QUIT\r\n");
    c.send(&all);
    let mut ids = Vec::new();
    for i in 0..n {
        for want in ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"] {
            let r = c.reply();
            if !r.starts(want) {
                c.fail(&format!("transaction {i}: want {want}"));
            }
            if want == "250 2.0.0" {
                ids.push(r.queue_id().expect("queue id"));
            }
        }
    }
    c.expect_reply("221 2.0.0");
    c.expect_close(Duration::from_secs(5));
    let msgs = stored(&s);
    assert_eq!(msgs.len(), n, "{extra:?}");
    for m in &msgs {
        let subject = m.header("Subject").expect("Subject");
        let i: usize = subject
            .strip_prefix("pipe ")
            .and_then(|x| x.parse().ok())
            .expect("number");
        assert_eq!(m.return_path, format!("<s{i}@example.org>"));
        assert_eq!(m.rcpts, [format!("<r{i}@example.com>")]);
        assert_eq!(m.id().as_deref(), Some(ids[i].as_str()), "queue id of {i}");
        assert_body(
            m,
            format!("Subject: pipe {i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
    }
}

#[test]
fn fifty_transactions_in_one_write_durable() {
    pipelined_transactions(&[]);
}

#[test]
fn fifty_transactions_in_one_write_no_fsync() {
    pipelined_transactions(&["--no-fsync"]);
}

// ---- start-up errors: one clear line on stderr, non-zero exit ----------------------------

#[test]
fn port_in_use_and_unusable_maildir_fail_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let md = dir.path().join("Maildir");
    let err = startup_failure(&["--maildir", md.to_str().expect("utf-8"), "--listen", &addr]);
    assert!(err.contains(&addr), "stderr does not name {addr}: {err:?}");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let bad = file.join("Maildir");
    startup_failure(&[
        "--maildir",
        bad.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
    ]);
}
