//! Delivery status notifications (RFC 3464): the bounce, delay warning or "relayed" notice sent
//! to the envelope sender.
//!
//! Owns: the text of a `multipart/report; report-type=delivery-status` message with a human
//! part, one per-recipient block per reported recipient (`Action: failed`, `delayed` or
//! `relayed`), and the original headers (`text/rfc822-headers`, so a large body is never
//! copied; `message/global-headers` when they hold 8-bit octets, RFC 6533), and a Message-ID
//! unique to each DSN. Must not: decide who is reported (NOTIFY, RFC 3461, is honoured by
//! `record::decide`), queue files (the recorder does), or report to a null sender.
//!
//! The returned content is always the header section only: what `RET=HDRS` asks for, and what
//! this relay returns for `RET=FULL` or no RET as well (RFC 3461 §4.3 lets an MTA return less
//! than the full message; a large body is never copied).
//!
//! Per message: `Original-Envelope-Id` (the client's ENVID, xtext decoded) when given, then
//! `Reporting-MTA`. Per recipient: `Original-Recipient` (the client's ORCPT, xtext decoded) when
//! given, `Final-Recipient`, `Action`, `Status`; `Remote-MTA: dns; <host name>` only when that
//! host gave the SMTP reply reported (not for a connection failure or an expiry without a
//! reply); `Will-Retry-Until` for a delayed recipient. The original header
//! section is copied line by line with the line ends the relay transmits (CRLF, bare CR or bare
//! LF each end a line, as in `body.rs`), every line whole (never split at a buffer boundary),
//! up to 64 KiB: a line that would pass the limit ends the copy.

use std::io::{self, BufRead, Write};
use std::time::SystemTime;

use maildir_core::date::rfc5322;

/// What is reported about a recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Could not be delivered: bounced or expired.
    Failed,
    /// Not delivered yet; still being retried (a delay warning).
    Delayed,
    /// Delivered to a next hop that does not offer DSN (no further notice will come).
    Relayed,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
        }
    }
}

/// One reported recipient.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// What happened to it.
    pub action: Action,
    /// The recipient address without brackets.
    pub rcpt: String,
    /// The client's ORCPT (`rfc822;a+40b`), as stored (xtext).
    pub orcpt: Option<String>,
    /// Enhanced status (`5.1.1`).
    pub status: String,
    /// The server's reply (`550 5.1.1 no such user`), when one was received.
    pub smtp_reply: Option<String>,
    /// Host that gave it.
    pub remote: Option<String>,
    /// Why, in words, when there was no SMTP reply.
    pub reason: String,
}

/// Longest run of original headers copied into the report.
const MAX_HEADERS: usize = 64 * 1024;

/// Who reports what about which message.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// This host's name.
    pub reporting_mta: &'a str,
    /// The bounced message's queue id.
    pub queue_id: &'a str,
    /// The envelope sender the DSN goes to (without brackets).
    pub sender: &'a str,
    /// When the message was queued.
    pub arrival: SystemTime,
    /// Now.
    pub now: SystemTime,
    /// The DSN's own Message-ID, with brackets ([`message_id`]).
    pub message_id: &'a str,
    /// The client's ENVID, as stored (xtext).
    pub envid: Option<&'a str>,
    /// Until when a delayed recipient is retried (arrival + queue lifetime).
    pub retry_until: SystemTime,
}

/// A Message-ID for one DSN: unique per DSN, also for several DSNs about one message.
pub fn message_id(queue_id: &str, reporting_mta: &str, now: SystemTime, random: u64) -> String {
    let t = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "<{}.{}.{:09}.{random:016x}.dsn@{}>",
        queue_id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_"),
        t.as_secs(),
        t.subsec_nanos(),
        ascii(reporting_mta)
    )
}

