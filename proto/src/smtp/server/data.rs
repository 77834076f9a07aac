//! The DATA phase decoder: finds the end of data, removes dot-stuffing, normalises line ends,
//! and counts the message size, one byte-level state machine fed chunk by chunk.
//!
//! Smuggling policy: the data ends only at `<CR><LF>.<CR><LF>` (the CR LF that ended the DATA
//! command counts as the first one). A bare CR or bare LF is stored as CR LF, so the stored
//! message always has CRLF line ends; a "." line reached through a bare CR or LF is content,
//! stored as the line ".", and never ends the message or starts another. This module owns no
//! buffers beyond the output it is handed and does no I/O.
//!
//! [`ChunkDecoder`] is the BDAT counterpart (RFC 3030): chunk data is exact octets, so there
//! is no dot-stuffing and no end-of-data search, but line ends are normalised exactly as in
//! DATA (bare CR and bare LF become CR LF, also across chunk boundaries), and a non-empty
//! message that does not end with a line end gets CR LF, so a BDAT message is stored as the
//! same bytes as the same message sent with DATA.
//!
//! It also owns [`HopCounter`], which counts the `Received:` fields of the header section in
//! the decoded content as it streams (loop detection, RFC 5321 §6.3), without holding it.

use crate::smtp::line_ends::Crlf;

/// Where the decoder is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `real` when the previous line ended with a true CR LF.
    LineStart { real: bool },
    /// Saw a "." at the start of a line.
    Dot { real: bool },
    /// Saw "." then CR at the start of a line.
    DotCr { real: bool },
    /// Inside a line.
    Middle,
    /// Saw a CR inside a line.
    Cr,
}

/// What one call to [`DataDecoder::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes consumed (all of them unless the end of data was found).
    pub consumed: usize,
    /// The end-of-data sequence was found; `consumed` stops right after it.
    pub done: bool,
    /// At least one line ended in this chunk (the idle timer restarts per line).
    pub line_ended: bool,
}

/// Streaming decoder for the DATA phase.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    size: u64,
    limit: u64,
}

impl DataDecoder {
    /// A decoder at the start of data (just after the CR LF of the DATA command) that stops
    /// storing after `limit` octets.
    pub fn new(limit: u64) -> DataDecoder {
        DataDecoder {
            state: State::LineStart { real: true },
            size: 0,
            limit,
        }
    }

    /// Octets of message content seen so far (counted also past the limit).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True once the content exceeded the limit; what follows is discarded.
    pub fn too_big(&self) -> bool {
        self.size > self.limit
    }

