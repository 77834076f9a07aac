//! The envelope stored at the head of each queued message: a `Return-Path:` line, then one
//! `X-Original-To:` line per recipient in RCPT order (README.md, smtpd, "Durability", shows a
//! whole queue file).
//!
//! The DSN extension (RFC 3461) adds two optional line kinds, written only when the client gave
//! DSN parameters; ENVID and ORCPT values are kept exactly as on the wire (xtext stays xtext:
//! the block stays ASCII), RET and NOTIFY are written in upper case:
//!
//! ```text
//! Return-Path: <sender>
//! X-Envelope-Params: RET=HDRS ENVID=QQ+2Bxyz       (optional, right after Return-Path)
//! X-Original-To: <rcpt1>
//! X-Rcpt-Params: NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.example
//!                                                  (optional, right after its X-Original-To)
//! X-Original-To: <rcpt2>
//! ```
//!
//! `X-Envelope-Params` holds `RET=` and/or `ENVID=` (in that order when written),
//! `X-Rcpt-Params` holds `NOTIFY=` and/or `ORCPT=`. Files without them read as before: RET and
//! NOTIFY unspecified, no ENVID or ORCPT. An envelope without DSN parameters is written
//! byte-identical to the format before the extension. A malformed parameter line is an error
//! (`EnvelopeError::BadParams`), never silently dropped.
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
/// Longest ENVID value (RFC 3461 §4.4: 100 characters), counted as on the wire.
pub const MAX_ENVID_LEN: usize = 100;
/// Longest ORCPT value (RFC 3461 §4.2: 500 characters), `addr-type;xtext` as on the wire.
pub const MAX_ORCPT_LEN: usize = 500;
/// Longest envelope line the reader accepts (a path is at most 256 octets).
const MAX_ENVELOPE_LINE: usize = 1024;

/// Why a DSN parameter value is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError {
    /// Not xtext (RFC 3461 §4: `+` and two hex digits, or printable ASCII but `+` and `=`).
    BadXtext,
    /// Longer than the RFC allows.
    TooLong,
    /// Not one of the values the keyword allows.
    BadValue,
    /// A keyword given twice.
    Duplicate,
    /// A keyword the line kind does not hold.
    UnknownKeyword,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParamError::BadXtext => "invalid xtext",
            ParamError::TooLong => "value too long",
            ParamError::BadValue => "invalid value",
            ParamError::Duplicate => "duplicate parameter",
            ParamError::UnknownKeyword => "unknown parameter",
        })
    }
}

impl std::error::Error for ParamError {}

/// A validated xtext value (RFC 3461 §4), kept exactly as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XText(String);

impl XText {
    /// Validates `s` as xtext: printable ASCII (`!` to `~`) except `+` and `=`, or `+` followed
    /// by two hexadecimal digits (upper case per the RFC; lower case tolerated). Not empty.
    pub fn parse(s: &str) -> Result<XText, ParamError> {
        let b = s.as_bytes();
        if b.is_empty() {
            return Err(ParamError::BadXtext);
        }
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => {
                    if i + 2 >= b.len() {
                        return Err(ParamError::BadXtext);
                    }
                    if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                        return Err(ParamError::BadXtext);
                    }
                    i += 3;
                }
                b'=' => return Err(ParamError::BadXtext),
                b'!'..=b'~' => i += 1,
                _ => return Err(ParamError::BadXtext),
            }
        }
        Ok(XText(s.to_string()))
    }

    /// The value as on the wire (still encoded).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The decoded octets (`+XX` replaced by the octet XX).
    pub fn decode(&self) -> Vec<u8> {
        let b = self.0.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'+' && i + 2 < b.len() {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(b[i + 1]) << 4 | hex(b[i + 2]));
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    /// The decoded value as text (invalid UTF-8 replaced).
    pub fn decode_lossy(&self) -> String {
        String::from_utf8_lossy(&self.decode()).into_owned()
    }

    /// Encodes octets as xtext (`+XX` for `+`, `=` and anything outside `!`..=`~`).
    pub fn encode(raw: &[u8]) -> XText {
        let mut s = String::with_capacity(raw.len());
        for &c in raw {
            if c == b'+' || c == b'=' || !(b'!'..=b'~').contains(&c) {
                s.push_str(&format!("+{c:02X}"));
            } else {
                s.push(c as char);
            }
        }
        XText(s)
    }
}

impl fmt::Display for XText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `RET=` on MAIL: what a failure DSN returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the header section only.
    Hdrs,
}

