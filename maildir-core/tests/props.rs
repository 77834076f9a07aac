//! Property tests: address syntax and the envelope block.
//!
//! - Every well-formed path the generators build parses, and writes back as itself.
//! - An envelope (any sender, 1..=100 recipients) written then read gives the same envelope,
//!   and the reader hands back the rest of the file untouched; also with DSN parameters (RET,
//!   ENVID, NOTIFY, ORCPT: any xtext), and any octets encoded as xtext decode back to themselves.
//! - The parsers never panic, whatever the input; what they accept is stable through Display.

use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};

use maildir_core::envelope::{parse_envid, parse_orcpt};
use maildir_core::{
    Envelope, EnvelopeReader, ForwardPath, Notify, RcptDsn, Ret, ReversePath, XText,
    address::MAX_PATH_LEN,
};
use proptest::prelude::*;

const ATEXT: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~";

/// A non-ASCII character that is neither a control nor white space (RFC 6531 UTF8-non-ascii).
fn utf8_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::char::range('\u{a1}', '\u{2ff}'),
        prop::char::range('\u{4e00}', '\u{9fff}'),
        prop::char::range('\u{1f300}', '\u{1f5ff}'),
    ]
    .prop_filter("no controls or spaces", |c| {
        !c.is_control() && !c.is_whitespace()
    })
}

fn atext_char() -> impl Strategy<Value = char> {
    let ascii: Vec<char> = ATEXT.chars().collect();
    prop_oneof![
        4 => prop::sample::select(ascii),
        1 => utf8_char(),
    ]
}

fn dot_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::collection::vec(atext_char(), 1..8).prop_map(|v| v.into_iter().collect::<String>()),
        1..4,
    )
    .prop_map(|atoms| atoms.join("."))
}

fn quoted_string() -> impl Strategy<Value = String> {
    // qtextSMTP (printable ASCII but `"` and `\`, plus space), quoted pairs, UTF-8.
    let qtext: Vec<char> = (' '..='~').filter(|c| *c != '"' && *c != '\\').collect();
    let pair: Vec<char> = (' '..='~').collect();
    let piece = prop_oneof![
        4 => prop::sample::select(qtext).prop_map(String::from),
        1 => prop::sample::select(pair).prop_map(|c| format!("\\{c}")),
        1 => utf8_char().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| format!("\"{}\"", v.concat()))
}

fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![3 => dot_string(), 1 => quoted_string()]
        .prop_filter("local part at most 64 octets", |l| l.len() <= 64)
}

fn label() -> impl Strategy<Value = String> {
    let ldh: Vec<char> = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
        .chars()
        .collect();
    let inner = prop_oneof![4 => prop::sample::select(ldh), 1 => utf8_char()];
    let end = prop_oneof![
        4 => prop::sample::select("abcxyzABC0189".chars().collect::<Vec<_>>()),
        1 => utf8_char(),
    ];
    (end.clone(), prop::collection::vec(inner, 0..10), end).prop_map(|(a, mid, b)| {
        let mut s = String::from(a);
        if !mid.is_empty() {
            s.extend(mid);
            s.push(b);
        }
        s
    })
}

fn domain() -> impl Strategy<Value = String> {
    let name = prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."));
    let v4 = any::<u32>().prop_map(|a| format!("[{}]", Ipv4Addr::from(a)));
    let v6 = any::<u128>().prop_map(|a| format!("[IPv6:{}]", Ipv6Addr::from(a)));
    let v6_short = (any::<u16>(), any::<u16>())
        .prop_map(|(a, b)| format!("[IPv6:{}]", Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, a, b)));
    // A general literal tagged `IPv6` must hold an IPv6 address, so that tag is left out.
    let general = "[A-Za-z0-9][A-Za-z0-9-]{0,5}:[!-Z^-~]{1,12}"
        .prop_filter("not IPv6", |s| !s.to_ascii_lowercase().starts_with("ipv6:"))
        .prop_map(|s| format!("[{s}]"));
    prop_oneof![6 => name, 1 => v4, 1 => v6, 1 => v6_short, 1 => general]
}

/// A well-formed `<local@domain>` of at most 256 octets.
fn mailbox_path() -> impl Strategy<Value = String> {
    (local_part(), domain())
        .prop_map(|(l, d)| format!("<{l}@{d}>"))
        .prop_filter("path at most 256 octets", |p| p.len() <= MAX_PATH_LEN)
}

fn sender() -> impl Strategy<Value = String> {
    prop_oneof![1 => Just("<>".to_owned()), 8 => mailbox_path()]
}

fn recipient() -> impl Strategy<Value = String> {
    prop_oneof![1 => Just("<postmaster>".to_owned()), 1 => Just("<PostMaster>".to_owned()), 20 => mailbox_path()]
}

