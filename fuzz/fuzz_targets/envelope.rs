//! The envelope reader: never panics on any file, and what it accepts round-trips: writing the
//! envelope back and appending the rest of the file reads as the same envelope and rest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use maildir_core::envelope::EnvelopeReader;
use std::io::Read;

fn read_all(data: &[u8]) -> Option<(maildir_core::Envelope, Vec<u8>)> {
    let (env, mut reader) = EnvelopeReader::open(data).ok()?;
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .expect("reading a slice cannot fail");
    Some((env, rest))
}

fuzz_target!(|data: &[u8]| {
    let Some((env, rest)) = read_all(data) else {
        return;
    };
    assert!(!env.recipients.is_empty(), "accepted without a recipient");
    // Nothing is lost or invented: the rest is a suffix of the input.
    assert!(data.ends_with(&rest), "rest is not the tail of the file");
    let mut again = env.to_bytes();
    again.extend_from_slice(&rest);
    let (env2, rest2) = read_all(&again).unwrap_or_else(|| {
        panic!(
            "re-written envelope not readable: {:?}",
            String::from_utf8_lossy(&again)
        )
    });
    assert_eq!(env2, env);
    assert_eq!(rest2, rest);
});