/// Writes the complete DSN message (headers and body, CRLF) into `out`. `original` reads the
/// transmitted part of the bounced message (after the envelope); only its header is copied.
pub fn write<W: Write, R: BufRead>(
    out: &mut W,
    report: &Report<'_>,
    rcpts: &[Recipient],
    original: R,
) -> io::Result<()> {
    let Report {
        reporting_mta,
        queue_id,
        sender,
        arrival,
        now,
        message_id,
        envid,
        retry_until,
    } = *report;
    let has = |a: Action| rcpts.iter().any(|r| r.action == a);
    // One DSN may report several kinds; the subject and the words follow the gravest.
    let kind = if has(Action::Failed) || rcpts.is_empty() {
        Action::Failed
    } else if has(Action::Delayed) {
        Action::Delayed
    } else {
        Action::Relayed
    };
    let (subject, words, headers_description) = match kind {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.",
            "Undelivered Message Headers",
        ),
        Action::Delayed => (
            "Delayed Mail (still being retried)",
            "Your message could not be delivered yet to one or more recipients.\r\nIt will be retried until it is too old; you do not need to send it again.",
            "Undelivered Message Headers",
        ),
        Action::Relayed => (
            "Successful Mail Delivery Report",
            "Your message was relayed to the destination(s) listed below, which\r\ndo not report delivery: you will receive no further notice of success.",
            "Message Headers",
        ),
    };
    let boundary = format!("{queue_id}/{reporting_mta}").replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '/',
        "_",
    );
    let date = rfc5322(now);
    let headers = read_headers(original)?;
    let eight_bit = headers.iter().any(|&b| b >= 0x80);
    let mut h = String::new();
    h.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n"
    ));
    h.push_str(&format!("To: <{sender}>\r\n"));
    h.push_str(&format!("Subject: {subject}\r\n"));
    h.push_str(&format!("Date: {date}\r\n"));
    h.push_str(&format!("Message-ID: {message_id}\r\n"));
    h.push_str("Auto-Submitted: auto-replied\r\n");
    h.push_str("MIME-Version: 1.0\r\n");
    h.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    let cte = if eight_bit { "8bit" } else { "7bit" };
    h.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n\r\n"));
    h.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    h.push_str(&format!("--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"));
    h.push_str(&format!(
        "This is the mail system at host {reporting_mta}.\r\n\r\n{words}\r\n\r\n"
    ));
    for f in rcpts {
        let why = f.smtp_reply.as_deref().unwrap_or(&f.reason);
        match &f.remote {
            Some(host) => h.push_str(&format!(
                "<{}>: host {host} said: {}\r\n",
                f.rcpt,
                ascii(why)
            )),
            None => h.push_str(&format!("<{}>: {}\r\n", f.rcpt, ascii(why))),
        }
    }
    h.push_str(&format!("\r\n--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"));
    if let Some(id) = envid {
        h.push_str(&format!("Original-Envelope-Id: {}\r\n", decoded(id)));
    }
    h.push_str(&format!(
        "Reporting-MTA: dns; {reporting_mta}\r\nX-Queue-ID: {queue_id}\r\nArrival-Date: {}\r\n",
        rfc5322(arrival)
    ));
    for f in rcpts {
        h.push_str("\r\n");
        if let Some(o) = &f.orcpt {
            h.push_str(&format!("Original-Recipient: {}\r\n", decoded(o)));
        }
        h.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            ascii(&f.rcpt),
            f.action.word(),
            f.status
        ));
        match (&f.smtp_reply, &f.remote) {
            (Some(r), Some(host)) => {
                h.push_str(&format!("Remote-MTA: dns; {}\r\n", ascii(host)));
                h.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", ascii(r)));
            }
            (Some(r), None) => h.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", ascii(r))),
            (None, _) => h.push_str(&format!(
                "Diagnostic-Code: X-Relay; {}\r\n",
                ascii(&f.reason)
            )),
        }
        h.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
        if f.action == Action::Delayed {
            h.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322(retry_until)));
        }
    }
    let headers_type = if eight_bit {
        "message/global-headers"
    } else {
        "text/rfc822-headers"
    };
    h.push_str(&format!("\r\n--{boundary}\r\nContent-Description: {headers_description}\r\nContent-Type: {headers_type}\r\n"));
    if eight_bit {
        h.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    h.push_str("\r\n");
    out.write_all(h.as_bytes())?;
    out.write_all(&headers)?;
    out.write_all(format!("\r\n--{boundary}--\r\n").as_bytes())
}