/// Characters that steer the parser into its corners.
fn tricky_string() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = "<>@\"\\.[]:,; \tab1-_\r\n\u{0}\u{a0}ü例IPv6"
        .chars()
        .collect();
    prop::collection::vec(prop::sample::select(alphabet), 0..40)
        .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_paths_parse_and_display_as_written(path in mailbox_path()) {
        let fwd = ForwardPath::parse(&path);
        prop_assert!(fwd.is_ok(), "{path:?}: {fwd:?}");
        prop_assert_eq!(fwd.unwrap().to_string(), path.clone());
        let rev = ReversePath::parse(&path);
        prop_assert!(rev.is_ok(), "{path:?}: {rev:?}");
        prop_assert_eq!(rev.unwrap().to_string(), path);
    }

    #[test]
    fn envelope_round_trips(
        sender in sender(),
        rcpts in prop::collection::vec(recipient(), 1..=100),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let envelope = Envelope {
            sender: ReversePath::parse(&sender).unwrap(),
            recipients: rcpts.iter().map(|r| ForwardPath::parse(r).unwrap()).collect(),
            ret: None,
            envid: None,
            rcpt_dsn: Vec::new(),
        };
        let mut rest = b"Received: from h (h [192.0.2.1]) by me with ESMTP id X; now\r\n".to_vec();
        rest.extend_from_slice(&body);
        let mut file = envelope.to_bytes();
        file.extend_from_slice(&rest);
        let (got, mut reader) = EnvelopeReader::open(&file[..]).unwrap();
        prop_assert_eq!(&got, &envelope);
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        prop_assert_eq!(back, rest);
        // Written form is exactly the documented lines.
        let mut expected = format!("Return-Path: {}\r\n", envelope.sender);
        for r in &envelope.recipients {
            expected.push_str(&format!("X-Original-To: {r}\r\n"));
        }
        prop_assert_eq!(envelope.to_bytes(), expected.into_bytes());
    }

    #[test]
    fn envelope_with_dsn_parameters_round_trips(
        sender in sender(),
        rcpts in prop::collection::vec(recipient(), 1..=20),
        ret in prop::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Hdrs)]),
        envid in prop::option::of(prop::collection::vec(any::<u8>(), 1..30)),
        dsn in prop::collection::vec(
            (prop::option::of(notify()), prop::option::of(prop::collection::vec(any::<u8>(), 1..40))),
            0..=20,
        ),
    ) {
        let n = rcpts.len();
        let mut rcpt_dsn: Vec<RcptDsn> = dsn
            .into_iter()
            .take(n)
            .map(|(notify, orcpt)| RcptDsn {
                notify,
                orcpt: orcpt.map(|o| parse_orcpt(&format!("rfc822;{}", xtext(&o))).unwrap()),
            })
            .collect();
        // The reader never keeps trailing defaults.
        while rcpt_dsn.last().is_some_and(|d| *d == RcptDsn::default()) {
            rcpt_dsn.pop();
        }
        let envelope = Envelope {
            sender: ReversePath::parse(&sender).unwrap(),
            recipients: rcpts.iter().map(|r| ForwardPath::parse(r).unwrap()).collect(),
            ret,
            envid: envid.as_ref().map(|e| parse_envid(&xtext(e)).unwrap()),
            rcpt_dsn,
        };
        let bytes = envelope.to_bytes();
        prop_assert!(bytes.is_ascii() || !sender.is_ascii() || rcpts.iter().any(|r| !r.is_ascii()));
        let mut file = bytes.clone();
        file.extend_from_slice(b"Received: x\r\n\r\nbody\r\n");
        let (got, mut reader) = EnvelopeReader::open(&file[..]).unwrap();
        prop_assert_eq!(&got, &envelope);
        prop_assert_eq!(reader.envelope_len(), bytes.len() as u64);
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        prop_assert_eq!(back, b"Received: x\r\n\r\nbody\r\n".to_vec());
        if let (Some(raw), Some(x)) = (&envid, &got.envid) {
            prop_assert_eq!(&x.decode(), raw);
        }
    }

    #[test]
    fn xtext_decodes_what_was_encoded(raw in prop::collection::vec(any::<u8>(), 1..200)) {
        let x = XText::parse(&xtext(&raw), usize::MAX).unwrap();
        prop_assert_eq!(x.decode(), raw);
    }

    #[test]
    fn parsers_never_panic_and_accepted_is_stable(s in any::<String>(), t in tricky_string()) {
        for input in [s.clone(), t.clone(), format!("<{s}>"), format!("<{t}>")] {
            if let Ok(p) = ForwardPath::parse(&input) {
                prop_assert_eq!(ForwardPath::parse(&p.to_string()), Ok(p));
            }
            if let Ok(p) = ReversePath::parse(&input) {
                prop_assert_eq!(ReversePath::parse(&p.to_string()), Ok(p));
            }
            let _ = maildir_core::Mailbox::parse(&input);
        }
    }

    #[test]
    fn envelope_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000), t in tricky_string()) {
        let _ = EnvelopeReader::open(&bytes[..]).map(|(_, mut r)| r.read_to_end(&mut Vec::new()));
        let text = format!("Return-Path: {t}\r\nX-Original-To: {t}\r\n\r\n");
        let _ = EnvelopeReader::open(text.as_bytes());
    }
}

/// NOTIFY values: NEVER or a non-empty set.
fn notify() -> impl Strategy<Value = Notify> {
    prop_oneof![
        Just(Notify::Never),
        (any::<bool>(), any::<bool>(), any::<bool>())
            .prop_filter("at least one", |(a, b, c)| *a || *b || *c)
            .prop_map(|(success, failure, delay)| Notify::On {
                success,
                failure,
                delay
            }),
    ]
}

/// Encodes octets as xtext (RFC 3461 §4): `+XX` for `+`, `=` and anything outside `!`..`~`.
fn xtext(raw: &[u8]) -> String {
    raw.iter()
        .map(|&b| match b {
            b'+' | b'=' => format!("+{b:02X}"),
            0x21..=0x7e => (b as char).to_string(),
            _ => format!("+{b:02X}"),
        })
        .collect()
}
