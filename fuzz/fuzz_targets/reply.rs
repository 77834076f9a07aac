//! The smtp-relay reply parser (`proto::smtp::client::reply`). Byte 0 seeds the split points;
//! the rest is what a server sends.
//!
//! Invariants: every call makes progress; every reply has a code 200..=599 and at most
//! MAX_LINES lines each shorter than MAX_LINE; the results do not depend on how the input is
//! split; a reply written back in wire form parses to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::smtp::client::reply::{MAX_LINE, MAX_LINES, Reply, ReplyError, ReplyParser};

/// Replies until the first error (the client drops the connection there), splitting the input
/// into chunks of sizes drawn from `seed` (0: whole).
fn run(input: &[u8], seed: u8) -> (Vec<Reply>, Option<ReplyError>) {
    let mut p = ReplyParser::default();
    let mut replies = Vec::new();
    let mut x = u32::from(seed) | 1;
    let mut pos = 0;
    let mut end = 0;
    while pos < input.len() {
        if pos == end {
            let n = if seed == 0 {
                input.len()
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                1 + (x % 16) as usize
            };
            end = (pos + n).min(input.len());
        }
        let (used, r) = p.parse(&input[pos..end]);
        assert!(used <= end - pos);
        pos += used;
        match r {
            Ok(Some(reply)) => {
                assert!(used > 0);
                replies.push(reply);
            }
            Ok(None) => assert!(used > 0 && pos == end, "no progress / stopped early"),
            Err(e) => return (replies, Some(e)),
        }
    }
    (replies, None)
}

fn wire(r: &Reply) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, l) in r.lines.iter().enumerate() {
        let sep = if i + 1 == r.lines.len() { ' ' } else { '-' };
        v.extend_from_slice(format!("{}{sep}{l}\r\n", r.code).as_bytes());
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = run(input, 0);
    let split = run(input, seed);
    assert_eq!(whole, split, "result depends on the split");
    for r in &whole.0 {
        assert!((200..600).contains(&r.code), "code {}", r.code);
        assert!(!r.lines.is_empty() && r.lines.len() <= MAX_LINES);
        // Lines are bounded in input octets; lossy UTF-8 may triple them in the String.
        assert!(r.lines.iter().all(|l| l.len() < 3 * MAX_LINE));
        let _ = (r.enhanced(), r.status(), r.one_line(), r.is_positive());
        let bytes = wire(r);
        // Invalid UTF-8 became U+FFFD (3 octets for 1): a line may no longer fit MAX_LINE
        // once written back, so the round trip is only checked for lines that still fit.
        if r.lines.iter().any(|l| l.len() + 6 > MAX_LINE) {
            continue;
        }
        let (again, err) = run(&bytes, 0);
        assert_eq!(err, None, "{r:?} written back does not parse");
        assert_eq!(again, vec![r.clone()], "{r:?} written back");
    }
});
