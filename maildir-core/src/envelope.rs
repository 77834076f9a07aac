//! The envelope stored at the head of each queued message: a `Return-Path:` line, then one
//! `X-Original-To:` line per recipient in RCPT order (DESIGN.md, "Data formats").
//!
//! The DSN extension (RFC 3461) adds two optional line kinds, written only when the client gave
//! DSN parameters, values kept exactly as on the wire (xtext stays xtext, so the block stays
//! ASCII): `X-Envelope-Params: RET=HDRS ENVID=QQ+2Bxyz` right after `Return-Path:` (RET and/or
//! ENVID), and `X-Rcpt-Params: NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.example` right after
//! the `X-Original-To:` it belongs to (NOTIFY and/or ORCPT). Files without them read as before
//! (RET and NOTIFY unspecified, no ENVID or ORCPT).
//!
//! Writing produces CRLF lines. Reading accepts CRLF or LF and hands back a `Read` over the rest
//! of the file (the trace header and the message) without ever loading the body whole. This
//! module does not write the `Received:` header; that is the server's business.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};

use crate::address::{AddressError, ForwardPath, ReversePath};

const RETURN_PATH: &str = "Return-Path:";
const ORIGINAL_TO: &str = "X-Original-To:";
const ENVELOPE_PARAMS: &str = "X-Envelope-Params:";
const RCPT_PARAMS: &str = "X-Rcpt-Params:";
/// Longest ENVID (RFC 3461 §4.4: 100 characters).
const MAX_ENVID: usize = 100;
/// Longest ORCPT value (RFC 3461 §4.2: 500 characters).
const MAX_ORCPT: usize = 500;
/// Longest envelope line the reader accepts (a path is at most 256 octets).
const MAX_ENVELOPE_LINE: usize = 1024;

/// Sender and recipients of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path given in `MAIL FROM`.
    pub sender: ReversePath,
    /// The forward-paths given in `RCPT TO`, in order.
    pub recipients: Vec<ForwardPath>,
    /// `RET=` of `MAIL FROM` (RFC 3461 §4.3); `None`: unspecified.
    pub ret: Option<Ret>,
    /// `ENVID=` of `MAIL FROM` (RFC 3461 §4.4), as xtext.
    pub envid: Option<XText>,
    /// `NOTIFY=` / `ORCPT=` per recipient, by index into `recipients`. Shorter than
    /// `recipients` when the last ones gave none (the reader never keeps trailing defaults):
    /// use [`Envelope::rcpt_dsn`].
    pub rcpt_dsn: Vec<RcptDsn>,
}

/// `RET=` (RFC 3461 §4.3): what a failure DSN returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its header section only.
    Hdrs,
}

/// `NOTIFY=` (RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// No DSN at all.
    Never,
    /// A DSN on these events (at least one is set).
    On {
        /// SUCCESS.
        success: bool,
        /// FAILURE.
        failure: bool,
        /// DELAY.
        delay: bool,
    },
}

impl Notify {
    /// A failure DSN is wanted (`None`, unspecified, means FAILURE,DELAY: RFC 3461 §4.1).
    pub fn failure(n: Option<Notify>) -> bool {
        matches!(n, None | Some(Notify::On { failure: true, .. }))
    }

    /// A success DSN is wanted.
    pub fn success(n: Option<Notify>) -> bool {
        matches!(n, Some(Notify::On { success: true, .. }))
    }

    /// A delay DSN is allowed (`None` means FAILURE,DELAY).
    pub fn delay(n: Option<Notify>) -> bool {
        matches!(n, None | Some(Notify::On { delay: true, .. }))
    }