impl Ret {
    /// Parses `FULL` or `HDRS` (any case).
    pub fn parse(s: &str) -> Result<Ret, ParamError> {
        if s.eq_ignore_ascii_case("FULL") {
            Ok(Ret::Full)
        } else if s.eq_ignore_ascii_case("HDRS") {
            Ok(Ret::Hdrs)
        } else {
            Err(ParamError::BadValue)
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        })
    }
}

/// `NOTIFY=` on RCPT: `NEVER`, or a non-empty set of SUCCESS, FAILURE, DELAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notify {
    /// `NOTIFY=NEVER`: no DSN at all.
    Never,
    /// DSNs on these events (at least one is true).
    On {
        /// `SUCCESS`
        success: bool,
        /// `FAILURE`
        failure: bool,
        /// `DELAY`
        delay: bool,
    },
}

impl Notify {
    /// Parses `NEVER` alone, or a comma-separated list of SUCCESS/FAILURE/DELAY (any case,
    /// each at most once).
    pub fn parse(s: &str) -> Result<Notify, ParamError> {
        if s.eq_ignore_ascii_case("NEVER") {
            return Ok(Notify::Never);
        }
        let (mut success, mut failure, mut delay) = (false, false, false);
        for word in s.split(',') {
            let flag = if word.eq_ignore_ascii_case("SUCCESS") {
                &mut success
            } else if word.eq_ignore_ascii_case("FAILURE") {
                &mut failure
            } else if word.eq_ignore_ascii_case("DELAY") {
                &mut delay
            } else {
                return Err(ParamError::BadValue);
            };
            if *flag {
                return Err(ParamError::Duplicate);
            }
            *flag = true;
        }
        Ok(Notify::On {
            success,
            failure,
            delay,
        })
    }

    /// Whether a success DSN was asked for.
    pub fn success(&self) -> bool {
        matches!(self, Notify::On { success: true, .. })
    }

    /// Whether a failure DSN was asked for.
    pub fn failure(&self) -> bool {
        matches!(self, Notify::On { failure: true, .. })
    }

    /// Whether a delay DSN was asked for.
    pub fn delay(&self) -> bool {
        matches!(self, Notify::On { delay: true, .. })
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
                let words: Vec<&str> =
                    [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, w)| *w)
                        .collect();
                f.write_str(&words.join(","))
            }
        }
    }
}

/// `ORCPT=addr-type;xtext` on RCPT: the original recipient, kept as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Orcpt {
    /// The address type (an atom such as `rfc822`), as given.
    pub addr_type: String,
    /// The address, still xtext-encoded.
    pub address: XText,
}

impl Orcpt {
    /// Parses `addr-type;xtext` (at most `MAX_ORCPT_LEN` characters; addr-type is letters,
    /// digits and `-`).
    pub fn parse(s: &str) -> Result<Orcpt, ParamError> {
        if s.len() > MAX_ORCPT_LEN {
            return Err(ParamError::TooLong);
        }
        let (t, a) = s.split_once(';').ok_or(ParamError::BadValue)?;
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
            return Err(ParamError::BadValue);
        }
        Ok(Orcpt {
            addr_type: t.to_string(),
            address: XText::parse(a)?,
        })
    }

    /// Whether the address type is `rfc822` (any case).
    pub fn is_rfc822(&self) -> bool {
        self.addr_type.eq_ignore_ascii_case("rfc822")
    }
}

impl fmt::Display for Orcpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.addr_type, self.address)
    }
}

/// Parses an `ENVID=` value: xtext of at most `MAX_ENVID_LEN` characters.
pub fn parse_envid(s: &str) -> Result<XText, ParamError> {
    if s.len() > MAX_ENVID_LEN {
        return Err(ParamError::TooLong);
    }
    XText::parse(s)
}

/// Per-recipient DSN parameters (`NOTIFY=`, `ORCPT=`); `Default` is neither given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RcptParams {
    /// `NOTIFY=`; `None`: unspecified (RFC 3461 default: FAILURE, DELAY at the MTA's choice).
    pub notify: Option<Notify>,
    /// `ORCPT=`; `None`: not given.
    pub orcpt: Option<Orcpt>,
}

impl RcptParams {
    /// Neither parameter given.
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// Parses the value of an `X-Rcpt-Params:` line (`NOTIFY=... ORCPT=...`).
    pub fn parse_line(s: &str) -> Result<RcptParams, ParamError> {
        let mut p = RcptParams::default();
        for word in s.split_ascii_whitespace() {
            let (k, v) = word.split_once('=').ok_or(ParamError::BadValue)?;
            if k.eq_ignore_ascii_case("NOTIFY") {
                if p.notify.is_some() {
                    return Err(ParamError::Duplicate);
                }
                p.notify = Some(Notify::parse(v)?);
            } else if k.eq_ignore_ascii_case("ORCPT") {
                if p.orcpt.is_some() {
                    return Err(ParamError::Duplicate);
                }
                p.orcpt = Some(Orcpt::parse(v)?);
            } else {
                return Err(ParamError::UnknownKeyword);
            }
        }
        if p.is_empty() {
            return Err(ParamError::BadValue);
        }
        Ok(p)
    }
}

