//! Delivery status notifications (RFC 3464): the bounce sent to the envelope sender.
//!
//! Owns: the text of a `multipart/report; report-type=delivery-status` message with a human
//! part, one per-recipient block per failed recipient, and the original headers
//! (`text/rfc822-headers`, so a large body is never copied). Must not: decide who bounces, queue
//! files (the recorder does), or bounce to a null sender.

use std::io::{self, BufRead, Read, Write};
use std::time::SystemTime;

use maildir_core::date::rfc5322;

/// One failed recipient.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The recipient address without brackets.
    pub rcpt: String,
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
}

/// Writes the complete DSN message (headers and body, CRLF) into `out`. `original` reads the
/// transmitted part of the bounced message (after the envelope); only its header is copied.
pub fn write<W: Write, R: BufRead>(
    out: &mut W,
    report: &Report<'_>,
    failed: &[Failed],
    original: R,
) -> io::Result<()> {
    let Report {
        reporting_mta,
        queue_id,
        sender,
        arrival,
        now,
    } = *report;
    let boundary = format!("{queue_id}/{reporting_mta}").replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '/',
        "_",
    );
    let date = rfc5322(now);
    let msgid = format!(
        "<{}.dsn@{}>",
        queue_id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_"),
        reporting_mta
    );
    let mut h = String::new();
    h.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n"
    ));
    h.push_str(&format!("To: <{sender}>\r\n"));
    h.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    h.push_str(&format!("Date: {date}\r\n"));
    h.push_str(&format!("Message-ID: {msgid}\r\n"));
    h.push_str("Auto-Submitted: auto-replied\r\n");
    h.push_str("MIME-Version: 1.0\r\n");
    h.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    h.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
    h.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    h.push_str(&format!("--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"));
    h.push_str(&format!(
        "This is the mail system at host {reporting_mta}.\r\n\r\nI'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.\r\n\r\n"
    ));
    for f in failed {
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
    h.push_str(&format!(
        "Reporting-MTA: dns; {reporting_mta}\r\nX-Queue-ID: {queue_id}\r\nArrival-Date: {}\r\n",
        rfc5322(arrival)
    ));
    for f in failed {
        h.push_str(&format!("\r\nFinal-Recipient: rfc822; {}\r\nOriginal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n", ascii(&f.rcpt), ascii(&f.rcpt), f.status));
        if let Some(host) = &f.remote {
            h.push_str(&format!("Remote-MTA: dns; {host}\r\n"));
        }
        match &f.smtp_reply {
            Some(r) => h.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", ascii(r))),
            None => h.push_str(&format!(
                "Diagnostic-Code: X-Relay; {}\r\n",
                ascii(&f.reason)
            )),
        }
        h.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
    }
    h.push_str(&format!("\r\n--{boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"));
    out.write_all(h.as_bytes())?;
    copy_headers(out, original)?;
    out.write_all(format!("\r\n--{boundary}--\r\n").as_bytes())
}

/// Copies the header section (up to the empty line), with CRLF line ends, bounded.
fn copy_headers<W: Write, R: BufRead>(out: &mut W, mut r: R) -> io::Result<()> {
    let mut line = Vec::new();
    let mut total = 0;
    loop {
        line.clear();
        let n = Read::take(&mut r, 4096).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.is_empty() || total + line.len() > MAX_HEADERS {
            return Ok(());
        }
        total += line.len() + 2;
        out.write_all(&line)?;
        out.write_all(b"\r\n")?;
    }
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
        let failed = [Failed {
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
        };
        write(&mut out, &report, &failed, orig).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("multipart/report; report-type=delivery-status"));
        assert!(s.contains("Final-Recipient: rfc822; r@x.test\r\n"));
        assert!(s.contains("Status: 5.1.1\r\n"));
        assert!(s.contains("Subject: hi\r\nFrom: a@b\r\n\r\n--"));
        assert!(!s.contains("body line"));
        assert!(s.ends_with("--\r\n"));
    }
}