    /// Parses the value of `NOTIFY=` (case-insensitive): `NEVER`, or a comma list of
    /// `SUCCESS`, `FAILURE`, `DELAY` each at most once.
    pub fn parse(v: &str) -> Option<Notify> {
        if v.eq_ignore_ascii_case("NEVER") {
            return Some(Notify::Never);
        }
        let (mut success, mut failure, mut delay) = (false, false, false);
        for w in v.split(',') {
            let slot = match w.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut success,
                "FAILURE" => &mut failure,
                "DELAY" => &mut delay,
                _ => return None,
            };
            if *slot {
                return None;
            }
            *slot = true;
        }
        Some(Notify::On {
            success,
            failure,
            delay,
        })
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Notify::Never => f.write_str("NEVER"),
            Notify::On {
                success,
                failure,
                delay,
            } => {
                let words = [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")];
                let list: Vec<&str> = words.iter().filter(|w| w.0).map(|w| w.1).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// A validated xtext value (RFC 3461 §4): printable ASCII except `=` and `+`, with `+XX`
/// (two hexadecimal digits) standing for any octet. Kept encoded, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XText(String);

impl XText {
    /// Checks `s` is xtext (not empty, at most `max` characters).
    pub fn parse(s: &str, max: usize) -> Option<XText> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > max {
            return None;
        }
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => {
                    let hex = b.get(i + 1..i + 3);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return None;
                    }
                    i += 3;
                }
                b'=' => return None,
                0x21..=0x7e => i += 1,
                _ => return None,
            }
        }
        Some(XText(s.to_owned()))
    }

    /// The text as on the wire (encoded).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The decoded octets.
    pub fn decode(&self) -> Vec<u8> {
        let b = self.0.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'+'
                && let Some(v) = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }
}

impl fmt::Display for XText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The DSN parameters of one recipient (RFC 3461 §4.1, §4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptDsn {
    /// `NOTIFY=`; `None`: unspecified.
    pub notify: Option<Notify>,
    /// `ORCPT=` as on the wire: `addr-type;xtext` (the whole value is xtext too).
    pub orcpt: Option<XText>,
}

impl RcptDsn {
    fn is_default(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// The parameters as `RCPT TO` carries them: `NOTIFY=... ORCPT=...` (empty for none).
    pub fn params(&self) -> String {
        let mut p = Vec::new();
        if let Some(n) = self.notify {
            p.push(format!("NOTIFY={n}"));
        }
        if let Some(o) = &self.orcpt {
            p.push(format!("ORCPT={o}"));
        }
        p.join(" ")
    }
}

/// The DSN parameters as `MAIL FROM` carries them: `RET=... ENVID=...` (empty for none).
pub fn mail_params(ret: Option<Ret>, envid: Option<&XText>) -> String {
    let mut p = Vec::new();
    match ret {
        Some(Ret::Full) => p.push("RET=FULL".to_owned()),
        Some(Ret::Hdrs) => p.push("RET=HDRS".to_owned()),
        None => {}
    }
    if let Some(e) = envid {
        p.push(format!("ENVID={e}"));
    }
    p.join(" ")
}

/// Parses an `ORCPT=` value: `addr-type ";" xtext` (RFC 3461 §4.2).
pub fn parse_orcpt(v: &str) -> Option<XText> {
    let (kind, _) = v.split_once(';')?;
    let atom = !kind.is_empty()
        && kind
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if !atom {
        return None;
    }
    XText::parse(v, MAX_ORCPT)
}

/// Parses an `ENVID=` value.
pub fn parse_envid(v: &str) -> Option<XText> {
    XText::parse(v, MAX_ENVID)
}

impl Envelope {
    /// An envelope without DSN parameters.
    pub fn new(sender: ReversePath, recipients: Vec<ForwardPath>) -> Envelope {
        Envelope {
            sender,
            recipients,
            ret: None,
            envid: None,
            rcpt_dsn: Vec::new(),
        }
    }

    /// The DSN parameters of recipient `i` (defaults when it gave none).
    pub fn rcpt_dsn(&self, i: usize) -> RcptDsn {
        self.rcpt_dsn.get(i).cloned().unwrap_or_default()
    }

    /// Writes the envelope block (CRLF line ends).
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        write!(w, "{RETURN_PATH} {}\r\n", self.sender)?;
        if self.ret.is_some() || self.envid.is_some() {
            let p = mail_params(self.ret, self.envid.as_ref());
            write!(w, "{ENVELOPE_PARAMS} {p}\r\n")?;
        }
        for (i, r) in self.recipients.iter().enumerate() {
            write!(w, "{ORIGINAL_TO} {r}\r\n")?;
            if let Some(d) = self.rcpt_dsn.get(i)
                && !d.is_default()
            {
                write!(w, "{RCPT_PARAMS} {}\r\n", d.params())?;
            }
        }
        Ok(())
    }

    /// The envelope block as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32 + 40 * self.recipients.len());
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut v);
        v
    }
}