impl fmt::Display for RcptParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(n) = &self.notify {
            write!(f, "NOTIFY={n}")?;
            sep = " ";
        }
        if let Some(o) = &self.orcpt {
            write!(f, "{sep}ORCPT={o}")?;
        }
        Ok(())
    }
}

/// Sender and recipients of one message, with the DSN parameters given for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path given in `MAIL FROM`.
    pub sender: ReversePath,
    /// The forward-paths given in `RCPT TO`, in order.
    pub recipients: Vec<ForwardPath>,
    /// `RET=` given on MAIL.
    pub ret: Option<Ret>,
    /// `ENVID=` given on MAIL (xtext as on the wire).
    pub envid: Option<XText>,
    /// Per-recipient DSN parameters, index for index with `recipients`. Empty when no
    /// recipient has any (the reader leaves it so); otherwise missing entries are defaults.
    /// Use [`Envelope::rcpt_params`] to read.
    pub rcpt_params: Vec<RcptParams>,
}

static NO_RCPT_PARAMS: RcptParams = RcptParams {
    notify: None,
    orcpt: None,
};

impl Envelope {
    /// An envelope without DSN parameters.
    pub fn new(sender: ReversePath, recipients: Vec<ForwardPath>) -> Envelope {
        Envelope {
            sender,
            recipients,
            ret: None,
            envid: None,
            rcpt_params: Vec::new(),
        }
    }

    /// The DSN parameters of recipient `i` (defaults when none were given).
    pub fn rcpt_params(&self, i: usize) -> &RcptParams {
        self.rcpt_params.get(i).unwrap_or(&NO_RCPT_PARAMS)
    }

    /// Whether `RET` or `ENVID` was given.
    pub fn has_envelope_params(&self) -> bool {
        self.ret.is_some() || self.envid.is_some()
    }