    /// Decodes `input`, appending message content to `out` (nothing once over the limit).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut line_ended = false;
        let mut i = 0;
        while i < input.len() {
            // Fast path: copy a run of ordinary bytes in the middle of a line.
            if self.state == State::Middle {
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                if run > 0 {
                    self.emit(&input[i..i + run], out);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            match self.step(b, out) {
                Step::Continue => {}
                Step::LineEnd => line_ended = true,
                Step::End => {
                    return Fed {
                        consumed: i,
                        done: true,
                        line_ended: true,
                    };
                }
            }
        }
        Fed {
            consumed: input.len(),
            done: false,
            line_ended,
        }
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> Step {
        match self.state {
            State::LineStart { real } => match b {
                b'.' => self.state = State::Dot { real },
                b'\r' => self.state = State::Cr,
                b'\n' => return self.line_end(false, out),
                _ => {
                    self.emit(&[b], out);
                    self.state = State::Middle;
                }
            },
            State::Dot { real } => match b {
                b'\r' => self.state = State::DotCr { real },
                b'\n' => {
                    self.emit(b".", out);
                    return self.line_end(false, out);
                }
                _ => {
                    // Dot-stuffing: a leading dot followed by more text is removed.
                    self.emit(&[b], out);
                    self.state = State::Middle;
                }
            },
            State::DotCr { real } => {
                if b == b'\n' {
                    if real {
                        return Step::End;
                    }
                    self.emit(b".", out);
                    return self.line_end(true, out);
                }
                // ".<CR>" then something else: a bare CR ends the "." line.
                self.emit(b".", out);
                self.line_end(false, out);
                return self.reprocess(b, out);
            }
            State::Middle => match b {
                b'\r' => self.state = State::Cr,
                b'\n' => return self.line_end(false, out),
                _ => self.emit(&[b], out),
            },
            State::Cr => {
                if b == b'\n' {
                    return self.line_end(true, out);
                }
                self.line_end(false, out);
                return self.reprocess(b, out);
            }
        }
        Step::Continue
    }

    /// Handles `b` at the start of a line that followed a bare CR.
    fn reprocess(&mut self, b: u8, out: &mut Vec<u8>) -> Step {
        match self.step(b, out) {
            Step::Continue => Step::LineEnd,
            other => other,
        }
    }

    fn line_end(&mut self, real: bool, out: &mut Vec<u8>) -> Step {
        self.emit(b"\r\n", out);
        self.state = State::LineStart { real };
        Step::LineEnd
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size <= self.limit {
            out.extend_from_slice(bytes);
        }
    }
}

enum Step {
    Continue,
    LineEnd,
    End,
}

/// BDAT chunk data: the line ends of [`Crlf`], with the same size accounting as
/// [`DataDecoder`] (content past `limit` is counted but not emitted).
#[derive(Debug, Clone)]
pub struct ChunkDecoder {
    crlf: Crlf,
    size: u64,
    limit: u64,
}

impl ChunkDecoder {
    /// A decoder at the start of a message that stops storing after `limit` octets.
    pub fn new(limit: u64) -> ChunkDecoder {
        ChunkDecoder {
            crlf: Crlf::default(),
            size: 0,
            limit,
        }
    }

    /// Octets of message content so far (counted also past the limit).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True once the content exceeded the limit.
    pub fn too_big(&self) -> bool {
        self.size > self.limit
    }

    /// Normalises all of `input` (chunk data), appending content to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let ChunkDecoder { crlf, size, limit } = self;
        crlf.feed(input, |b| keep(b, size, *limit, out));
    }

    /// The end of the message (after `BDAT ... LAST`): a pending CR, or a last line without a
    /// line end, gets CR LF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let ChunkDecoder { crlf, size, limit } = self;
        crlf.finish(|b| keep(b, size, *limit, out));
    }
}

/// Counts `bytes` into `size` and keeps them while the size is within `limit`.
fn keep(bytes: &[u8], size: &mut u64, limit: u64, out: &mut Vec<u8>) {
    *size += bytes.len() as u64;
    if *size <= limit {
        out.extend_from_slice(bytes);
    }
}

/// Counts `Received:` header fields in decoded message content (CRLF line ends), chunk by
/// chunk, until the empty line that ends the header section. Holds at most 9 octets.
#[derive(Debug, Clone, Default)]
pub struct HopCounter {
    /// The header section has ended (empty line seen).
    done: bool,
    /// Octets of the current line seen so far (capped).
    len: usize,
    /// The first octets of the current line.
    prefix: [u8; 9],
    count: usize,
}

