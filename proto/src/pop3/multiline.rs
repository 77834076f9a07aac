//! The multi-line body of a `RETR` or `TOP` response (RFC 1939 §3), made from the message file
//! chunk by chunk: line ends become CR LF (a bare LF, as some Maildir writers store, gets its
//! CR; a CR not followed by LF is content), a line that starts with `.` gets a second `.`, a
//! last line without a line end gets one, and the response ends with `.` CR LF. For `TOP n m`
//! it stops after the header section, the blank line and `m` body lines.
//!
//! Owns: that transformation and its state across chunks (a CR at the end of one chunk, a `.`
//! at the start of the next). Must not: read the file or keep the message: each chunk is
//! transformed and appended to the output as it comes, so a 100 MiB message never sits in
//! memory.

use memchr::memchr2;

/// Turns message bytes into the dot-stuffed multi-line response, chunk by chunk.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// Body lines still to send (`TOP`); `None`: the whole message (`RETR`).
    body_lines: Option<u64>,
    /// The next byte starts a line.
    at_line_start: bool,
    /// A CR was the last byte seen; whether it ends a line depends on the next byte.
    pending_cr: bool,
    /// The header section ended (the blank line was seen).
    in_body: bool,
    /// The current line has content (for spotting the blank line that ends the header).
    line_has_content: bool,
    /// Everything wanted was sent (`TOP` limit reached); later input is ignored.
    done: bool,
}

impl DotStuffer {
    /// A stuffer for the whole message (`body_lines: None`, RETR) or for the header section and
    /// that many body lines (TOP).
    pub fn new(body_lines: Option<u64>) -> DotStuffer {
        DotStuffer {
            body_lines,
            at_line_start: true,
            pending_cr: false,
            in_body: false,
            line_has_content: false,
            done: false,
        }
    }

    /// True once the `TOP` limit is reached: no more input is needed, only [`Self::finish`].
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Appends the transformed `input` to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 8);
        while !input.is_empty() && !self.done {
            if self.pending_cr {
                self.pending_cr = false;
                if input[0] == b'\n' {
                    input = &input[1..];
                    self.line_end(out);
                    continue;
                }
                // A bare CR: content.
                self.content(b"\r", out);
                continue;
            }
            match memchr2(b'\r', b'\n', input) {
                None => {
                    self.content(input, out);
                    input = &[];
                }
                Some(i) => {
                    if i > 0 {
                        self.content(&input[..i], out);
                    }
                    if input[i] == b'\n' {
                        self.line_end(out);
                    } else {
                        self.pending_cr = true;
                    }
                    input = &input[i + 1..];
                }
            }
        }
    }

    /// Ends the response: a pending CR, a line end if the last line had none, and `.` CR LF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.done {
            if self.pending_cr {
                self.pending_cr = false;
                self.content(b"\r", out);
            }
            if !self.at_line_start {
                out.extend_from_slice(b"\r\n");
            }
        }
        self.done = true;
        out.extend_from_slice(b".\r\n");
    }

    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.at_line_start && bytes.first() == Some(&b'.') {
            out.push(b'.');
        }
        self.at_line_start = false;
        self.line_has_content = true;
        out.extend_from_slice(bytes);
    }

    fn line_end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        let blank = !self.line_has_content;
        self.at_line_start = true;
        self.line_has_content = false;
        let Some(left) = &mut self.body_lines else {
            return;
        };
        if !self.in_body {
            if blank {
                self.in_body = true;
                self.done = *left == 0;
            }
        } else {
            *left = left.saturating_sub(1);
            self.done = *left == 0;
        }
    }
}

