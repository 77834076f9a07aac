//! The reply catalogue: every reply smtpd sends, as a code with its enhanced status code
//! (RFC 3463) and text, from the greeting and the EHLO lines to `421` on a full server. Each
//! constant's and builder's doc starts with its literal `NNN X.Y.Z`, so grepping a code finds
//! where it is made.
//!
//! Owns: reply text and wire format. Must not: decide which reply a command deserves (the
//! session does) or do I/O.

use std::borrow::Cow;
use std::fmt::Write as _;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8, pub u16, pub u16);

/// One SMTP reply: three-digit code, optional enhanced status, text (single line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code, given on every reply but the greeting and EHLO lines.
    pub status: Option<Status>,
    /// Human-readable text.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with fixed text.
    pub const fn fixed(code: u16, status: Status, text: &'static str) -> Reply {
        Reply {
            code,
            status: Some(status),
            text: Cow::Borrowed(text),
        }
    }

    /// A reply with text built at run time.
    pub fn new(code: u16, status: Status, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: Some(status),
            text: text.into(),
        }
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the reply, CRLF-terminated, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write_line(out, self.code, ' ', self.status, &self.text);
    }
}

/// Appends one reply line `CODE<sep>[STATUS ]TEXT\r\n`.
pub fn write_line(out: &mut Vec<u8>, code: u16, sep: char, status: Option<Status>, text: &str) {
    let mut line = String::with_capacity(16 + text.len());
    // Writing into a String cannot fail.
    let _ = write!(line, "{code}{sep}");
    if let Some(Status(c, s, d)) = status {
        let _ = write!(line, "{c}.{s}.{d} ");
    }
    line.push_str(text);
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a multi-line reply (EHLO): every line but the last with `-`.
pub fn write_multiline(out: &mut Vec<u8>, code: u16, lines: &[&str]) {
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        write_line(out, code, sep, None, l);
    }
}

/// `250 2.1.0 Ok` to MAIL.
pub const MAIL_OK: Reply = Reply::fixed(250, Status(2, 1, 0), "Ok");
/// `250 2.1.5 Ok` to RCPT.
pub const RCPT_OK: Reply = Reply::fixed(250, Status(2, 1, 5), "Ok");
/// `250 2.0.0 Ok` to RSET and NOOP.
pub const OK: Reply = Reply::fixed(250, Status(2, 0, 0), "Ok");
/// `354 End data with <CR><LF>.<CR><LF>` to DATA (no enhanced code on intermediate replies, as
/// Postfix).
pub const START_DATA: Reply = Reply {
    code: 354,
    status: None,
    text: Cow::Borrowed("End data with <CR><LF>.<CR><LF>"),
};
/// `221 2.0.0 Bye` to QUIT.
pub const BYE: Reply = Reply::fixed(221, Status(2, 0, 0), "Bye");
/// `252 2.0.0` to VRFY: we do not verify, but will try.
pub const VRFY: Reply = Reply::fixed(
    252,
    Status(2, 0, 0),
    "Cannot VRFY user, but will accept message and attempt delivery",
);
/// `214 2.0.0` to HELP: the command list.
pub const HELP: Reply = Reply::fixed(
    214,
    Status(2, 0, 0),
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
);
/// `503 5.5.1` MAIL before HELO/EHLO.
pub const NEED_HELO: Reply = Reply::fixed(503, Status(5, 5, 1), "Error: send HELO/EHLO first");
/// `503 5.5.1` MAIL inside a transaction.
pub const NESTED_MAIL: Reply = Reply::fixed(503, Status(5, 5, 1), "Error: nested MAIL command");
/// `503 5.5.1` RCPT before MAIL.
pub const NEED_MAIL: Reply = Reply::fixed(503, Status(5, 5, 1), "Error: need MAIL command");
/// `503 5.5.1` DATA in a transaction that began its content with BDAT (RFC 3030 §3).
pub const DATA_AFTER_BDAT: Reply = Reply::fixed(
    503,
    Status(5, 5, 1),
    "Error: DATA after BDAT in one transaction",
);
/// `503 5.5.1` DATA before any accepted RCPT.
pub const NEED_RCPT: Reply = Reply::fixed(503, Status(5, 5, 1), "Error: need RCPT command");
/// `500 5.5.2` Unknown command.
pub const UNRECOGNIZED: Reply = Reply::fixed(500, Status(5, 5, 2), "Error: command not recognized");
/// `501 5.5.2` HELO/EHLO argument that is neither a domain name nor an address literal.
pub const BAD_HELO: Reply = Reply::fixed(
    501,
    Status(5, 5, 2),
    "Error: HELO/EHLO needs a domain name or an address literal",
);
/// `500 5.5.2` Command line over the limit.
pub const LINE_TOO_LONG: Reply = Reply::fixed(500, Status(5, 5, 2), "Error: line too long");
/// `500 5.5.2` Command line that is not UTF-8 or holds control characters.
pub const BAD_CHARACTERS: Reply =
    Reply::fixed(500, Status(5, 5, 2), "Error: invalid characters in command");
