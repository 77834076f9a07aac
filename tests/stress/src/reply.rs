//! SMTP replies read from a byte stream: complete CRLF lines are assembled into single- or
//! multi-line replies (`250-...` continued until `250 ...`), with the enhanced status code
//! (RFC 3463) of the first line when it carries one.
//!
//! Network input is untrusted: a malformed line is a [`ReplyError`], never a panic, and a line
//! longer than [`MAX_LINE`] without its end is an error rather than unbounded buffering.

use std::fmt;

/// Longest reply line accepted, CR LF included (RFC 5321 allows 512; some servers send more).
pub const MAX_LINE: usize = 4096;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8, pub u16, pub u16);

impl Status {
    /// Parses the status at the start of a reply text (`2.1.0 Ok` -> `2.1.0`).
    pub fn parse(text: &str) -> Option<Status> {
        let word = text.split(' ').next()?;
        let mut parts = word.split('.');
        let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if !(c.len() == 1 && matches!(c, "2" | "4" | "5") && digits(s, 3) && digits(d, 3)) {
            return None;
        }
        Some(Status(c.parse().ok()?, s.parse().ok()?, d.parse().ok()?))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code (the same on every line).
    pub code: u16,
    /// The enhanced status code of the first line, if it has one.
    pub status: Option<Status>,
    /// The text of each line, after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply as the server sent it, lines joined with `\n`.
    pub fn render(&self) -> String {
        let n = self.lines.len();
        self.lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let sep = if i + 1 == n { ' ' } else { '-' };
                format!("{}{sep}{l}", self.code)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A reply stream that is not SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A line that does not start with a valid code and separator.
    BadLine(String),
    /// A continuation line with a different code than the first.
    CodeChanged(String),
    /// A line ended by a bare LF.
    BareLf(String),
    /// No line end within [`MAX_LINE`] octets.
    TooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::BadLine(l) => write!(f, "malformed reply line {l:?}"),
            ReplyError::CodeChanged(l) => {
                write!(f, "code changed inside a multi-line reply: {l:?}")
            }
            ReplyError::BareLf(l) => write!(f, "reply line ended by a bare LF: {l:?}"),
            ReplyError::TooLong => write!(f, "reply line longer than {MAX_LINE} octets"),
        }
    }
}

/// Assembles replies from bytes fed in any split.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    pos: usize,
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// An empty parser.
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// True when bytes of an incomplete reply are buffered.
    pub fn has_partial(&self) -> bool {
        self.pos < self.buf.len() || !self.lines.is_empty()
    }

    /// The next complete reply, `Ok(None)` when more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_LINE {
                    return Err(ReplyError::TooLong);
                }
                return Ok(None);
            };
            let raw = &rest[..nl];
            self.pos += nl + 1;
            let lossy = String::from_utf8_lossy(raw).into_owned();
            let Some(line) = raw.strip_suffix(b"\r") else {
                return Err(ReplyError::BareLf(lossy));
            };
            if line.len() + 2 > MAX_LINE {
                return Err(ReplyError::TooLong);
            }
            let (code, last, text) = split_line(line).ok_or(ReplyError::BadLine(lossy.clone()))?;
            match self.code {
                Some(c) if c != code => return Err(ReplyError::CodeChanged(lossy)),
                _ => self.code = Some(code),
            }
            self.lines.push(text);
            if last {
                let lines = std::mem::take(&mut self.lines);
                self.code = None;
                let status = lines.first().and_then(|t| Status::parse(t));
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                return Ok(Some(Reply {
                    code,
                    status,
                    lines,
                }));
            }
        }
    }
}

/// `(code, is last line, text)` of one reply line without its CR LF.
fn split_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let last = match line.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return None,
    };
    let text = line.get(4..).unwrap_or_default();
    Some((code, last, String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::new();
        p.push(input);
        let mut out = Vec::new();
        while let Some(r) = p.next_reply()? {
            out.push(r);
        }
        Ok(out)
    }

    const STREAM: &[u8] =
        b"220 mx.test ESMTP smtpd\r\n250-mx.test\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n\
250 2.1.0 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as ABC\r\n221\r\n";

    #[test]
    fn single_and_multi_line() {
        let r = all(STREAM).unwrap();
        assert_eq!(r.len(), 6);
        assert_eq!((r[0].code, r[0].status), (220, None));
        assert_eq!(r[1].code, 250);
        assert_eq!(r[1].lines, ["mx.test", "PIPELINING", "SMTPUTF8"]);
        assert_eq!(r[1].status, None);
        assert_eq!(r[2].status, Some(Status(2, 1, 0)));
        assert_eq!(r[3].code, 354);
        assert_eq!(r[4].lines, ["2.0.0 Ok: queued as ABC"]);
        assert_eq!(r[5].lines, [""]);
        assert_eq!(r[1].render(), "250-mx.test\n250-PIPELINING\n250 SMTPUTF8");
    }

    #[test]
    fn any_split_gives_the_same_replies() {
        let whole = all(STREAM).unwrap();
        for cut in 0..=STREAM.len() {
            let mut p = ReplyParser::new();
            let mut got = Vec::new();
            for part in [&STREAM[..cut], &STREAM[cut..]] {
                p.push(part);
                while let Some(r) = p.next_reply().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, whole, "cut at {cut}");
            assert!(!p.has_partial());
        }
        let mut p = ReplyParser::new();
        let mut got = Vec::new();
        for b in STREAM {
            p.push(&[*b]);
            while let Some(r) = p.next_reply().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn partial_is_reported() {
        let mut p = ReplyParser::new();
        p.push(b"250-a\r\n");
        assert_eq!(p.next_reply(), Ok(None));
        assert!(p.has_partial());
        p.push(b"250 b");
        assert_eq!(p.next_reply(), Ok(None));
        p.push(b"\r\n");
        assert!(p.next_reply().unwrap().is_some());
        assert!(!p.has_partial());
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(matches!(all(b"25 x\r\n"), Err(ReplyError::BadLine(_))));
        assert!(matches!(all(b"abc x\r\n"), Err(ReplyError::BadLine(_))));
        assert!(matches!(all(b"650 x\r\n"), Err(ReplyError::BadLine(_))));
        assert!(matches!(all(b"250x\r\n"), Err(ReplyError::BadLine(_))));
        assert!(matches!(all(b"250 ok\n"), Err(ReplyError::BareLf(_))));
        assert!(matches!(
            all(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeChanged(_))
        ));
        assert!(matches!(all(b"\r\n"), Err(ReplyError::BadLine(_))));
        let long = vec![b'2'; MAX_LINE + 1];
        assert_eq!(all(&long), Err(ReplyError::TooLong));
        let mut p = ReplyParser::new();
        p.push(&[0xff, 0xfe, b'\r', b'\n']);
        assert!(p.next_reply().is_err());
    }

    #[test]
    fn status_codes() {
        assert_eq!(Status::parse("5.5.2 Error"), Some(Status(5, 5, 2)));
        assert_eq!(Status::parse("4.4.2"), Some(Status(4, 4, 2)));
        assert_eq!(Status::parse("2.0.0.1 x"), None);
        assert_eq!(Status::parse("3.0.0 x"), None);
        assert_eq!(Status::parse("mx.test"), None);
        assert_eq!(Status::parse("5.1234.1 x"), None);
        assert_eq!(Status::parse(""), None);
        assert_eq!(Status(5, 3, 4).to_string(), "5.3.4");
    }
}
