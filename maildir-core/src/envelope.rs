//! The envelope stored at the head of each queued message: a `Return-Path:` line, then one
//! `X-Original-To:` line per recipient in RCPT order (DESIGN.md, "Data formats").
//!
//! Writing produces CRLF lines. Reading accepts CRLF or LF and hands back a `Read` over the rest
//! of the file (the trace header and the message) without ever loading the body whole. This
//! module does not write the `Received:` header; that is the server's business.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};

use crate::address::{AddressError, ForwardPath, ReversePath};

const RETURN_PATH: &str = "Return-Path:";
const ORIGINAL_TO: &str = "X-Original-To:";
/// Longest envelope line the reader accepts (a path is at most 256 octets).
const MAX_ENVELOPE_LINE: usize = 1024;

/// Sender and recipients of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path given in `MAIL FROM`.
    pub sender: ReversePath,
    /// The forward-paths given in `RCPT TO`, in order.
    pub recipients: Vec<ForwardPath>,
}

impl Envelope {
    /// Writes the envelope block (CRLF line ends).
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        write!(w, "{RETURN_PATH} {}\r\n", self.sender)?;
        for r in &self.recipients {
            write!(w, "{ORIGINAL_TO} {r}\r\n")?;
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
        loop {
            line.clear();
            let complete = read_line(&mut inner, &mut line)?;
            let is_rcpt = line.len() >= ORIGINAL_TO.len()
                && line[..ORIGINAL_TO.len()].eq_ignore_ascii_case(ORIGINAL_TO.as_bytes());
            if !is_rcpt {
                // The first message line may be longer than any envelope line: what was read
                // of it is handed back first and the rest streams from `inner`.
                break;
            }
            if !complete {
                return Err(EnvelopeError::LineTooLong);
            }
            let text = line_str(&line)?;
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
        Ok((Envelope { sender, recipients }, reader))
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
        Envelope {
            sender: ReversePath::parse(sender).unwrap(),
            recipients: rcpts
                .iter()
                .map(|r| ForwardPath::parse(r).unwrap())
                .collect(),
        }
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
