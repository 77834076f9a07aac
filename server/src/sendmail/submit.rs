//! `sendmail`'s submission through the same SMTP session machine as smtpd
//! (`proto::smtp::server::session::Session`): `-bs` hands it stdin and stdout; a plain
//! submission speaks the dialogue itself (EHLO, MAIL, RCPT..., DATA, the message) and checks
//! each reply. The session's `Begin`/`Write`/`Commit` actions go to smtpd's queue-file writer
//! ([`crate::store::QueueFile`]) on the queue Maildir, committed durably (fsync, rename into
//! `new/`, fsync `new/`) before the `250`. So a queue file from `sendmail` is written by the
//! same code, in the same format, as one from smtpd.
//!
//! Owns: driving the session synchronously (no reactor, no timers: input is a local pipe), the
//! plain submission's dialogue and its reply checks, and the outcome as a sysexits code.
//! Must not: parse the command line, locate the queue or read headers (see the sibling modules).

use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use maildir_core::Maildir;
use proto::smtp::server::auth::{AuthOutcome, AuthSettings, UserLookup};
use proto::smtp::server::session::{
    Action, Event, OUTPUT_LIMIT, Session, SessionConfig, TxFailure,
};

use super::exit;
use super::message::{self, Header};
use crate::store::QueueFile;

/// Where a local submission appears to come from (the `Received:` header's address).
const LOCAL_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
/// Most recipients of one submission (the session's limit; more is `EX_USAGE`).
pub const MAX_RECIPIENTS: usize = 1000;

/// The session settings for a local submission: the host name, `max_size`, no TLS, no local
/// delivery (every recipient is queued for smtp-relay).
pub fn session_config(hostname: &str, max_size: u64) -> SessionConfig {
    SessionConfig {
        hostname: hostname.to_owned(),
        max_size,
        max_recipients: MAX_RECIPIENTS,
        timeout: Duration::from_secs(3600),
        max_errors: crate::config::MAX_ERRORS,
        starttls: false,
        max_hops: 50,
        postmaster: None,
        output_limit: OUTPUT_LIMIT,
        local: None,
        // No AUTH: the caller is a local program, known by its uid, not by a password.
        auth: AuthSettings::default(),
    }
}

/// A session and the queue file its actions write.
pub struct Driver {
    session: Session,
    maildir: Maildir,
    file: QueueFile,
    /// The `Begin` failed (`EX_CANTCREAT` rather than `EX_TEMPFAIL`).
    begin_failed: bool,
    /// The queue ID of the last message committed.
    committed: Option<String>,
}

impl Driver {
    /// A session on `maildir` from a trusted local peer (it may name any recipient).
    pub fn new(config: SessionConfig, maildir: Maildir) -> Driver {
        Driver {
            session: Session::new(Arc::new(config), LOCAL_PEER, true, Instant::now()),
            maildir,
            file: QueueFile::default(),
            begin_failed: false,
            committed: None,
        }
    }

    /// Feeds `input`; returns how much the session consumed (it stops early only when
    /// closed). The session's replies are appended to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        loop {
            let n = self.session.handle_input(&input[pos..], Instant::now());
            pos += n;
            let acted = self.act();
            self.take_output(out);
            if pos == input.len() || self.session.is_closed() || (n == 0 && !acted) {
                return pos;
            }
        }
    }

    /// The input ended.
    pub fn eof(&mut self, out: &mut Vec<u8>) {
        self.session.handle_eof();
        self.act();
        self.take_output(out);
    }

    /// True once the session ended (QUIT, too many errors).
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    fn take_output(&mut self, out: &mut Vec<u8>) {
        let o = self.session.poll_output();
        out.extend_from_slice(o);
        let n = o.len();
        self.session.output_written(n);
    }

    /// Carries out the session's actions; true if there were any.
    fn act(&mut self) -> bool {
        let mut any = false;
        while let Some(action) = self.session.poll_action() {
            any = true;
            match action {
                Action::Begin => {
                    let r = self.file.begin_in(&self.maildir);
                    self.begin_failed = r.is_err();
                    self.session
                        .handle_begun(r, Instant::now(), SystemTime::now());
                }
                Action::Write(bytes) => self.file.write(bytes),
                Action::Commit(_) => {
                    let r = self.file.commit_now();
                    self.session.handle_stored(r, Instant::now());
                }
                Action::Abort => self.file.abort(),
                // Never offered (`starttls: false`).
                Action::StartTls => self.session.force_close(),
                // Never asked: no AUTH offered, no directory beyond the (absent) users file.
                Action::Authenticate { .. } => self
                    .session
                    .handle_auth(AuthOutcome::TempFail, Instant::now()),
                Action::LookupUser { .. } => self
                    .session
                    .handle_user_lookup(UserLookup::TempFail, Instant::now()),
            }
        }
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::TxCommitted { id, .. } => self.committed = Some(id),
                Event::TxFailed(TxFailure::Begin(_)) => self.begin_failed = true,
                _ => {}
            }
        }
        any
    }
}