/// Reads the header section (up to the empty line) as CRLF lines, bounded by [`MAX_HEADERS`].
/// CRLF, bare CR and bare LF each end a line (as the body encoder sends them); a line is never
/// split, and one that would pass the bound ends the copy.
fn read_headers<R: BufRead>(mut r: R) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut after_cr = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            // No empty line: the whole message is a header section; a last unterminated line
            // is kept if it fits.
            if !line.is_empty() && out.len() + line.len() + 2 <= MAX_HEADERS {
                out.extend_from_slice(&line);
                out.extend_from_slice(b"\r\n");
            }
            return Ok(out);
        }
        let n = buf.len();
        for &b in buf {
            if after_cr {
                after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            if b == b'\r' || b == b'\n' {
                after_cr = b == b'\r';
                if line.is_empty() {
                    return Ok(out);
                }
                out.extend_from_slice(&line);
                out.extend_from_slice(b"\r\n");
                line.clear();
                continue;
            }
            if out.len() + line.len() + 3 > MAX_HEADERS {
                return Ok(out);
            }
            line.push(b);
        }
        r.consume(n);
    }
}

/// An xtext value decoded (RFC 3461 §4), as printable ASCII (anything else becomes `?`).
fn decoded(xtext: &str) -> String {
    let x = maildir_core::envelope::XText::parse(xtext);
    let bytes = x
        .map(|x| x.decode())
        .unwrap_or_else(|_| xtext.as_bytes().to_vec());
    ascii(&String::from_utf8_lossy(&bytes))
}

fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_shape() {
        let mut out = Vec::new();
        let failed = [Recipient {
            action: Action::Failed,
            orcpt: None,
            rcpt: "r@x.test".into(),
            status: "5.1.1".into(),
            smtp_reply: Some("550 5.1.1 no such user".into()),
            remote: Some("mx.x.test".into()),
            reason: String::new(),
        }];
        let orig = &b"Subject: hi\r\nFrom: a@b\r\n\r\nbody line\r\n"[..];
        let report = Report {
            reporting_mta: "relay.test",
            queue_id: "123.M1P2Q3.h",
            sender: "s@a.test",
            arrival: SystemTime::UNIX_EPOCH,
            now: SystemTime::UNIX_EPOCH,
            message_id: "<m@relay.test>",
            envid: None,
            retry_until: SystemTime::UNIX_EPOCH,
        };
        write(&mut out, &report, &failed, orig).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("multipart/report; report-type=delivery-status"));
        assert!(s.contains("Final-Recipient: rfc822; r@x.test\r\n"));
        assert!(s.contains("Status: 5.1.1\r\n"));
        assert!(s.contains("Subject: hi\r\nFrom: a@b\r\n\r\n--"));
        assert!(!s.contains("body line"));
        assert!(s.ends_with("--\r\n"));
        assert!(s.contains("Remote-MTA: dns; mx.x.test\r\n"));
        assert!(
            !s.contains("Original-Recipient"),
            "no ORCPT, no Original-Recipient"
        );
        assert!(s.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(s.contains("Content-Transfer-Encoding: 7bit\r\n"));
    }

    fn dsn(failed: &[Recipient], orig: &[u8]) -> String {
        let mut out = Vec::new();
        let report = Report {
            reporting_mta: "relay.test",
            queue_id: "q",
            sender: "s@a.test",
            arrival: SystemTime::UNIX_EPOCH,
            now: SystemTime::UNIX_EPOCH,
            message_id: "<m@relay.test>",
            envid: None,
            retry_until: SystemTime::UNIX_EPOCH,
        };
        write(&mut out, &report, failed, orig).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn part(s: &str, description: &str) -> String {
        let start = s.find(description).unwrap();
        let body = start + s[start..].find("\r\n\r\n").unwrap() + 4;
        let end = body + s[body..].find("\r\n--").unwrap();
        s[body..end].to_owned()
    }

    #[test]
    fn message_ids_differ() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let a = message_id("1.M2P3.h,S=9", "relay.test", t, 1);
        let b = message_id("1.M2P3.h,S=9", "relay.test", t, 2);
        assert_ne!(a, b);
        assert!(
            a.starts_with("<1.M2P3.h_S_9.1800000000.") && a.ends_with(".dsn@relay.test>"),
            "{a}"
        );
    }

    #[test]
    fn remote_mta_only_with_a_reply() {
        let no_reply = [Recipient {
            action: Action::Failed,
            orcpt: None,
            rcpt: "r@x.test".into(),
            status: "4.4.7".into(),
            smtp_reply: None,
            remote: Some("mx.x.test".into()),
            reason: "message expired; last error: connect refused".into(),
        }];
        let s = dsn(&no_reply, b"Subject: a\r\n\r\n");
        assert!(!s.contains("Remote-MTA"), "{s}");
        assert!(
            s.contains("Diagnostic-Code: X-Relay; message expired"),
            "{s}"
        );
    }

    #[test]
    fn copied_headers_keep_lines_whole_and_end_each_with_crlf() {
        let long = format!("X-Long: {}", "a".repeat(5000));
        let orig = format!("{long}\r\nSubject: one\rX-Bare: cr\nX-Lf: lf\r\n\r\nbody\r\n");
        let s = dsn(&[], orig.as_bytes());
        let h = part(&s, "Undelivered Message Headers");
        assert_eq!(
            h,
            format!("{long}\r\nSubject: one\r\nX-Bare: cr\r\nX-Lf: lf\r\n")
        );
        // A line that would pass the bound ends the copy; nothing of it is copied.
        let huge = format!(
            "A: 1\r\nX-Huge: {}\r\nB: 2\r\n\r\n",
            "b".repeat(MAX_HEADERS)
        );
        let h = part(&dsn(&[], huge.as_bytes()), "Undelivered Message Headers");
        assert_eq!(h, "A: 1\r\n");
        // Split at every index: the same copy.
        let whole = read_headers(orig.as_bytes()).unwrap();
        for i in 0..orig.len() {
            let (a, b) = orig.as_bytes().split_at(i);
            let r = std::io::BufReader::with_capacity(7, std::io::Read::chain(a, b));
            assert_eq!(read_headers(r).unwrap(), whole, "split at {i}");
        }
    }

    #[test]
    fn eight_bit_headers_are_global_headers() {
        let s = dsn(&[], "Subject: caf\u{e9}\r\n\r\nbody".as_bytes());
        assert!(
            s.contains("Content-Type: message/global-headers\r\n"),
            "{s}"
        );
        assert!(s.contains("Subject: caf\u{e9}\r\n"));
        assert!(!s.contains("Content-Transfer-Encoding: 7bit"), "{s}");
        assert!(!s.contains("text/rfc822-headers"));
    }

    fn recipient(action: Action, status: &str, reply: &str) -> Recipient {
        Recipient {
            action,
            rcpt: "r@x.test".into(),
            orcpt: None,
            status: status.into(),
            smtp_reply: Some(reply.into()),
            remote: Some("mx.x.test".into()),
            reason: String::new(),
        }
    }

    fn report_with(rcpts: &[Recipient], envid: Option<&str>, orig: &[u8]) -> String {
        let mut out = Vec::new();
        let report = Report {
            reporting_mta: "relay.test",
            queue_id: "q",
            sender: "s@a.test",
            arrival: SystemTime::UNIX_EPOCH,
            now: SystemTime::UNIX_EPOCH,
            message_id: "<m@relay.test>",
            envid,
            retry_until: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86400),
        };
        write(&mut out, &report, rcpts, orig).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// ENVID and ORCPT (RFC 3461) come back decoded as Original-Envelope-Id (per message, before
    /// Reporting-MTA) and Original-Recipient (first in the recipient's block), RFC 3464 §2.2-2.3.
    #[test]
    fn envid_and_orcpt_fields() {
        let mut r = recipient(Action::Failed, "5.1.1", "550 5.1.1 no");
        r.orcpt = Some("rfc822;a+40b.example".into());
        let plain = recipient(Action::Failed, "5.1.1", "550 5.1.1 no");
        let s = report_with(&[r, plain], Some("QQ+2Bxyz"), b"Subject: a\r\n\r\nbody\r\n");
        assert!(
            s.contains(
                "\r\n\r\nOriginal-Envelope-Id: QQ+xyz\r\nReporting-MTA: dns; relay.test\r\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("\r\n\r\nOriginal-Recipient: rfc822;a@b.example\r\nFinal-Recipient: rfc822; r@x.test\r\nAction: failed\r\n"),
            "{s}"
        );
        assert_eq!(s.matches("Original-Recipient").count(), 1, "{s}");
        // Control characters hidden in xtext never reach the report.
        let mut r = recipient(Action::Failed, "5.1.1", "550 no");
        r.orcpt = Some("rfc822;a+0D+0Ab".into());
        let s = report_with(&[r], Some("x+0Ay"), b"Subject: a\r\n\r\n");
        assert!(s.contains("Original-Recipient: rfc822;a??b\r\n"), "{s}");
        assert!(s.contains("Original-Envelope-Id: x?y\r\n"), "{s}");
        // Without them: neither field.
        let s = report_with(
            &[recipient(Action::Failed, "5.1.1", "550 no")],
            None,
            b"A: b\r\n\r\n",
        );
        assert!(!s.contains("Original-"), "{s}");
    }

    /// RET=HDRS (and every other RET): the returned content is the header section only.
    #[test]
    fn returned_content_is_headers_only() {
        let orig = b"Subject: secret plans\r\nFrom: a@b\r\n\r\nthe body itself\r\nmore body\r\n";
        let s = report_with(&[recipient(Action::Failed, "5.1.1", "550 no")], None, orig);
        let h = part(&s, "Undelivered Message Headers");
        assert_eq!(h, "Subject: secret plans\r\nFrom: a@b\r\n");
        assert!(s.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(
            !s.contains("the body itself") && !s.contains("more body"),
            "{s}"
        );
    }

    #[test]
    fn delayed_and_relayed_reports() {
        let s = report_with(
            &[recipient(Action::Delayed, "4.3.0", "451 4.3.0 later")],
            None,
            b"Subject: a\r\n\r\n",
        );
        assert!(
            s.contains("Subject: Delayed Mail (still being retried)\r\n"),
            "{s}"
        );
        assert!(s.contains("Action: delayed\r\nStatus: 4.3.0\r\n"), "{s}");
        assert!(
            s.contains("Will-Retry-Until: Fri, 2 Jan 1970 00:00:00 +0000\r\n"),
            "{s}"
        );
        let s = report_with(
            &[recipient(Action::Relayed, "2.0.0", "250 2.0.0 ok")],
            None,
            b"Subject: a\r\n\r\nbody\r\n",
        );
        assert!(
            s.contains("Subject: Successful Mail Delivery Report\r\n"),
            "{s}"
        );
        assert!(
            s.contains("Action: relayed\r\nStatus: 2.0.0\r\nRemote-MTA: dns; mx.x.test\r\n"),
            "{s}"
        );
        assert!(!s.contains("Will-Retry-Until"), "{s}");
        assert_eq!(
            part(&s, "Content-Description: Message Headers"),
            "Subject: a\r\n"
        );
        // A failure beside a relayed recipient: the subject follows the failure.
        let s = report_with(
            &[
                recipient(Action::Relayed, "2.0.0", "250 ok"),
                recipient(Action::Failed, "5.1.1", "550 no"),
            ],
            None,
            b"Subject: a\r\n\r\n",
        );
        assert!(
            s.contains("Subject: Undelivered Mail Returned to Sender\r\n"),
            "{s}"
        );
        assert!(s.contains("Action: relayed\r\n") && s.contains("Action: failed\r\n"));
    }
}
