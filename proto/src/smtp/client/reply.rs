//! SMTP reply parser (RFC 5321 §4.2): turns bytes from the server into complete replies.
//!
//! Owns: line framing, multi-line replies (`250-...` continued by `250 ...`), the reply code and
//! the optional enhanced status code (RFC 3463). Must not: do I/O, know what command a reply
//! answers, or hold more than one bounded line of partial input.

use std::fmt;

/// Longest reply line accepted (RFC 5321 says 512; real servers send longer text).
pub const MAX_LINE: usize = 4096;
/// Most lines in one multi-line reply (EHLO answers are the longest seen).
pub const MAX_LINES: usize = 100;

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of every line, without code, separator or CRLF.
    pub lines: Vec<String>,
}

impl Reply {
    /// Builds a reply (used for replies the client synthesises, e.g. on a lost connection).
    pub fn new(code: u16, text: &str) -> Reply {
        Reply {
            code,
            lines: vec![text.to_owned()],
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The enhanced status code of the first line (`5.1.1`), if it starts with one whose class
    /// matches the reply code's.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.lines.first()?;
        let word = first.split_whitespace().next()?;
        let parts: Vec<&str> = word.split('.').collect();
        let ok = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
            && parts[0].parse::<u16>().ok() == Some(self.code / 100);
        ok.then(|| word.to_owned())
    }

    /// The enhanced status to report for this reply: its own, or one derived from the class.
    pub fn status(&self) -> String {
        self.enhanced()
            .unwrap_or_else(|| format!("{}.0.0", (self.code / 100).clamp(2, 5)))
    }

    /// The whole reply on one line: `550 5.1.1 no such user` (lines joined by a space).
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Why the server's bytes are not a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A line does not start with three digits followed by space, `-` or end of line.
    Malformed(String),
    /// A continuation line carries a different code than the first line.
    CodeChanged {
        /// The code of the first line.
        first: u16,
        /// The code of the line that differs.
        then: u16,
    },
    /// A line or the whole reply is longer than the limits.
    TooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Malformed(l) => write!(f, "malformed reply line {l:?}"),
            ReplyError::CodeChanged { first, then } => {
                write!(
                    f,
                    "reply code changed from {first} to {then} inside a multi-line reply"
                )
            }
            ReplyError::TooLong => f.write_str("reply too long"),
        }
    }
}

/// Incremental parser: feed bytes, take replies.
#[derive(Debug, Default)]
pub struct ReplyParser {
    line: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// Consumes bytes from `input` up to and including the end of the first complete reply.
    /// Returns how many bytes were consumed and the reply, if one completed. Bytes of an
    /// incomplete reply are kept inside the parser (consumed).
    pub fn parse(&mut self, input: &[u8]) -> (usize, Result<Option<Reply>, ReplyError>) {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            let (take, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (rest.len(), false),
            };
            if self.line.len() + take > MAX_LINE {
                return (used + take, Err(ReplyError::TooLong));
            }
            self.line.extend_from_slice(&rest[..take]);
            used += take;
            if !complete {
                break;
            }
            match self.finish_line() {
                Ok(Some(reply)) => return (used, Ok(Some(reply))),
                Ok(None) => {}
                Err(e) => return (used, Err(e)),
            }
        }
        (used, Ok(None))
    }

    fn finish_line(&mut self) -> Result<Option<Reply>, ReplyError> {
        let mut line = std::mem::take(&mut self.line);
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let b = text.as_bytes();
        let digits =
            b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&b[0]);
        if !digits {
            return Err(ReplyError::Malformed(text));
        }
        let code: u16 = text[..3]
            .parse()
            .map_err(|_| ReplyError::Malformed(text.clone()))?;
        let sep = b.get(3).copied();
        let last = match sep {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(ReplyError::Malformed(text)),
        };
        if let Some(first) = self.code
            && first != code
        {
            return Err(ReplyError::CodeChanged { first, then: code });
        }
        self.code = Some(code);
        if self.lines.len() >= MAX_LINES {
            return Err(ReplyError::TooLong);
        }
        self.lines.push(text.get(4..).unwrap_or("").to_owned());
        if last {
            self.code = None;
            return Ok(Some(Reply {
                code,
                lines: std::mem::take(&mut self.lines),
            }));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::default();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let (n, r) = p.parse(&input[pos..]);
            pos += n;
            if let Some(r) = r? {
                out.push(r);
            }
        }
        Ok(out)
    }

    #[test]
    fn single_and_multi_line() {
        let r = all(b"220 hi there\r\n250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], Reply::new(220, "hi there"));
        assert_eq!(r[1].code, 250);
        assert_eq!(r[1].lines, vec!["mx.test", "PIPELINING", "SIZE 100"]);
    }

    #[test]
    fn split_at_every_byte_gives_the_same_replies() {
        let input = b"220 hi\r\n250-a\r\n250 b\r\n550 5.1.1 no\r\n354\r\n";
        let whole = all(input).unwrap();
        for cut in 0..input.len() {
            let mut p = ReplyParser::default();
            let mut got = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                let mut pos = 0;
                while pos < part.len() {
                    let (n, r) = p.parse(&part[pos..]);
                    pos += n;
                    if let Some(r) = r.unwrap() {
                        got.push(r);
                    }
                }
            }
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn bare_lf_and_code_only() {
        let r = all(b"354\n250 ok\n").unwrap();
        assert_eq!(r[0].code, 354);
        assert_eq!(r[1].lines, vec!["ok"]);
    }

    #[test]
    fn malformed() {
        assert!(matches!(all(b"hello\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(all(b"250x ok\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(all(b"650 ok\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(
            all(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeChanged {
                first: 250,
                then: 251
            })
        ));
        let long = vec![b'2'; MAX_LINE + 10];
        assert!(matches!(all(&long), Err(ReplyError::TooLong)));
    }

    #[test]
    fn enhanced_status() {
        assert_eq!(
            Reply::new(550, "5.1.1 no such user").enhanced().as_deref(),
            Some("5.1.1")
        );
        assert_eq!(Reply::new(550, "4.1.1 wrong class").enhanced(), None);
        assert_eq!(Reply::new(451, "try later").status(), "4.0.0");
        assert_eq!(Reply::new(250, "2.0.0 ok").one_line(), "250 2.0.0 ok");
    }
}