/// `452 4.5.3` Too many recipients.
pub const TOO_MANY_RECIPIENTS: Reply =
    Reply::fixed(452, Status(4, 5, 3), "Error: too many recipients");
/// `552 5.3.4` Message too big (declared in SIZE= or found while streaming).
pub const TOO_BIG: Reply = Reply::fixed(552, Status(5, 3, 4), "Message size exceeds fixed limit");
/// `553 5.6.7` UTF-8 address without the SMTPUTF8 parameter.
pub const NEED_SMTPUTF8: Reply = Reply::fixed(
    553,
    Status(5, 6, 7),
    "Error: UTF-8 address requires the SMTPUTF8 parameter",
);
/// `220 2.0.0 Ready to start TLS` to STARTTLS: the handshake follows.
pub const READY_TLS: Reply = Reply::fixed(220, Status(2, 0, 0), "Ready to start TLS");
/// `502 5.5.1` STARTTLS when no certificate is configured.
pub const NOT_IMPLEMENTED: Reply =
    Reply::fixed(502, Status(5, 5, 1), "Error: command not implemented");
/// `554 5.5.1` STARTTLS on a connection that is already encrypted.
pub const TLS_ACTIVE: Reply = Reply::fixed(554, Status(5, 5, 1), "Error: TLS already active");
/// `503 5.5.1` STARTTLS inside a mail transaction.
pub const TRANSACTION_IN_PROGRESS: Reply =
    Reply::fixed(503, Status(5, 5, 1), "Error: MAIL transaction in progress");
/// `451 4.3.0` Writing the queue file failed.
pub const STORE_FAILED: Reply = Reply::fixed(451, Status(4, 3, 0), "Error: queue file write error");
/// `452 4.3.1` The disk is full (or a quota is reached).
pub const STORE_FULL: Reply = Reply::fixed(452, Status(4, 3, 1), "Insufficient system storage");

/// `554 5.4.6` More `Received:` fields than `--max-hops`: a mail loop (RFC 5321 §6.3).
pub const TOO_MANY_HOPS: Reply = Reply::fixed(
    554,
    Status(5, 4, 6),
    "Error: too many hops (Received: headers), mail loop?",
);
/// `550 5.1.1` `RCPT TO:<postmaster>` without `--postmaster`: there is no local delivery to
/// take it.
pub const NO_POSTMASTER: Reply = Reply::fixed(
    550,
    Status(5, 1, 1),
    "<postmaster>: no local delivery on this server; write to postmaster@<domain>",
);

/// `221 2.7.0 Error: this is an SMTP server` to an HTTP verb (GET, POST, CONNECT): the session
/// ends at once.
pub const NOT_SMTP: Reply = Reply::fixed(221, Status(2, 7, 0), "Error: this is an SMTP server");

/// `220 <host> ESMTP smtpd`: the greeting (no enhanced code, RFC 2034 §3).
pub fn greeting(host: &str) -> Reply {
    Reply {
        code: 220,
        status: None,
        text: Cow::Owned(format!("{host} ESMTP smtpd")),
    }
}

/// `250 <host>` to HELO (no enhanced code).
pub fn helo(host: &str) -> Reply {
    Reply {
        code: 250,
        status: None,
        text: Cow::Owned(host.to_string()),
    }
}

/// Appends the multi-line `250` to EHLO: `250-<host>`, then the extensions (STARTTLS only when
/// `starttls`, `AUTH PLAIN LOGIN` only when `auth`), no enhanced codes.
pub fn write_ehlo(out: &mut Vec<u8>, host: &str, max_size: u64, starttls: bool, auth: bool) {
    let size = format!("SIZE {max_size}");
    let mut lines = vec![host, "PIPELINING", &size, "8BITMIME"];
    if starttls {
        lines.push("STARTTLS");
    }
    if auth {
        lines.push("AUTH PLAIN LOGIN");
    }
    lines.extend(["ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN"]);
    write_multiline(out, 250, &lines);
}

