//! The two answers a non-blocking call gives that are not errors: "would block" (wait for the
//! next readiness event) and "interrupted" (a signal arrived: call again), as mio's examples
//! spell them.
//!
//! Must not: wait, or hide any other error.

use std::io;

/// The call would block: wait for the next readiness event.
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// A signal interrupted the call: make it again.
pub fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// Runs `op` again while a signal interrupts it; `Ok(None)` when it would block.
pub fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<Option<T>> {
    loop {
        match op() {
            Ok(v) => return Ok(Some(v)),
            Err(e) if would_block(&e) => return Ok(None),
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `retry` over a scripted sequence of results: what it returns, and how many calls.
    fn run(script: Vec<io::Result<usize>>) -> (io::Result<Option<usize>>, usize) {
        let mut script = script.into_iter();
        let mut calls = 0;
        let r = retry(|| {
            calls += 1;
            script.next().unwrap_or(Ok(99))
        });
        (r, calls)
    }

    #[test]
    fn interrupted_calls_are_made_again_would_block_is_none_other_errors_pass() {
        let (r, calls) = run(vec![Ok(3)]);
        assert_eq!((r.unwrap(), calls), (Some(3), 1));
        let eintr = || Err(io::ErrorKind::Interrupted.into());
        let (r, calls) = run(vec![eintr(), eintr(), Ok(0)]);
        assert_eq!((r.unwrap(), calls), (Some(0), 3));
        let (r, calls) = run(vec![eintr(), Err(io::ErrorKind::WouldBlock.into())]);
        assert_eq!((r.unwrap(), calls), (None, 2));
        let (r, calls) = run(vec![Err(io::ErrorKind::ConnectionReset.into())]);
        assert_eq!(
            (r.unwrap_err().kind(), calls),
            (io::ErrorKind::ConnectionReset, 1)
        );
    }
}