/// `-bs`: the SMTP dialogue on `input` and `output` until QUIT or end of input.
pub fn smtp_dialogue(
    mut driver: Driver,
    input: &mut impl Read,
    output: &mut impl Write,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    driver.feed(&[], &mut out);
    loop {
        output.write_all(&out)?;
        output.flush()?;
        out.clear();
        if driver.is_closed() {
            return Ok(());
        }
        let n = match input.read(&mut buf) {
            Ok(0) => {
                driver.eof(&mut out);
                output.write_all(&out)?;
                return output.flush();
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        let used = driver.feed(&pending, &mut out);
        pending.drain(..used);
    }
}

/// What a plain submission sends.
pub struct Submission {
    /// The envelope sender, as for `MAIL FROM:<...>` (empty: the null sender).
    pub sender: String,
    /// The recipients, as for `RCPT TO:<...>`.
    pub recipients: Vec<String>,
    /// `RET=` and `ENVID=` for MAIL, already formatted (` RET=HDRS`...), or empty.
    pub mail_params: String,
    /// `NOTIFY=` for each RCPT, already formatted, or empty.
    pub rcpt_params: String,
    /// A lone dot does not end the input (`-i`).
    pub ignore_dots: bool,
}

/// A failed submission: the sysexits code and the message for stderr.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What went wrong.
    pub message: String,
}

/// Queues the message: the fixed-up `header`, then the rest of `body` (the input after the
/// header section). Returns the queue ID.
pub fn submit(
    mut driver: Driver,
    sub: &Submission,
    header: &Header,
    body: &mut impl BufRead,
) -> Result<String, Failure> {
    let mut out = Vec::new();
    driver.feed(&[], &mut out);
    expect(&mut driver, b"EHLO localhost\r\n", 2, exit::SOFTWARE)?;
    let mail = format!("MAIL FROM:<{}>{}\r\n", sub.sender, sub.mail_params);
    expect(&mut driver, mail.as_bytes(), 2, exit::DATAERR)?;
    for r in &sub.recipients {
        let rcpt = format!("RCPT TO:<{r}>{}\r\n", sub.rcpt_params);
        expect(&mut driver, rcpt.as_bytes(), 2, exit::NOUSER)?;
    }
    let data = expect(&mut driver, b"DATA\r\n", 3, exit::TEMPFAIL);
    if let Err(mut f) = data {
        if driver.begin_failed {
            f.code = exit::CANTCREAT;
        }
        return Err(f);
    }
    let mut chunk = Vec::with_capacity(64 * 1024);
    for f in &header.fields {
        for l in &f.lines {
            message::data_line(&mut chunk, l);
        }
    }
    if !header.ended {
        chunk.extend_from_slice(b"\r\n");
        let mut next = header.first_body_line.clone();
        loop {
            let line = match next.take() {
                Some(l) => l,
                None => match message::read_line(body) {
                    Ok(Some(l)) => l,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(Failure {
                            code: exit::IOERR,
                            message: format!("cannot read the message: {e}"),
                        });
                    }
                },
            };
            if message::ends_input(&line, sub.ignore_dots) {
                break;
            }
            message::data_line(&mut chunk, &line);
            if chunk.len() >= 64 * 1024 {
                send(&mut driver, &chunk);
                chunk.clear();
            }
        }
    }
    chunk.extend_from_slice(b".\r\n");
    let reply = exchange(&mut driver, &chunk);
    let (class, text) = reply_class(&reply);
    if class != Some(2) {
        let code = match (class, reply.get(..3)) {
            (Some(5), Some(b"552")) | (Some(5), Some(b"554")) => exit::DATAERR,
            (Some(4), _) if driver.begin_failed => exit::CANTCREAT,
            _ => exit::TEMPFAIL,
        };
        return Err(Failure {
            code,
            message: format!("message not queued: {text}"),
        });
    }
    let _ = exchange(&mut driver, b"QUIT\r\n");
    driver.committed.ok_or(Failure {
        code: exit::SOFTWARE,
        message: format!("no queue ID after: {text}"),
    })
}