/// `554 5.4.6 Error: mail loop: message already delivered to a recipient (Delivered-To)`: the
/// message already carries `Delivered-To:` for one of its local recipients, a loop.
pub const DELIVERED_TO_LOOP: Reply = Reply::fixed(
    554,
    Status(5, 4, 6),
    "Error: mail loop: message already delivered to a recipient (Delivered-To)",
);

/// `235 2.7.0 Authentication successful` (RFC 4954).
pub const AUTH_OK: Reply = Reply::fixed(235, Status(2, 7, 0), "Authentication successful");
/// `535 5.7.8` Wrong user name or password (RFC 4954 §6).
pub const AUTH_FAILED: Reply = Reply::fixed(535, Status(5, 7, 8), "Error: authentication failed");
/// `538 5.7.11` AUTH on a connection that must first be encrypted (RFC 4954 §6).
pub const AUTH_NEEDS_TLS: Reply = Reply::fixed(
    538,
    Status(5, 7, 11),
    "Encryption required for requested authentication mechanism",
);
/// `454 4.7.0` The password could not be checked now (LDAP down): try later (RFC 4954 §6).
pub const AUTH_TEMP_FAILURE: Reply =
    Reply::fixed(454, Status(4, 7, 0), "Temporary authentication failure");
/// `501 5.7.0` The client cancelled the exchange with `*` (RFC 4954 §4).
pub const AUTH_CANCELLED: Reply = Reply::fixed(501, Status(5, 7, 0), "Authentication aborted");
/// `501 5.5.2` A SASL response that is not base64 or not the mechanism's format.
pub const AUTH_BAD_RESPONSE: Reply =
    Reply::fixed(501, Status(5, 5, 2), "Error: cannot decode response");
/// `503 5.5.1` AUTH after a successful AUTH (RFC 4954 §4).
pub const AUTH_ALREADY: Reply = Reply::fixed(503, Status(5, 5, 1), "Error: already authenticated");
/// `503 5.5.1` AUTH on a server without accounts.
pub const AUTH_NOT_ENABLED: Reply =
    Reply::fixed(503, Status(5, 5, 1), "Error: authentication not enabled");
/// `503 5.5.1` AUTH before EHLO (HELO offers no extensions).
pub const AUTH_NEEDS_EHLO: Reply = Reply::fixed(503, Status(5, 5, 1), "Error: send EHLO first");
/// `504 5.5.4` A SASL mechanism that is not offered.
pub const AUTH_MECHANISM: Reply =
    Reply::fixed(504, Status(5, 5, 4), "Unrecognized authentication type");
/// `530 5.7.0` MAIL before AUTH on a submission listener (RFC 6409, RFC 4954 §6).
pub const AUTH_REQUIRED: Reply = Reply::fixed(530, Status(5, 7, 0), "Authentication required");

/// `334 <challenge>`: the next step of a SASL exchange (no enhanced code, RFC 4954 §4).
pub fn challenge(text: &'static str) -> Reply {
    Reply {
        code: 334,
        status: None,
        text: Cow::Borrowed(text),
    }
}

/// `553 5.7.1 <sender>: Sender address rejected: not owned by user <user>`: an authenticated
/// client's MAIL FROM is not one of its addresses (Postfix's `reject_sender_login_mismatch`).
pub fn sender_not_owned(sender: &str, user: &str) -> Reply {
    Reply::new(
        553,
        Status(5, 7, 1),
        format!("{sender}: Sender address rejected: not owned by user {user}"),
    )
}

/// `421 4.7.0 <host> Error: too many failed logins from your address`: a banned client
/// address, at connect or after the failure that banned it; the connection is closed.
pub fn banned(host: &str) -> Reply {
    Reply::new(
        421,
        Status(4, 7, 0),
        format!("{host} Error: too many failed logins from your address"),
    )
}

/// `501 5.5.4 Syntax: <usage>`.
pub fn syntax(usage: &'static str) -> Reply {
    Reply::new(501, Status(5, 5, 4), format!("Syntax: {usage}"))
}

/// `555 5.5.4 Unsupported option: <param>`.
pub fn unsupported_option(param: &str) -> Reply {
    Reply::new(555, Status(5, 5, 4), format!("Unsupported option: {param}"))
}

/// `501 5.5.4 Duplicate <what> parameter`.
pub fn duplicate_parameter(what: &str) -> Reply {
    Reply::new(501, Status(5, 5, 4), format!("Duplicate {what} parameter"))
}