impl HopCounter {
    /// `Received:` fields counted so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Scans more decoded content.
    pub fn feed(&mut self, content: &[u8]) {
        const NAME: &[u8; 9] = b"received:";
        for &b in content {
            if self.done {
                return;
            }
            if b == b'\n' {
                // Only CR before the LF: the empty line ending the header section.
                if self.len == 0 || (self.len == 1 && self.prefix[0] == b'\r') {
                    self.done = true;
                }
                self.len = 0;
                continue;
            }
            if self.len < NAME.len() {
                self.prefix[self.len] = b;
                self.len += 1;
                if self.len == NAME.len() && self.prefix.eq_ignore_ascii_case(NAME) {
                    self.count += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normalises `input` as one BDAT message split at every index and byte by byte.
    fn chunks(input: &[u8]) -> Vec<u8> {
        let run = |cuts: &[usize]| {
            let mut d = ChunkDecoder::new(1 << 20);
            let mut out = Vec::new();
            let mut start = 0;
            for &c in cuts.iter().chain([input.len()].iter()) {
                d.feed(&input[start..c], &mut out);
                start = c;
            }
            d.finish(&mut out);
            assert_eq!(d.size(), out.len() as u64);
            out
        };
        let whole = run(&[]);
        for i in 0..=input.len() {
            assert_eq!(run(&[i]), whole, "split at {i}");
        }
        let bytes: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn chunk_data_is_exact_but_line_ends_normalised() {
        assert_eq!(chunks(b""), b"");
        assert_eq!(chunks(b"a\r\n.\r\n..b\r\n"), b"a\r\n.\r\n..b\r\n");
        assert_eq!(chunks(b"a\nb\rc\r\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(chunks(b"\r\r\n\n\r"), b"\r\n\r\n\r\n\r\n");
        assert_eq!(chunks(b"no end"), b"no end\r\n");
        assert_eq!(chunks(b"x\r"), b"x\r\n");
        assert_eq!(chunks(b"\0\xff\r\n"), b"\0\xff\r\n");
    }

    #[test]
    fn chunk_limit_counts_past_it() {
        let mut d = ChunkDecoder::new(4);
        let mut out = Vec::new();
        d.feed(b"ab\ncd", &mut out);
        assert!(d.too_big());
        assert_eq!(d.size(), 6);
        assert_eq!(out, b"ab\r\n");
    }

    /// Decodes `input` whole and split at every index; all must agree. Returns (content, consumed).
    fn decode(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let whole = run(input, &[input.len()]);
        for split in 0..=input.len() {
            assert_eq!(run(input, &[split, input.len()]), whole, "split at {split}");
        }
        let bytewise: Vec<usize> = (1..=input.len()).collect();
        assert_eq!(run(input, &bytewise), whole, "byte by byte");
        whole
    }

    fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<usize>) {
        let mut d = DataDecoder::new(u64::MAX);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.max(start);
            let fed = d.feed(&input[start..cut], &mut out);
            if fed.done {
                return (out, Some(start + fed.consumed));
            }
            start = cut;
        }
        (out, None)
    }

    #[test]
    fn empty_message_right_after_354() {
        assert_eq!(decode(b".\r\nQUIT\r\n"), (vec![], Some(3)));
    }

    #[test]
    fn unstuffs_leading_dots() {
        let (out, end) = decode(b"..hidden\r\n.x\r\nplain.\r\n..\r\n.\r\n");
        assert_eq!(out, b".hidden\r\nx\r\nplain.\r\n.\r\n");
        assert_eq!(end, Some(29));
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        let cases: [&[u8]; 4] = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"];
        for seq in cases {
            let mut input = b"a".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<x@y.example>\r\n");
            let (out, end) = decode(&input);
            assert_eq!(end, None, "{seq:?} ended the data");
            assert!(out.windows(5).any(|w| w == b".\r\nMA"), "{seq:?}: {out:?}");
            // Every line end stored is CRLF.
            for (i, &b) in out.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(out[i - 1], b'\r');
                }
                if b == b'\r' {
                    assert_eq!(out.get(i + 1), Some(&b'\n'));
                }
            }
        }
    }

    #[test]
    fn bare_line_ends_are_normalised() {
        let (out, end) = decode(b"a\nb\rc\r\n\r\n.\r\n");
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\n");
        assert_eq!(end, Some(12));
    }

    #[test]
    fn size_limit_discards_excess_but_finds_end() {
        let mut d = DataDecoder::new(4);
        let mut out = Vec::new();
        let fed = d.feed(b"abcdefgh\r\n.\r\nrest", &mut out);
        assert!(fed.done);
        assert_eq!(fed.consumed, 13);
        assert!(d.too_big());
        assert!(out.len() <= 4);
        assert_eq!(d.size(), 10);
    }

    #[test]
    fn hop_counter_counts_received_fields_of_the_header_section_only() {
        let msg = b"Received: from a\r\n\tby b\r\nRECEIVED:x\r\nX-Received: no\r\n Received: folded\r\nSubject: s\r\n\r\nReceived: in the body\r\n";
        let whole = {
            let mut h = HopCounter::default();
            h.feed(msg);
            h.count()
        };
        assert_eq!(whole, 2);
        for i in 0..=msg.len() {
            let mut h = HopCounter::default();
            h.feed(&msg[..i]);
            h.feed(&msg[i..]);
            assert_eq!(h.count(), whole, "split at {i}");
        }
        let mut h = HopCounter::default();
        h.feed(b"\r\nReceived: body only\r\n");
        assert_eq!(h.count(), 0);
    }
}