/// The size of `message` as a RETR sends it before dot-stuffing (RFC 1939 counts CR LF line
/// ends): what [`DotStuffer`] makes of it, without the added dots and terminator.
pub fn crlf_size(message: &[u8]) -> u64 {
    let mut s = DotStuffer::new(None);
    let mut out = Vec::new();
    s.feed(message, &mut out);
    s.finish(&mut out);
    let dots = out
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b".."))
        .count() as u64;
    out.len() as u64 - 3 - dots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body_lines: Option<u64>, input: &[u8]) -> Vec<u8> {
        let mut s = DotStuffer::new(body_lines);
        let mut out = Vec::new();
        s.feed(input, &mut out);
        s.finish(&mut out);
        out
    }

    /// Fed whole, split at every index, and byte by byte: the same output.
    fn check(body_lines: Option<u64>, input: &[u8], expected: &[u8]) {
        let one = whole(body_lines, input);
        assert_eq!(
            String::from_utf8_lossy(&one),
            String::from_utf8_lossy(expected)
        );
        for i in 0..=input.len() {
            let mut s = DotStuffer::new(body_lines);
            let mut out = Vec::new();
            s.feed(&input[..i], &mut out);
            s.feed(&input[i..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, expected, "split at {i}");
        }
        let mut s = DotStuffer::new(body_lines);
        let mut out = Vec::new();
        for b in input {
            s.feed(std::slice::from_ref(b), &mut out);
        }
        s.finish(&mut out);
        assert_eq!(out, expected, "byte by byte");
    }

    #[test]
    fn crlf_message_is_dot_stuffed() {
        check(
            None,
            b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend.\r\n.\r\n",
            b"Subject: x\r\n\r\n..hidden\r\n...two\r\nend.\r\n..\r\n.\r\n",
        );
    }

    #[test]
    fn bare_lf_becomes_crlf_and_bare_cr_stays() {
        check(
            None,
            b"A: 1\n\nline\r with cr\n.dot\n",
            b"A: 1\r\n\r\nline\r with cr\r\n..dot\r\n.\r\n",
        );
    }

    #[test]
    fn last_line_without_end_gets_one() {
        check(None, b"A: 1\r\n\r\nno end", b"A: 1\r\n\r\nno end\r\n.\r\n");
        check(
            None,
            b"A: 1\r\n\r\nends in cr\r",
            b"A: 1\r\n\r\nends in cr\r\r\n.\r\n",
        );
        check(None, b"", b".\r\n");
    }

    #[test]
    fn top_sends_headers_blank_line_and_n_body_lines() {
        let msg = b"A: 1\r\nB: 2\r\n\r\none\r\n.two\r\nthree\r\n";
        check(Some(0), msg, b"A: 1\r\nB: 2\r\n\r\n.\r\n");
        check(Some(1), msg, b"A: 1\r\nB: 2\r\n\r\none\r\n.\r\n");
        check(Some(2), msg, b"A: 1\r\nB: 2\r\n\r\none\r\n..two\r\n.\r\n");
        check(
            Some(99),
            msg,
            b"A: 1\r\nB: 2\r\n\r\none\r\n..two\r\nthree\r\n.\r\n",
        );
        // No body at all: the header section is the whole message.
        check(Some(0), b"A: 1\nB: 2\n", b"A: 1\r\nB: 2\r\n.\r\n");
        // Bare LF line ends count as lines for TOP too.
        check(Some(1), b"A: 1\n\nx\ny\n", b"A: 1\r\n\r\nx\r\n.\r\n");
    }

    #[test]
    fn done_ignores_the_rest() {
        let mut s = DotStuffer::new(Some(0));
        let mut out = Vec::new();
        s.feed(b"A: 1\r\n\r\nbody\r\n", &mut out);
        assert!(s.is_done());
        s.feed(b"more\r\n", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"A: 1\r\n\r\n.\r\n");
    }

    #[test]
    fn size_counts_crlf_without_stuffing() {
        assert_eq!(crlf_size(b"A: 1\r\n\r\n.x\r\n"), 12);
        assert_eq!(crlf_size(b"A: 1\n\n.x\n"), 12);
        assert_eq!(crlf_size(b"A: 1\n\n.x"), 12);
    }
}
