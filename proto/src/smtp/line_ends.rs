//! Line ends for BDAT (RFC 3030), shared by both sides: chunk data is exact octets on the wire,
//! and this project sends and stores it with the line ends DATA gives (RFC 5321 §2.3.8): a bare
//! CR, a bare LF and CR LF each become one CR LF, and a message whose last line lacks a line end
//! gets one.
//!
//! Owns: that rule, streaming (a CR ending one piece and an LF starting the next are one line
//! end). Must not: count, limit or keep what passes through (the callers do, in `emit`).

/// Streaming CR LF normaliser.
#[derive(Debug, Clone)]
pub struct Crlf {
    /// The last octet fed was a CR whose line end is not yet emitted.
    cr: bool,
    /// The last octets emitted ended a line (or nothing was emitted yet).
    at_line_start: bool,
}

impl Default for Crlf {
    fn default() -> Crlf {
        Crlf {
            cr: false,
            at_line_start: true,
        }
    }
}

impl Crlf {
    /// Normalises all of `input`, handing the result to `emit` piece by piece.
    pub fn feed(&mut self, input: &[u8], mut emit: impl FnMut(&[u8])) {
        let mut i = 0;
        while i < input.len() {
            if self.cr {
                // CR LF, or a bare CR: either way one line end.
                self.cr = false;
                self.line_end(&mut emit);
                if input[i] == b'\n' {
                    i += 1;
                }
                continue;
            }
            let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
            if run > 0 {
                emit(&input[i..i + run]);
                self.at_line_start = false;
                i += run;
                continue;
            }
            if input[i] == b'\r' {
                self.cr = true;
            } else {
                self.line_end(&mut emit);
            }
            i += 1;
        }
    }

    /// The end of the message: a pending CR, or a last line without a line end, gets CR LF.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if self.cr || !self.at_line_start {
            self.cr = false;
            self.line_end(&mut emit);
        }
    }

    fn line_end(&mut self, emit: &mut impl FnMut(&[u8])) {
        emit(b"\r\n");
        self.at_line_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalise(pieces: &[&[u8]]) -> Vec<u8> {
        let mut c = Crlf::default();
        let mut out = Vec::new();
        for p in pieces {
            c.feed(p, |b| out.extend_from_slice(b));
        }
        c.finish(|b| out.extend_from_slice(b));
        out
    }

    #[test]
    fn every_line_end_becomes_crlf_at_any_split() {
        let input: &[u8] = b"a\r\nb\nc\rd\r\r\n\n.e";
        let want: &[u8] = b"a\r\nb\r\nc\r\nd\r\n\r\n\r\n.e\r\n";
        assert_eq!(normalise(&[input]), want);
        for cut in 0..=input.len() {
            assert_eq!(
                normalise(&[&input[..cut], &input[cut..]]),
                want,
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(normalise(&bytes), want);
        assert_eq!(normalise(&[b""]), b"");
        assert_eq!(normalise(&[b"x\r"]), b"x\r\n");
    }
}
