//! The address parser: whatever it accepts, displaying it and parsing that again gives the same
//! address (parse → display → parse is the identity), and displaying is stable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use maildir_core::address::{ForwardPath, ReversePath};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Bracketed as in MAIL FROM / RCPT TO, and as given.
    let bracketed = format!("<{text}>");
    for input in [text, bracketed.as_str()] {
        if let Ok(p) = ReversePath::parse(input) {
            let shown = p.to_string();
            let again = ReversePath::parse(&shown)
                .unwrap_or_else(|e| panic!("{input:?} -> {shown:?} does not parse again: {e}"));
            assert_eq!(again, p, "{input:?} -> {shown:?}");
            assert_eq!(again.to_string(), shown);
            assert_eq!(again.is_utf8(), p.is_utf8());
        }
        if let Ok(p) = ForwardPath::parse(input) {
            let shown = p.to_string();
            let again = ForwardPath::parse(&shown)
                .unwrap_or_else(|e| panic!("{input:?} -> {shown:?} does not parse again: {e}"));
            assert_eq!(again, p, "{input:?} -> {shown:?}");
            assert_eq!(again.to_string(), shown);
            // A forward path that is a mailbox is also a valid reverse path.
            if let Some(m) = p.mailbox() {
                let r = ReversePath::parse(&shown).expect("mailbox as reverse path");
                assert_eq!(r.mailbox(), Some(m));
            }
        }
    }
});
