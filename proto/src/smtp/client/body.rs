//! Message body encoding for DATA (RFC 5321 §4.5.2, §4.5.3.1.6): CRLF line ends, dot-stuffing,
//! and lines longer than 998 octets broken (as Postfix's `smtp_line_length_limit`): in the
//! header section (up to the first empty line) with CRLF + SPACE, so that the rest of a long
//! header stays a folded continuation of it (RFC 5322 §2.2.3) instead of becoming body; in the
//! body with a plain CRLF.
//!
//! For BDAT (RFC 3030 CHUNKING) [`ChunkEncoder`] does only the line ends (bare CR or LF to CRLF,
//! a final CRLF when the message lacks one), as the DATA path does: no dot-stuffing (chunks are
//! counted, not terminated) and no breaking of long lines (the issue keeps folding for DATA peers
//! only), so a message with lines of at most 998 octets arrives identical either way.
//!
//! Owns: the byte transformation only, chunk by chunk, so a body of any size streams through a
//! small buffer. Must not: read files, touch sockets, or hold the message whole.

use crate::smtp::line_ends::Crlf;

/// Longest line sent, excluding CRLF (RFC 5321 §4.5.3.1.6: 1000 including CRLF).
pub const MAX_LINE: usize = 998;

/// Streaming encoder from stored message bytes to DATA bytes.
#[derive(Debug, Default, Clone)]
pub struct BodyEncoder {
    /// Octets already sent on the current output line.
    line_len: usize,
    /// A CR was seen and its LF (if any) has not arrived yet.
    pending_cr: bool,
    /// The empty line that ends the header section has been passed.
    in_body: bool,
}

impl BodyEncoder {
    /// Encodes one chunk of the stored message, appending to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 8);
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.pending_cr {
                self.pending_cr = false;
                self.end_line(out);
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.pending_cr = true;
                    i += 1;
                }
                b'\n' => {
                    self.end_line(out);
                    i += 1;
                }
                _ => {
                    // Fast path: copy a run of ordinary octets that fits on the line.
                    let run_end = input[i..]
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .map_or(input.len(), |p| i + p);
                    let mut j = i;
                    while j < run_end {
                        if self.line_len >= MAX_LINE {
                            self.break_line(out);
                        }
                        if self.line_len == 0 && input[j] == b'.' {
                            out.push(b'.');
                            self.line_len += 1;
                        }
                        let room = MAX_LINE - self.line_len;
                        let n = room.min(run_end - j).max(1);
                        // After the first octet of a line no stuffing is needed.
                        out.extend_from_slice(&input[j..j + n]);
                        self.line_len += n;
                        j += n;
                    }
                    i = run_end;
                }
            }
        }
    }

    /// Ends the body: a final CRLF when the message did not end with one, then `.` CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || self.line_len > 0 {
            self.pending_cr = false;
            self.end_line(out);
        }
        out.extend_from_slice(b".\r\n");
    }

    /// The stored line ended (an empty one ends the header section).
    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.line_len == 0 {
            self.in_body = true;
        }
        out.extend_from_slice(b"\r\n");
        self.line_len = 0;
    }

    /// A line too long to send goes on on the next line: in the header section as a folded
    /// continuation (CRLF SPACE, as Postfix does), in the body after a plain CRLF.
    fn break_line(&mut self, out: &mut Vec<u8>) {
        if self.in_body {
            out.extend_from_slice(b"\r\n");
            self.line_len = 0;
        } else {
            out.extend_from_slice(b"\r\n ");
            self.line_len = 1;
        }
    }
}

/// Streaming encoder from stored message bytes to BDAT chunk data: the line ends of [`Crlf`]
/// only.
#[derive(Debug, Default, Clone)]
pub struct ChunkEncoder {
    crlf: Crlf,
}

impl ChunkEncoder {
    /// Encodes one piece of the stored message, appending to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 8);
        self.crlf.feed(input, |b| out.extend_from_slice(b));
    }

    /// Ends the message: the CRLF of a last line that lacked one.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.crlf.finish(|b| out.extend_from_slice(b));
    }
}