    /// Writes the envelope block (CRLF line ends).
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        write!(w, "{RETURN_PATH} {}\r\n", self.sender)?;
        if self.has_envelope_params() {
            write!(w, "{ENVELOPE_PARAMS}")?;
            if let Some(r) = &self.ret {
                write!(w, " RET={r}")?;
            }
            if let Some(e) = &self.envid {
                write!(w, " ENVID={e}")?;
            }
            w.write_all(b"\r\n")?;
        }
        for (i, r) in self.recipients.iter().enumerate() {
            write!(w, "{ORIGINAL_TO} {r}\r\n")?;
            let p = self.rcpt_params(i);
            if !p.is_empty() {
                write!(w, "{RCPT_PARAMS} {p}\r\n")?;
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
    /// A DSN parameter line (`X-Envelope-Params:`, `X-Rcpt-Params:`) is malformed.
    BadParams {
        /// Which header held it.
        header: &'static str,
        /// What was wrong with it.
        error: ParamError,
    },
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
            EnvelopeError::BadParams { header, error } => {
                write!(f, "bad DSN parameters in {header} {error}")
            }
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
        let mut ret = None;
        let mut envid = None;
        let mut recipients = Vec::new();
        let mut rcpt_params: Vec<RcptParams> = Vec::new();
        // Whether the line before was X-Original-To (X-Rcpt-Params may follow it only).
        let mut after_rcpt = false;
        let mut first_line = true;
        loop {
            line.clear();
            let complete = read_line(&mut inner, &mut line)?;
            let kind = if starts_with_name(&line, ORIGINAL_TO) {
                ORIGINAL_TO
            } else if after_rcpt && starts_with_name(&line, RCPT_PARAMS) {
                RCPT_PARAMS
            } else if first_line && starts_with_name(&line, ENVELOPE_PARAMS) {
                ENVELOPE_PARAMS
            } else {
                // The first message line may be longer than any envelope line: what was read
                // of it is handed back first and the rest streams from `inner`.
                break;
            };
            first_line = false;
            if !complete {
                return Err(EnvelopeError::LineTooLong);
            }
            let text = line_str(&line)?;
            let value = header_value(text, kind).unwrap_or_default();
            let bad = |error| EnvelopeError::BadParams {
                header: kind,
                error,
            };
            if kind == ORIGINAL_TO {
                let rcpt =
                    ForwardPath::parse(value).map_err(|error| EnvelopeError::BadAddress {
                        header: ORIGINAL_TO,
                        error,
                    })?;
                recipients.push(rcpt);
                after_rcpt = true;
            } else if kind == RCPT_PARAMS {
                let p = RcptParams::parse_line(value).map_err(bad)?;
                rcpt_params.resize(recipients.len(), RcptParams::default());
                rcpt_params[recipients.len() - 1] = p;
                after_rcpt = false;
            } else {
                (ret, envid) = parse_envelope_params(value).map_err(bad)?;
            }
            envelope_len += line.len() as u64;
        }
        if recipients.is_empty() {
            return Err(EnvelopeError::NoRecipients);
        }
        if !rcpt_params.is_empty() {
            rcpt_params.resize(recipients.len(), RcptParams::default());
        }
        let reader = EnvelopeReader {
            inner,
            pending: line,
            pending_pos: 0,
            envelope_len,
        };
        Ok((
            Envelope {
                sender,
                recipients,
                ret,
                envid,
                rcpt_params,
            },
            reader,
        ))
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

fn line_str(line: &[u8]) -> Result<&str, EnvelopeError> {
    std::str::from_utf8(line).map_err(|_| EnvelopeError::NotUtf8)
}

/// Whether `line` starts with header name `name` (case-insensitive).
fn starts_with_name(line: &[u8], name: &str) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
}

/// Parses the value of an `X-Envelope-Params:` line (`RET=... ENVID=...`, at least one).
fn parse_envelope_params(s: &str) -> Result<(Option<Ret>, Option<XText>), ParamError> {
    let (mut ret, mut envid) = (None, None);
    for word in s.split_ascii_whitespace() {
        let (k, v) = word.split_once('=').ok_or(ParamError::BadValue)?;
        if k.eq_ignore_ascii_case("RET") {
            if ret.is_some() {
                return Err(ParamError::Duplicate);
            }
            ret = Some(Ret::parse(v)?);
        } else if k.eq_ignore_ascii_case("ENVID") {
            if envid.is_some() {
                return Err(ParamError::Duplicate);
            }
            envid = Some(parse_envid(v)?);
        } else {
            return Err(ParamError::UnknownKeyword);
        }
    }
    if ret.is_none() && envid.is_none() {
        return Err(ParamError::BadValue);
    }
    Ok((ret, envid))
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
    fn dsn_params_written_as_documented_and_read_back() {
        let mut e = env(
            "<s@a.example>",
            &["<r1@b.example>", "<r2@b.example>", "<r3@b.example>"],
        );
        e.ret = Some(Ret::Hdrs);
        e.envid = Some(parse_envid("QQ+2Bxyz").unwrap());
        e.rcpt_params = vec![
            RcptParams {
                notify: Some(Notify::parse("SUCCESS,FAILURE").unwrap()),
                orcpt: Some(Orcpt::parse("rfc822;a+40b.example").unwrap()),
            },
            RcptParams::default(),
            RcptParams {
                notify: Some(Notify::Never),
                orcpt: None,
            },
        ];
        let bytes = e.to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "Return-Path: <s@a.example>\r\n\
             X-Envelope-Params: RET=HDRS ENVID=QQ+2Bxyz\r\n\
             X-Original-To: <r1@b.example>\r\n\
             X-Rcpt-Params: NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.example\r\n\
             X-Original-To: <r2@b.example>\r\n\
             X-Original-To: <r3@b.example>\r\n\
             X-Rcpt-Params: NOTIFY=NEVER\r\n"
        );
        let mut file = bytes.clone();
        file.extend_from_slice(b"Received: x\r\n\r\nbody\r\n");
        let (got, mut rest) = EnvelopeReader::open(&file[..]).unwrap();
        assert_eq!(got, e);
        assert_eq!(rest.envelope_len(), bytes.len() as u64);
        let mut s = String::new();
        rest.read_to_string(&mut s).unwrap();
        assert_eq!(s, "Received: x\r\n\r\nbody\r\n");
        assert_eq!(got.envid.as_ref().unwrap().decode(), b"QQ+xyz");
        assert_eq!(
            got.rcpt_params(0).orcpt.as_ref().unwrap().address.decode(),
            b"a@b.example"
        );
        assert!(got.rcpt_params(1).is_empty());
        assert!(got.rcpt_params(7).is_empty());
    }

    #[test]
    fn only_ret_or_only_notify() {
        let mut e = env("<s@a.example>", &["<r1@b.example>", "<r2@b.example>"]);
        e.ret = Some(Ret::Full);
        e.rcpt_params = vec![
            RcptParams::default(),
            RcptParams {
                notify: Some(Notify::parse("delay").unwrap()),
                orcpt: None,
            },
        ];
        let bytes = e.to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "Return-Path: <s@a.example>\r\nX-Envelope-Params: RET=FULL\r\n\
             X-Original-To: <r1@b.example>\r\nX-Original-To: <r2@b.example>\r\n\
             X-Rcpt-Params: NOTIFY=DELAY\r\n"
        );
        let (got, _) = EnvelopeReader::open(&bytes[..]).unwrap();
        assert_eq!(got, e);
    }