/// Sends a command and checks that the last reply is of `class` (2 or 3); otherwise fails with
/// `code` and the reply.
fn expect(driver: &mut Driver, command: &[u8], class: u8, code: u8) -> Result<(), Failure> {
    let reply = exchange(driver, command);
    let (got, text) = reply_class(&reply);
    if got == Some(class) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(command);
    let code = if got == Some(4) && code != exit::SOFTWARE {
        exit::TEMPFAIL
    } else {
        code
    };
    Err(Failure {
        code,
        message: format!("{} refused: {text}", line.trim_end()),
    })
}

fn send(driver: &mut Driver, bytes: &[u8]) {
    let mut sink = Vec::new();
    driver.feed(bytes, &mut sink);
}

fn exchange(driver: &mut Driver, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    driver.feed(bytes, &mut out);
    out
}

/// The class (first digit) of the last reply in `out`, and its text.
fn reply_class(out: &[u8]) -> (Option<u8>, String) {
    let text = String::from_utf8_lossy(out);
    let last = text.trim_end().lines().last().unwrap_or("").to_owned();
    let class = last
        .as_bytes()
        .first()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0');
    let text = if last.is_empty() {
        "no reply".to_owned()
    } else {
        last
    };
    (class, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmp(name: &str) -> (Tmp, Maildir) {
        let dir = std::env::temp_dir().join(format!(
            "sendmail-submit-{name}-{}-{:?}",
            std::process::id(),
            SystemTime::now()
        ));
        let md = Maildir::open(&dir).expect("maildir");
        (Tmp(dir), md)
    }

    fn queued(dir: &Tmp) -> Vec<String> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir.0.join("new")).expect("new").flatten() {
            v.push(std::fs::read_to_string(e.path()).expect("read"));
        }
        v
    }

    fn sub(rcpts: &[&str]) -> Submission {
        Submission {
            sender: "me@here.example".into(),
            recipients: rcpts.iter().map(|s| s.to_string()).collect(),
            mail_params: String::new(),
            rcpt_params: String::new(),
            ignore_dots: false,
        }
    }

    #[test]
    fn a_message_is_queued_with_envelope_received_and_dots() {
        let (dir, md) = tmp("plain");
        let input = b"Subject: hi\nTo: a@x.example\n\nline\n..two\n.\nafter the dot\n";
        let mut r = &input[..];
        let h = message::read_header(&mut r, false).expect("header");
        let d = Driver::new(session_config("host.example", 1 << 20), md);
        let id = submit(d, &sub(&["a@x.example", "b@y.example"]), &h, &mut r).expect("queued");
        let files = queued(&dir);
        assert_eq!(files.len(), 1);
        let f = &files[0];
        assert!(f.starts_with(
            "Return-Path: <me@here.example>\r\nX-Original-To: <a@x.example>\r\nX-Original-To: <b@y.example>\r\nReceived: from localhost (unknown [127.0.0.1])\r\n\tby host.example with ESMTP id "
        ), "{f}");
        assert!(f.contains(&id));
        assert!(
            f.ends_with("Subject: hi\r\nTo: a@x.example\r\n\r\nline\r\n..two\r\n"),
            "{f}"
        );
    }

    #[test]
    fn with_i_a_lone_dot_is_content() {
        let (dir, md) = tmp("dots");
        let input = b"Subject: hi\n\n.\nend\n";
        let mut r = &input[..];
        let h = message::read_header(&mut r, true).expect("header");
        let mut s = sub(&["a@x.example"]);
        s.ignore_dots = true;
        submit(
            Driver::new(session_config("h.example", 1 << 20), md),
            &s,
            &h,
            &mut r,
        )
        .expect("queued");
        assert!(queued(&dir)[0].ends_with("\r\n\r\n.\r\nend\r\n"));
    }

    #[test]
    fn refusals_map_to_sysexits() {
        let (dir, md) = tmp("refused");
        let h = Header::default();
        let e = submit(
            Driver::new(session_config("h.example", 1 << 20), md.clone()),
            &sub(&["not an address"]),
            &h,
            &mut &b""[..],
        )
        .unwrap_err();
        assert_eq!(e.code, exit::NOUSER, "{e:?}");
        let big = [b'x'; 100];
        let mut s = sub(&["a@x.example"]);
        s.sender = "bad sender".into();
        let e = submit(
            Driver::new(session_config("h.example", 10), md.clone()),
            &s,
            &h,
            &mut &big[..],
        )
        .unwrap_err();
        assert_eq!(e.code, exit::DATAERR, "{e:?}");
        let e = submit(
            Driver::new(session_config("h.example", 10), md),
            &sub(&["a@x.example"]),
            &Header {
                fields: Vec::new(),
                first_body_line: None,
                ended: false,
            },
            &mut &big[..],
        )
        .unwrap_err();
        assert_eq!(e.code, exit::DATAERR, "{e:?}");
        assert!(e.message.contains("552"), "{e:?}");
        assert!(queued(&dir).is_empty());
    }

    #[test]
    fn no_queue_directory_is_cantcreat() {
        let (dir, md) = tmp("cantcreat");
        std::fs::remove_dir_all(dir.0.join("tmp")).expect("rm tmp");
        let e = submit(
            Driver::new(session_config("h.example", 1 << 20), md),
            &sub(&["a@x.example"]),
            &Header::default(),
            &mut &b""[..],
        )
        .unwrap_err();
        assert_eq!(e.code, exit::CANTCREAT, "{e:?}");
    }

    /// A reader handing out at most `step` octets per read.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// `-bs`: the whole transcript pipelined, and byte by byte: the same replies, one message.
    #[test]
    fn smtp_dialogue_whole_and_byte_by_byte() {
        let script = b"EHLO me\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n";
        let mut transcripts = Vec::new();
        for step in [script.len(), 1, 7] {
            let (dir, md) = tmp(&format!("bs{step}"));
            let mut out = Vec::new();
            smtp_dialogue(
                Driver::new(session_config("h.example", 1 << 20), md),
                &mut Trickle(script, step),
                &mut out,
            )
            .expect("dialogue");
            let text = String::from_utf8_lossy(&out).into_owned();
            assert!(text.starts_with("220 h.example"), "{text}");
            assert!(text.contains("250 2.0.0 Ok: queued as "), "{text}");
            assert!(text.ends_with("221 2.0.0 Bye\r\n"), "{text}");
            assert_eq!(queued(&dir).len(), 1);
            // Queue IDs differ from run to run.
            let at = text.find("queued as ").expect("id") + 10;
            let end = at + text[at..].find('\r').expect("line end");
            transcripts.push(format!("{}{}", &text[..at], &text[end..]));
        }
        assert!(
            transcripts.windows(2).all(|w| w[0] == w[1]),
            "{transcripts:?}"
        );
    }
}