/// True when `data` holds an octet above 127 (the body then needs `BODY=8BITMIME`).
pub fn has_8bit(data: &[u8]) -> bool {
    data.iter().any(|&b| b >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(input: &[u8]) -> Vec<u8> {
        enc_split(input, input.len())
    }

    /// The encoding of `input` given in two chunks, split at `cut`.
    fn enc_split(input: &[u8], cut: usize) -> Vec<u8> {
        let mut e = BodyEncoder::default();
        let mut out = Vec::new();
        e.encode(&input[..cut], &mut out);
        e.encode(&input[cut..], &mut out);
        e.finish(&mut out);
        out
    }

    /// What a receiver reconstructs: lines unstuffed, up to the lone dot.
    fn decode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in data.split_inclusive(|&b| b == b'\n') {
            if line == b".\r\n" {
                return out;
            }
            let line = line.strip_prefix(b".").unwrap_or(line);
            out.extend_from_slice(line);
        }
        panic!("no end of data");
    }

    #[test]
    fn stuffing_and_endings() {
        assert_eq!(enc(b""), b".\r\n");
        assert_eq!(enc(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(enc(b"a"), b"a\r\n.\r\n");
        assert_eq!(enc(b".\r\n..x\r\n"), b"..\r\n...x\r\n.\r\n");
        assert_eq!(enc(b"a\nb\rc\r\r\n"), b"a\r\nb\r\nc\r\n\r\n.\r\n");
        assert_eq!(enc(b"x\r\n.\r"), b"x\r\n..\r\n.\r\n");
    }

    #[test]
    fn long_lines_are_broken() {
        let mut input = b"\r\n".to_vec();
        input.extend_from_slice(&[b'a'; 2500]);
        input.extend_from_slice(b"\r\n");
        let out = enc(&input)[2..].to_vec();
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE + 1);
        }
        assert_eq!(out.len(), 2500 + 3 * 2 + 3);
        // A broken body line whose continuation starts with a dot is stuffed.
        let mut input = b"H: x\r\n\r\n".to_vec();
        input.extend_from_slice(&[b'a'; MAX_LINE]);
        input.extend_from_slice(b".b\r\n");
        assert_eq!(&enc(&input)[8 + MAX_LINE..], b"\r\n..b\r\n.\r\n");
    }

    /// Issue 10 item 10: a header line over 998 octets is folded with CRLF SPACE, so that its
    /// rest stays part of the header (a bare CRLF turned it, and every header after it, into
    /// body); in the body a plain CRLF is used. Same output at every chunk boundary.
    #[test]
    fn long_header_lines_are_folded_not_split_into_the_body() {
        let refs: String = (0..120)
            .map(|i| format!("<id{i:04}.x@example.org>"))
            .collect();
        let mut input = format!("Received: from a\r\nReferences: {refs}\r\nSubject: after\r\n\r\n")
            .into_bytes();
        let body_line = format!("{}.{}", "b".repeat(MAX_LINE - 1), "c".repeat(1200));
        input.extend_from_slice(body_line.as_bytes());
        input.extend_from_slice(b"\r\nend\r\n");
        let out = enc(&input);
        let text = String::from_utf8(out.clone()).unwrap();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .expect("header/body boundary kept");
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE), "{lines:?}");
        // Every header line is a field or a continuation of one: nothing leaked into the body.
        assert!(
            lines.iter().all(|l| l.starts_with(' ')
                || l.starts_with("Received:")
                || l.starts_with("References:")
                || l.starts_with("Subject:")),
            "{lines:?}"
        );
        assert_eq!(lines.last(), Some(&"Subject: after"));
        assert!(
            lines.len() >= 4,
            "the References line was folded: {lines:?}"
        );
        // Unfolding (RFC 5322 §2.2.3: remove CRLF before WSP) gives the header back, with the
        // one inserted space per fold, as Postfix does.
        let unfolded = head.replace("\r\n ", "");
        assert_eq!(
            unfolded,
            format!("Received: from a\r\nReferences: {refs}\r\nSubject: after")
        );
        // The body line is broken with a plain CRLF; the continuation that starts with a dot
        // is stuffed.
        let body_lines: Vec<&str> = body.split("\r\n").collect();
        assert_eq!(body_lines[0], "b".repeat(MAX_LINE - 1) + ".");
        assert!(!body_lines[1].starts_with(' '));
        // What the receiver stores: the header folded, the body line broken in two.
        let mut want = format!("{head}\r\n\r\n").into_bytes();
        for piece in body_line.as_bytes().chunks(MAX_LINE) {
            want.extend_from_slice(piece);
            want.extend_from_slice(b"\r\n");
        }
        want.extend_from_slice(b"end\r\n");
        assert!(decode(&out) == want, "decoded message differs");
        // A header line whose fold falls just before a dot: the continuation starts with the
        // space, so no stuffing is needed; and the fold happens whatever the chunking.
        let mut input = b"X-Long: ".to_vec();
        input.extend_from_slice(&[b'h'; MAX_LINE - 8]);
        input.extend_from_slice(b".dot\r\n\r\n.body\r\n");
        let want = {
            let mut w = b"X-Long: ".to_vec();
            w.extend_from_slice(&[b'h'; MAX_LINE - 8]);
            w.extend_from_slice(b"\r\n .dot\r\n\r\n..body\r\n.\r\n");
            w
        };
        assert!(
            enc(&input) == want,
            "{:?}",
            String::from_utf8_lossy(&enc(&input))
        );
        for input in [input.clone(), {
            let mut i = input.clone();
            i.extend_from_slice(&body_line.into_bytes());
            i
        }] {
            let whole = enc(&input);
            for cut in 0..input.len() {
                assert!(enc_split(&input, cut) == whole, "cut at {cut}");
            }
        }
    }

    #[test]
    fn chunking_does_not_matter() {
        let input = b"Subject: x\r\n\r\n.hello\r\nbare\nlf\rcr\r\n..\r\nend".repeat(3);
        let whole = enc(&input);
        for cut in 0..input.len() {
            assert_eq!(enc_split(&input, cut), whole, "cut at {cut}");
        }
    }

    fn chunk_enc_split(input: &[u8], cut: usize) -> Vec<u8> {
        let mut e = ChunkEncoder::default();
        let mut out = Vec::new();
        e.encode(&input[..cut], &mut out);
        e.encode(&input[cut..], &mut out);
        e.finish(&mut out);
        out
    }

    /// BDAT data is what the DATA encoding gives after unstuffing, for lines of at most 998
    /// octets: line ends made CRLF, a final CRLF added, nothing else; at every chunk boundary.
    #[test]
    fn chunk_encoding_is_data_without_stuffing() {
        let ce = |i: &[u8]| chunk_enc_split(i, 0);
        assert_eq!(ce(b""), b"");
        assert_eq!(ce(b"a"), b"a\r\n");
        assert_eq!(ce(b".\r\n..x\r\n"), b".\r\n..x\r\n");
        assert_eq!(ce(b"a\nb\rc\r\r\n"), b"a\r\nb\r\nc\r\n\r\n");
        assert_eq!(ce(b"x\r\n.\r"), b"x\r\n.\r\n");
        let mut long = b"X-Long: ".to_vec();
        long.extend_from_slice(&[b'h'; 2000]);
        long.extend_from_slice(b"\r\n\r\nbody\r\n");
        assert_eq!(ce(&long), long, "long lines are not folded for BDAT");
        let input = b"Subject: x\r\n\r\n.hello\r\nbare\nlf\rcr\r\n..\r\nend".repeat(3);
        let whole = chunk_enc_split(&input, 0);
        assert_eq!(whole, decode(&enc(&input)));
        for cut in 0..input.len() {
            assert_eq!(chunk_enc_split(&input, cut), whole, "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn crlf_text_round_trips(lines in proptest::collection::vec("[.a-z ]{0,40}", 0..20)) {
            let mut input = Vec::new();
            for l in &lines {
                input.extend_from_slice(l.as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(decode(&enc(&input)), input);
        }
    }
}
