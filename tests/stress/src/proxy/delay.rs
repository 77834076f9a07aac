//! The pure delay line of one direction of one proxied connection: bytes read at `now` become
//! deliverable at `now + delay`, in order; an end of stream read after them becomes due after
//! them. No sockets, no clock: every call takes the time in, so the tests drive it by hand.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One direction's queue of (due time, bytes) chunks, and the end of stream behind them.
#[derive(Debug)]
pub struct DelayLine {
    delay: Duration,
    limit: usize,
    chunks: VecDeque<(Instant, Vec<u8>)>,
    /// Bytes of the front chunk already delivered.
    offset: usize,
    /// Bytes held (not yet delivered).
    buffered: usize,
    /// When the end of stream was read, plus the delay.
    eof_due: Option<Instant>,
}

impl DelayLine {
    /// An empty line delaying by `delay`, which accepts input while it holds less than `limit`
    /// bytes.
    pub fn new(delay: Duration, limit: usize) -> DelayLine {
        DelayLine {
            delay,
            limit,
            chunks: VecDeque::new(),
            offset: 0,
            buffered: 0,
            eof_due: None,
        }
    }

    /// Bytes read at `now`: deliverable from `now + delay`. Ignored after the end of stream
    /// (nothing can follow it) and when empty.
    pub fn push(&mut self, now: Instant, bytes: &[u8]) {
        if bytes.is_empty() || self.eof_due.is_some() {
            return;
        }
        let due = self.due_from(now);
        self.buffered += bytes.len();
        self.chunks.push_back((due, bytes.to_vec()));
    }

    /// The end of stream, read at `now`: due at `now + delay`, and never before the data read
    /// earlier. Only the first one counts.
    pub fn push_eof(&mut self, now: Instant) {
        if self.eof_due.is_none() {
            self.eof_due = Some(self.due_from(now));
        }
    }

    /// `now + delay`, but never earlier than what is already queued (a clock that steps back
    /// must not reorder anything).
    fn due_from(&self, now: Instant) -> Instant {
        let due = now + self.delay;
        match self.chunks.back() {
            Some(&(last, _)) if last > due => last,
            _ => due,
        }
    }

    /// True while the line holds less than its limit: the reactor reads only then, so memory
    /// stays bounded (a read may overshoot by one read buffer).
    pub fn has_room(&self) -> bool {
        self.buffered < self.limit
    }

    /// Bytes held.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// True once the end of stream has been read (delivered or not).
    pub fn eof_read(&self) -> bool {
        self.eof_due.is_some()
    }

    /// The bytes due at `now` at the front of the line (the rest of one chunk), if any.
    pub fn ready(&self, now: Instant) -> Option<&[u8]> {
        match self.chunks.front() {
            Some((due, bytes)) if *due <= now => Some(&bytes[self.offset..]),
            _ => None,
        }
    }

    /// `n` bytes of [`ready`](Self::ready) were delivered.
    pub fn consume(&mut self, n: usize) {
        let Some((_, bytes)) = self.chunks.front() else {
            return;
        };
        let n = n.min(bytes.len() - self.offset);
        self.offset += n;
        self.buffered -= n;
        if self.offset == bytes.len() {
            self.chunks.pop_front();
            self.offset = 0;
        }
    }

    /// True when every byte has been delivered and the end of stream is due at `now`: time to
    /// pass the end of stream on (shut down the writing side).
    pub fn eof_ready(&self, now: Instant) -> bool {
        self.chunks.is_empty() && self.eof_due.is_some_and(|due| due <= now)
    }

    /// The next time something becomes due (the front chunk, or the end of stream once the data
    /// is gone); `None` when nothing is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        match self.chunks.front() {
            Some((due, _)) => Some(*due),
            None => self.eof_due,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn drain(line: &mut DelayLine, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = line.ready(now) {
            let b = b.to_vec();
            out.extend_from_slice(&b);
            line.consume(b.len());
        }
        out
    }

