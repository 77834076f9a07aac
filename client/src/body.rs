//! Message body encoding for DATA (RFC 5321 §4.5.2, §4.5.3.1.6): CRLF line ends, dot-stuffing,
//! and lines longer than 998 octets broken in two (as Postfix's `smtp_line_length_limit`).
//!
//! Owns: the byte transformation only, chunk by chunk, so a body of any size streams through a
//! small buffer. Must not: read files, touch sockets, or hold the message whole.

/// Longest line sent, excluding CRLF (RFC 5321 §4.5.3.1.6: 1000 including CRLF).
pub const MAX_LINE: usize = 998;

/// Streaming encoder from stored message bytes to DATA bytes.
#[derive(Debug, Default, Clone)]
pub struct BodyEncoder {
    /// Octets already sent on the current output line.
    line_len: usize,
    /// A CR was seen and its LF (if any) has not arrived yet.
    pending_cr: bool,
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
                            self.end_line(out);
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

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.line_len = 0;
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
        let mut e = BodyEncoder::default();
        let mut out = Vec::new();
        e.encode(input, &mut out);
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
        let mut input = vec![b'a'; 2500];
        input.extend_from_slice(b"\r\n");
        let out = enc(&input);
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE + 1);
        }
        assert_eq!(out.len(), 2500 + 3 * 2 + 3);
        // A broken line whose continuation starts with a dot is stuffed.
        let mut input = vec![b'a'; MAX_LINE];
        input.extend_from_slice(b".b\r\n");
        assert_eq!(&enc(&input)[MAX_LINE..], b"\r\n..b\r\n.\r\n");
    }

    #[test]
    fn chunking_does_not_matter() {
        let input = b"Subject: x\r\n\r\n.hello\r\nbare\nlf\rcr\r\n..\r\nend".repeat(3);
        let whole = enc(&input);
        for cut in 0..input.len() {
            let mut e = BodyEncoder::default();
            let mut out = Vec::new();
            e.encode(&input[..cut], &mut out);
            e.encode(&input[cut..], &mut out);
            e.finish(&mut out);
            assert_eq!(out, whole, "cut at {cut}");
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