    #[test]
    fn xtext_and_values_validated() {
        assert!(XText::parse("a+2B").is_ok());
        assert!(XText::parse("a+2b").is_ok());
        for bad in ["", "a=b", "a+", "a+2", "a+G0", "a b", "\u{e9}", "a\x7f"] {
            assert_eq!(XText::parse(bad), Err(ParamError::BadXtext), "{bad:?}");
        }
        assert_eq!(XText::encode(b"a+b=c d\xff").as_str(), "a+2Bb+3Dc+20d+FF");
        assert_eq!(XText::encode(b"a+b=c d\xff").decode(), b"a+b=c d\xff");
        assert!(parse_envid(&"x".repeat(100)).is_ok());
        assert_eq!(parse_envid(&"x".repeat(101)), Err(ParamError::TooLong));
        assert!(Orcpt::parse(&format!("rfc822;{}", "x".repeat(493))).is_ok());
        assert_eq!(
            Orcpt::parse(&format!("rfc822;{}", "x".repeat(494))),
            Err(ParamError::TooLong)
        );
        assert_eq!(Orcpt::parse("rfc822"), Err(ParamError::BadValue));
        assert_eq!(Orcpt::parse(";a"), Err(ParamError::BadValue));
        assert_eq!(Orcpt::parse("rfc822;"), Err(ParamError::BadXtext));
        assert_eq!(Notify::parse("NEVER,SUCCESS"), Err(ParamError::BadValue));
        assert_eq!(Notify::parse("SUCCESS,SUCCESS"), Err(ParamError::Duplicate));
        assert_eq!(Notify::parse(""), Err(ParamError::BadValue));
        assert_eq!(
            Notify::parse("success,Delay").unwrap().to_string(),
            "SUCCESS,DELAY"
        );
        assert!(Notify::parse("FAILURE").unwrap().failure());
        assert_eq!(Ret::parse("hdrs"), Ok(Ret::Hdrs));
        assert_eq!(Ret::parse("BODY"), Err(ParamError::BadValue));
    }

    #[test]
    fn malformed_param_lines_are_errors() {
        for bad in [
            "Return-Path: <a@b.example>\r\nX-Envelope-Params: RET=X\r\nX-Original-To: <c@d.example>\r\n",
            "Return-Path: <a@b.example>\r\nX-Envelope-Params:\r\nX-Original-To: <c@d.example>\r\n",
            "Return-Path: <a@b.example>\r\nX-Envelope-Params: RET=FULL RET=HDRS\r\nX-Original-To: <c@d.example>\r\n",
            "Return-Path: <a@b.example>\r\nX-Original-To: <c@d.example>\r\nX-Rcpt-Params: NOTIFY=NEVER,DELAY\r\n",
            "Return-Path: <a@b.example>\r\nX-Original-To: <c@d.example>\r\nX-Rcpt-Params: FOO=1\r\n",
            "Return-Path: <a@b.example>\r\nX-Original-To: <c@d.example>\r\nX-Rcpt-Params: ORCPT=rfc822;a=b\r\n",
        ] {
            assert!(
                matches!(
                    EnvelopeReader::open(bad.as_bytes()),
                    Err(EnvelopeError::BadParams { .. })
                ),
                "{bad:?}"
            );
        }
        // A second X-Rcpt-Params (or one before any recipient) is not an envelope line: it
        // starts the message.
        let f = b"Return-Path: <a@b.example>\r\nX-Original-To: <c@d.example>\r\nX-Rcpt-Params: NOTIFY=NEVER\r\nX-Rcpt-Params: NOTIFY=NEVER\r\n";
        let (e, mut rest) = EnvelopeReader::open(&f[..]).unwrap();
        assert_eq!(e.rcpt_params(0).notify, Some(Notify::Never));
        let mut s = String::new();
        rest.read_to_string(&mut s).unwrap();
        assert_eq!(s, "X-Rcpt-Params: NOTIFY=NEVER\r\n");
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