/// `250 2.0.0 Ok: <n> octets` to a BDAT chunk that is not the last (RFC 3030).
pub fn chunk_received(n: u64) -> Reply {
    Reply::new(250, Status(2, 0, 0), format!("Ok: {n} octets"))
}

/// `501 5.5.4 Bad <what> parameter`.
pub fn bad_parameter(what: &str) -> Reply {
    Reply::new(501, Status(5, 5, 4), format!("Bad {what} parameter"))
}

/// `501 5.1.7 Bad sender address syntax: <why>`.
pub fn bad_sender(why: &str) -> Reply {
    Reply::new(
        501,
        Status(5, 1, 7),
        format!("Bad sender address syntax: {why}"),
    )
}

/// `501 5.1.3 Bad recipient address syntax: <why>`.
pub fn bad_recipient(why: &str) -> Reply {
    Reply::new(
        501,
        Status(5, 1, 3),
        format!("Bad recipient address syntax: {why}"),
    )
}

/// `554 5.7.1 <rcpt>: Relay access denied`.
pub fn relay_denied(rcpt: &str) -> Reply {
    Reply::new(554, Status(5, 7, 1), format!("{rcpt}: Relay access denied"))
}

/// `550 5.1.1 <rcpt>: Recipient address rejected: User unknown` (a local domain, nobody there).
pub fn unknown_user(rcpt: &str) -> Reply {
    Reply::new(
        550,
        Status(5, 1, 1),
        format!("{rcpt}: Recipient address rejected: User unknown"),
    )
}

/// `452 4.2.2 <rcpt>: Recipient address rejected: Mailbox full` (at or over the quota).
pub fn mailbox_full(rcpt: &str) -> Reply {
    Reply::new(
        452,
        Status(4, 2, 2),
        format!("{rcpt}: Recipient address rejected: Mailbox full"),
    )
}

/// `452 4.2.2 Mailbox full: <addr>, ...` after DATA or BDAT LAST: the message would take
/// these local users past their quota; nothing is delivered, the client retries later.
pub fn message_mailbox_full(addresses: &[String]) -> Reply {
    let list: Vec<String> = addresses.iter().map(|a| format!("<{a}>")).collect();
    Reply::new(
        452,
        Status(4, 2, 2),
        format!("Mailbox full: {}; try again later", list.join(", ")),
    )
}

/// `250 2.0.0 Ok: queued as <id>`.
pub fn queued(id: &str) -> Reply {
    Reply::new(250, Status(2, 0, 0), format!("Ok: queued as {id}"))
}

/// `421 4.4.2 <host> Error: timeout exceeded`.
pub fn timeout(host: &str) -> Reply {
    Reply::new(
        421,
        Status(4, 4, 2),
        format!("{host} Error: timeout exceeded"),
    )
}

/// `421 4.7.0 <host> Error: too many errors`.
pub fn too_many_errors(host: &str) -> Reply {
    Reply::new(
        421,
        Status(4, 7, 0),
        format!("{host} Error: too many errors"),
    )
}

/// `421 4.3.2 <host> Service shutting down`.
pub fn shutting_down(host: &str) -> Reply {
    Reply::new(
        421,
        Status(4, 3, 2),
        format!("{host} Service shutting down"),
    )
}

/// `421 4.3.2 <host> Error: too many connections`.
pub fn too_many_connections(host: &str) -> Reply {
    Reply::new(
        421,
        Status(4, 3, 2),
        format!("{host} Error: too many connections"),
    )
}

/// `421 4.7.0 <host> Error: too many connections from <ip>`.
pub fn too_many_from(host: &str, ip: &str) -> Reply {
    Reply::new(
        421,
        Status(4, 7, 0),
        format!("{host} Error: too many connections from {ip}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lines() {
        let mut out = Vec::new();
        MAIL_OK.write_to(&mut out);
        START_DATA.write_to(&mut out);
        write_multiline(&mut out, 250, &["host", "PIPELINING", "SMTPUTF8"]);
        assert_eq!(
            out,
            b"250 2.1.0 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250-host\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n"
        );
    }

    #[test]
    fn greeting_helo_and_ehlo() {
        let mut out = Vec::new();
        greeting("mx.test").write_to(&mut out);
        helo("mx.test").write_to(&mut out);
        write_ehlo(&mut out, "mx.test", 1000, true, false);
        write_ehlo(&mut out, "mx.test", 1000, false, false);
        NOT_SMTP.write_to(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "220 mx.test ESMTP smtpd\r\n250 mx.test\r\n\
             250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-STARTTLS\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n\
             250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n\
             221 2.7.0 Error: this is an SMTP server\r\n"
        );
    }
}