/// Why an envelope could not be read.
#[derive(Debug)]
pub enum EnvelopeError {
    /// Reading the file failed.
    Io(io::Error),
    /// The file does not start with `Return-Path:`.
    MissingReturnPath,
    /// An envelope line is longer than any valid one.
    LineTooLong,
    /// An envelope line is not valid UTF-8.
    NotUtf8,
    /// An address in the envelope is malformed.
    BadAddress {
        /// Which header held it.
        header: &'static str,
        /// What was wrong with it.
        error: AddressError,
    },
    /// No `X-Original-To:` line.
    NoRecipients,
    /// An `X-Envelope-Params:` or `X-Rcpt-Params:` line is malformed.
    BadParams(&'static str),
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::Io(e) => write!(f, "read error: {e}"),
            EnvelopeError::MissingReturnPath => {
                f.write_str("file does not start with Return-Path:")
            }
            EnvelopeError::LineTooLong => f.write_str("envelope line too long"),
            EnvelopeError::NotUtf8 => f.write_str("envelope line is not UTF-8"),
            EnvelopeError::BadAddress { header, error } => {
                write!(f, "bad address in {header} {error}")
            }
            EnvelopeError::NoRecipients => f.write_str("no X-Original-To: recipient"),
            EnvelopeError::BadParams(header) => write!(f, "malformed {header} line"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

impl From<io::Error> for EnvelopeError {
    fn from(e: io::Error) -> Self {
        EnvelopeError::Io(e)
    }
}

/// Reads the envelope from the head of a queued message, then yields the rest of the file
/// (everything after the envelope lines) through `Read`.
pub struct EnvelopeReader<R> {
    inner: BufReader<R>,
    /// The first line after the envelope, already read while looking for its end.
    pending: Vec<u8>,
    pending_pos: usize,
    /// Octets of the envelope lines.
    envelope_len: u64,
}

impl<R: Read> EnvelopeReader<R> {
    /// Reads the envelope; the returned reader is positioned at the first line after it.
    pub fn open(inner: R) -> Result<(Envelope, EnvelopeReader<R>), EnvelopeError> {
        let mut inner = BufReader::with_capacity(16 * 1024, inner);
        let mut line = Vec::with_capacity(128);
        if !read_line(&mut inner, &mut line)? {
            return Err(EnvelopeError::LineTooLong);
        }
        let mut envelope_len = line.len() as u64;
        let first = line_str(&line)?;
        let sender_text =
            header_value(first, RETURN_PATH).ok_or(EnvelopeError::MissingReturnPath)?;
        let sender =
            ReversePath::parse(sender_text).map_err(|error| EnvelopeError::BadAddress {
                header: RETURN_PATH,
                error,
            })?;
        let mut recipients = Vec::new();
        let mut rcpt_dsn: Vec<RcptDsn> = Vec::new();
        let (mut ret, mut envid) = (None, None);
        let mut first_after_sender = true;
        loop {
            line.clear();
            let complete = read_line(&mut inner, &mut line)?;
            let is_rcpt = starts_with(&line, ORIGINAL_TO);
            // `X-Envelope-Params:` only right after `Return-Path:`; `X-Rcpt-Params:` only
            // right after an `X-Original-To:` (at most one each).
            let env_params = first_after_sender && starts_with(&line, ENVELOPE_PARAMS);
            let rcpt_params = !recipients.is_empty()
                && rcpt_dsn.len() < recipients.len()
                && starts_with(&line, RCPT_PARAMS);
            first_after_sender = false;
            if !is_rcpt && !env_params && !rcpt_params {
                // The first message line may be longer than any envelope line: what was read
                // of it is handed back first and the rest streams from `inner`.
                break;
            }
            if !complete {
                return Err(EnvelopeError::LineTooLong);
            }
            let text = line_str(&line)?;
            if env_params {
                let value = header_value(text, ENVELOPE_PARAMS).unwrap_or_default();
                (ret, envid) = parse_envelope_params(value)
                    .ok_or(EnvelopeError::BadParams(ENVELOPE_PARAMS))?;
                envelope_len += line.len() as u64;
                continue;
            }
            if rcpt_params {
                let value = header_value(text, RCPT_PARAMS).unwrap_or_default();
                let d = parse_rcpt_params(value).ok_or(EnvelopeError::BadParams(RCPT_PARAMS))?;
                rcpt_dsn.resize(recipients.len() - 1, RcptDsn::default());
                rcpt_dsn.push(d);
                envelope_len += line.len() as u64;
                continue;
            }
            let value = header_value(text, ORIGINAL_TO).unwrap_or_default();
            let rcpt = ForwardPath::parse(value).map_err(|error| EnvelopeError::BadAddress {
                header: ORIGINAL_TO,
                error,
            })?;
            recipients.push(rcpt);
            envelope_len += line.len() as u64;
        }
        if recipients.is_empty() {
            return Err(EnvelopeError::NoRecipients);
        }
        let reader = EnvelopeReader {
            inner,
            pending: line,
            pending_pos: 0,
            envelope_len,
        };
        let envelope = Envelope {
            sender,
            recipients,
            ret,
            envid,
            rcpt_dsn,
        };
        Ok((envelope, reader))
    }
}

impl<R> EnvelopeReader<R> {
    /// Octets of the envelope lines: the offset in the file of the first byte after them.
    pub fn envelope_len(&self) -> u64 {
        self.envelope_len
    }
}

impl<R: Read> Read for EnvelopeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending_pos < self.pending.len() {
            let n = (self.pending.len() - self.pending_pos).min(buf.len());
            buf[..n].copy_from_slice(&self.pending[self.pending_pos..self.pending_pos + n]);
            self.pending_pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

impl<R: Read> BufRead for EnvelopeReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pending_pos < self.pending.len() {
            return Ok(&self.pending[self.pending_pos..]);
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if self.pending_pos < self.pending.len() {
            self.pending_pos = (self.pending_pos + amt).min(self.pending.len());
        } else {
            self.inner.consume(amt);
        }
    }
}

/// Reads one line (with its terminator) of at most `MAX_ENVELOPE_LINE` octets; false when the
/// line was cut at that limit.
fn read_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> Result<bool, EnvelopeError> {
    let n = r
        .by_ref()
        .take(MAX_ENVELOPE_LINE as u64)
        .read_until(b'\n', line)?;
    Ok(!(n == MAX_ENVELOPE_LINE && line.last() != Some(&b'\n')))
}

fn starts_with(line: &[u8], name: &str) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
}

/// `RET=... ENVID=...` (either or both, each once, any order).
fn parse_envelope_params(v: &str) -> Option<(Option<Ret>, Option<XText>)> {
    let (mut ret, mut envid) = (None, None);
    let mut any = false;
    for word in v.split_ascii_whitespace() {
        any = true;
        let (k, val) = word.split_once('=')?;
        if k.eq_ignore_ascii_case("RET") && ret.is_none() {
            ret = Some(if val.eq_ignore_ascii_case("FULL") {
                Ret::Full
            } else if val.eq_ignore_ascii_case("HDRS") {
                Ret::Hdrs
            } else {
                return None;
            });
        } else if k.eq_ignore_ascii_case("ENVID") && envid.is_none() {
            envid = Some(parse_envid(val)?);
        } else {
            return None;
        }
    }
    any.then_some((ret, envid))
}

/// `NOTIFY=... ORCPT=...` (either or both, each once, any order).
fn parse_rcpt_params(v: &str) -> Option<RcptDsn> {
    let mut d = RcptDsn::default();
    let mut any = false;
    for word in v.split_ascii_whitespace() {
        any = true;
        let (k, val) = word.split_once('=')?;
        if k.eq_ignore_ascii_case("NOTIFY") && d.notify.is_none() {
            d.notify = Some(Notify::parse(val)?);
        } else if k.eq_ignore_ascii_case("ORCPT") && d.orcpt.is_none() {
            d.orcpt = Some(parse_orcpt(val)?);
        } else {
            return None;
        }
    }
    any.then_some(d)
}

fn line_str(line: &[u8]) -> Result<&str, EnvelopeError> {
    std::str::from_utf8(line).map_err(|_| EnvelopeError::NotUtf8)
}

/// The trimmed value of `Name: value` when the line has that header name (case-insensitive).
fn header_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let head = line.get(..name.len())?;
    if !head.eq_ignore_ascii_case(name) {
        return None;
    }
    Some(line[name.len()..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(sender: &str, rcpts: &[&str]) -> Envelope {
        Envelope::new(
            ReversePath::parse(sender).unwrap(),
            rcpts
                .iter()
                .map(|r| ForwardPath::parse(r).unwrap())
                .collect(),
        )
    }

    #[test]
    fn writes_the_documented_format() {
        let e = env("<s@a.example>", &["<r1@b.example>", "<postmaster>"]);
        assert_eq!(
            e.to_bytes(),
            b"Return-Path: <s@a.example>\r\nX-Original-To: <r1@b.example>\r\nX-Original-To: <postmaster>\r\n"
        );
    }

    #[test]
    fn reads_back_and_leaves_the_rest() {
        let e = env("<>", &["<r1@b.example>", "<r2@c.example>"]);
        let mut file = e.to_bytes();
        file.extend_from_slice(b"Received: from x\r\nSubject: hi\r\n\r\nbody\r\n");
        let (got, mut rest) = EnvelopeReader::open(&file[..]).unwrap();
        assert_eq!(got, e);
        assert_eq!(rest.envelope_len(), e.to_bytes().len() as u64);
        let mut s = String::new();
        rest.read_to_string(&mut s).unwrap();
        assert_eq!(s, "Received: from x\r\nSubject: hi\r\n\r\nbody\r\n");
    }

    #[test]
    fn first_message_line_may_be_long() {
        let e = env("<a@b.example>", &["<c@d.example>"]);
        let mut file = e.to_bytes();
        let rest = format!("Received: {}\r\n\r\nbody\r\n", "x".repeat(3000));
        file.extend_from_slice(rest.as_bytes());
        let (got, mut r) = EnvelopeReader::open(&file[..]).unwrap();
        assert_eq!(got, e);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, rest);
    }

    #[test]
    fn accepts_lf_line_ends() {
        let file = b"Return-Path: <a@b.example>\nX-Original-To: <c@d.example>\nSubject: x\n\nhi\n";
        let (got, mut rest) = EnvelopeReader::open(&file[..]).unwrap();
        assert_eq!(got.recipients.len(), 1);
        let mut s = String::new();
        rest.read_to_string(&mut s).unwrap();
        assert_eq!(s, "Subject: x\n\nhi\n");
    }

    #[test]
    fn dsn_parameters_round_trip() {
        let mut e = env(
            "<s@a.example>",
            &["<r1@b.example>", "<r2@b.example>", "<r3@b.example>"],
        );
        e.ret = Some(Ret::Hdrs);
        e.envid = parse_envid("QQ+2Bxyz");
        e.rcpt_dsn = vec![
            RcptDsn {
                notify: Notify::parse("success,FAILURE"),
                orcpt: parse_orcpt("rfc822;a+40b.example"),
            },
            RcptDsn {
                notify: Some(Notify::Never),
                orcpt: None,
            },
        ];
        let bytes = e.to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "Return-Path: <s@a.example>\r\nX-Envelope-Params: RET=HDRS ENVID=QQ+2Bxyz\r\n\
             X-Original-To: <r1@b.example>\r\nX-Rcpt-Params: NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.example\r\n\
             X-Original-To: <r2@b.example>\r\nX-Rcpt-Params: NOTIFY=NEVER\r\n\
             X-Original-To: <r3@b.example>\r\n"
        );
        let mut file = bytes.clone();
        file.extend_from_slice(b"Received: x\r\n\r\nbody\r\n");
        let (got, mut rest) = EnvelopeReader::open(&file[..]).unwrap();
        assert_eq!(got, e);
        assert_eq!(rest.envelope_len(), bytes.len() as u64);
        let mut s = String::new();
        rest.read_to_string(&mut s).unwrap();
        assert_eq!(s, "Received: x\r\n\r\nbody\r\n");
        assert_eq!(got.rcpt_dsn(2), RcptDsn::default());
        assert_eq!(got.envid.unwrap().decode(), b"QQ+xyz");
        assert_eq!(
            got.rcpt_dsn[0].orcpt.as_ref().unwrap().decode(),
            b"rfc822;a@b.example"
        );
        assert!(Notify::failure(None) && Notify::delay(None) && !Notify::success(None));
        assert!(!Notify::failure(Some(Notify::Never)));
        assert!(!Notify::failure(Notify::parse("SUCCESS,DELAY")));
        // Only the second recipient has parameters: the first reads as defaults.
        let file = b"Return-Path: <>\r\nX-Original-To: <a@b.example>\r\nX-Original-To: <c@d.example>\r\nx-rcpt-params: orcpt=rfc822;c@d.example\r\nSubject: x\r\n";
        let (got, _) = EnvelopeReader::open(&file[..]).unwrap();
        assert_eq!(got.rcpt_dsn.len(), 2);
        assert_eq!(got.rcpt_dsn(0), RcptDsn::default());
        assert_eq!(
            got.rcpt_dsn[1].orcpt.as_ref().unwrap().as_str(),
            "rfc822;c@d.example"
        );
    }

    #[test]
    fn dsn_parameter_lines_only_in_their_places() {
        // Not right after Return-Path: the message starts there.
        let file = b"Return-Path: <>\r\nX-Original-To: <a@b.example>\r\nX-Envelope-Params: RET=FULL\r\n\r\n";
        let (got, mut rest) = EnvelopeReader::open(&file[..]).unwrap();
        assert_eq!(got.ret, None);
        let mut s = String::new();
        rest.read_to_string(&mut s).unwrap();
        assert_eq!(s, "X-Envelope-Params: RET=FULL\r\n\r\n");
        // A second X-Rcpt-Params for one recipient is message content too.
        let file = b"Return-Path: <>\r\nX-Original-To: <a@b.example>\r\nX-Rcpt-Params: NOTIFY=NEVER\r\nX-Rcpt-Params: NOTIFY=DELAY\r\n";
        let (got, mut rest) = EnvelopeReader::open(&file[..]).unwrap();
        assert_eq!(got.rcpt_dsn[0].notify, Some(Notify::Never));
        let mut s = String::new();
        rest.read_to_string(&mut s).unwrap();
        assert_eq!(s, "X-Rcpt-Params: NOTIFY=DELAY\r\n");
        for bad in [
            "X-Envelope-Params: RET=SOME\r\n",
            "X-Envelope-Params: \r\n",
            "X-Envelope-Params: RET=FULL RET=HDRS\r\n",
            "X-Envelope-Params: ENVID=a=b\r\n",
            "X-Envelope-Params: ENVID=a+4\r\n",
            "X-Envelope-Params: SIZE=10\r\n",
        ] {
            let file = format!("Return-Path: <>\r\n{bad}X-Original-To: <a@b.example>\r\n");
            assert!(
                matches!(
                    EnvelopeReader::open(file.as_bytes()),
                    Err(EnvelopeError::BadParams(_))
                ),
                "{bad}"
            );
        }
        for bad in [
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=SUCCESS,SUCCESS",
            "NOTIFY=",
            "ORCPT=a@b.example",
            "ORCPT=;a@b",
            "ORCPT=rfc822;a\u{e9}",
        ] {
            let file = format!(
                "Return-Path: <>\r\nX-Original-To: <a@b.example>\r\nX-Rcpt-Params: {bad}\r\n"
            );
            assert!(
                matches!(
                    EnvelopeReader::open(file.as_bytes()),
                    Err(EnvelopeError::BadParams(_) | EnvelopeError::NotUtf8)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_missing_parts() {
        assert!(matches!(
            EnvelopeReader::open(&b"Subject: x\r\n"[..]),
            Err(EnvelopeError::MissingReturnPath)
        ));
        assert!(matches!(
            EnvelopeReader::open(&b"Return-Path: <a@b.example>\r\nSubject: x\r\n"[..]),
            Err(EnvelopeError::NoRecipients)
        ));
        assert!(matches!(
            EnvelopeReader::open(&b"Return-Path: <a b@c>\r\n"[..]),
            Err(EnvelopeError::BadAddress { .. })
        ));
        let long = format!(
            "Return-Path: <a@b.example>\r\nX-Original-To: <{}>",
            "a".repeat(5000)
        );
        assert!(matches!(
            EnvelopeReader::open(long.as_bytes()),
            Err(EnvelopeError::LineTooLong)
        ));
        let long = format!("Return-Path: <{}>", "a".repeat(5000));
        assert!(matches!(
            EnvelopeReader::open(long.as_bytes()),
            Err(EnvelopeError::LineTooLong)
        ));
    }
}