    #[test]
    fn bytes_come_out_after_the_delay_in_order() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(25 * MS, 1 << 20);
        l.push(t0, b"hello ");
        l.push(t0 + 10 * MS, b"world");
        assert_eq!(l.next_due(), Some(t0 + 25 * MS));
        assert_eq!(l.ready(t0), None);
        assert_eq!(l.ready(t0 + 24 * MS), None);
        assert_eq!(drain(&mut l, t0 + 25 * MS), b"hello ");
        assert_eq!(l.next_due(), Some(t0 + 35 * MS));
        assert_eq!(drain(&mut l, t0 + 34 * MS), b"");
        assert_eq!(drain(&mut l, t0 + 35 * MS), b"world");
        assert_eq!(l.next_due(), None);
        assert_eq!(l.buffered(), 0);
    }

    #[test]
    fn partial_writes_keep_the_rest_at_the_front() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(MS, 1 << 20);
        l.push(t0, b"abcdef");
        l.push(t0, b"gh");
        assert_eq!(l.buffered(), 8);
        l.consume(2);
        assert_eq!(l.ready(t0 + MS), Some(&b"cdef"[..]));
        assert_eq!(l.buffered(), 6);
        l.consume(100); // more than the chunk holds: only the chunk
        assert_eq!(l.ready(t0 + MS), Some(&b"gh"[..]));
        assert_eq!(l.buffered(), 2);
        l.consume(2);
        assert_eq!(l.ready(t0 + MS), None);
        l.consume(1); // nothing queued: no effect
        assert_eq!(l.buffered(), 0);
    }

    #[test]
    fn end_of_stream_follows_the_data() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(20 * MS, 1 << 20);
        l.push(t0, b"last words");
        l.push_eof(t0 + 5 * MS);
        l.push(t0 + 6 * MS, b"ignored after EOF");
        l.push_eof(t0 + 7 * MS); // only the first counts
        assert!(l.eof_read());
        assert!(!l.eof_ready(t0 + 30 * MS), "data still queued");
        assert_eq!(drain(&mut l, t0 + 30 * MS), b"last words");
        assert_eq!(l.next_due(), Some(t0 + 25 * MS));
        assert!(!l.eof_ready(t0 + 24 * MS));
        assert!(l.eof_ready(t0 + 25 * MS));
    }

    #[test]
    fn end_of_stream_alone_is_delayed_too() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(20 * MS, 1 << 20);
        assert!(!l.eof_read());
        assert_eq!(l.next_due(), None);
        l.push_eof(t0);
        assert_eq!(l.next_due(), Some(t0 + 20 * MS));
        assert!(!l.eof_ready(t0 + 19 * MS));
        assert!(l.eof_ready(t0 + 20 * MS));
    }

    #[test]
    fn a_clock_stepping_back_never_reorders() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(10 * MS, 1 << 20);
        l.push(t0 + 50 * MS, b"first");
        l.push(t0, b"second");
        l.push_eof(t0);
        assert_eq!(drain(&mut l, t0 + 59 * MS), b"");
        assert_eq!(drain(&mut l, t0 + 60 * MS), b"firstsecond");
        assert!(l.eof_ready(t0 + 60 * MS));
    }

    #[test]
    fn room_is_bounded_by_the_limit() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(MS, 10);
        assert!(l.has_room());
        l.push(t0, b"123456789");
        assert!(l.has_room());
        l.push(t0, b"0");
        assert!(!l.has_room(), "10 bytes held at a limit of 10");
        l.push(t0, b""); // empty reads queue nothing
        assert_eq!(l.buffered(), 10);
        l.consume(1);
        assert!(l.has_room());
    }

    #[test]
    fn zero_delay_passes_at_once() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(Duration::ZERO, 1 << 20);
        l.push(t0, b"now");
        assert_eq!(drain(&mut l, t0), b"now");
    }
}
