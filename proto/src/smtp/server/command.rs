//! SMTP command lines: one line in (without its line end), a typed `Command` or the refusal
//! reply out. A table maps each verb to its argument parser, as Postfix's smtpd does.
//!
//! Pure syntax: this module knows nothing of session state, limits or relay policy; the
//! session decides whether a well-formed command is allowed now.

use maildir_core::envelope::{self, Notify, Orcpt, RcptParams, Ret, XText};
use maildir_core::{ForwardPath, ReversePath};

use super::reply::{self, Reply};

/// `BODY=` of MAIL FROM (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// 7-bit text (the default).
    SevenBit,
    /// 8-bit MIME.
    EightBitMime,
}

/// Parameters of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailParams {
    /// Declared size (RFC 1870 `SIZE=`).
    pub size: Option<u64>,
    /// Declared body type.
    pub body: Body,
    /// SMTPUTF8 requested (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461 DSN).
    pub ret: Option<Ret>,
    /// `ENVID=` (RFC 3461 DSN), xtext as on the wire.
    pub envid: Option<XText>,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO name`.
    Helo(String),
    /// `EHLO name`.
    Ehlo(String),
    /// `MAIL FROM:<path> [params]`.
    Mail(ReversePath, MailParams),
    /// `RCPT TO:<path> [NOTIFY=...] [ORCPT=...]`.
    Rcpt(ForwardPath, RcptParams),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030): `size` octets of message content follow the line.
    Bdat {
        /// Octets of chunk data after the command line.
        size: u64,
        /// The last chunk of the message.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [text]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY something`.
    Vrfy,
    /// `HELP [topic]`.
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954), the mechanism as given.
    Auth {
        /// The SASL mechanism name, as given.
        mechanism: String,
        /// The initial response (base64, or `=` for an empty one), if given.
        initial: Option<String>,
    },
    /// An HTTP verb or proxy request: not a mail client; the session ends.
    Forbidden,
}

type Parser = fn(&str) -> Result<Command, Reply>;

/// The command table: verb (upper case) and its argument parser.
const COMMANDS: &[(&str, Parser)] = &[
    ("MAIL", parse_mail),
    ("RCPT", parse_rcpt),
    ("DATA", |a| no_args(a, Command::Data, "DATA")),
    ("BDAT", parse_bdat),
    ("EHLO", |a| hello(a, Command::Ehlo, "EHLO hostname")),
    ("HELO", |a| hello(a, Command::Helo, "HELO hostname")),
    ("RSET", |a| no_args(a, Command::Rset, "RSET")),
    ("NOOP", |_| Ok(Command::Noop)),
    ("QUIT", |a| no_args(a, Command::Quit, "QUIT")),
    ("VRFY", parse_vrfy),
    ("HELP", |_| Ok(Command::Help)),
    ("STARTTLS", |a| no_args(a, Command::StartTls, "STARTTLS")),
    ("AUTH", parse_auth),
    ("GET", |_| Ok(Command::Forbidden)),
    ("POST", |_| Ok(Command::Forbidden)),
    ("CONNECT", |_| Ok(Command::Forbidden)),
];

/// Parses one command line (the CR LF already removed).
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line).map_err(|_| reply::BAD_CHARACTERS)?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(reply::BAD_CHARACTERS);
    }
    let line = line.trim_matches([' ', '\t']);
    let (verb, args) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i..].trim_matches([' ', '\t'])),
        None => (line, ""),
    };
    COMMANDS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(verb))
        .map_or(Err(reply::UNRECOGNIZED), |(_, parse)| parse(args))
}

fn no_args(args: &str, cmd: Command, usage: &'static str) -> Result<Command, Reply> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(reply::syntax(usage))
    }
}

fn hello(args: &str, make: fn(String) -> Command, usage: &'static str) -> Result<Command, Reply> {
    if args.is_empty() {
        return Err(reply::syntax(usage));
    }
    if !valid_helo(args) {
        return Err(reply::BAD_HELO);
    }
    Ok(make(args.to_owned()))
}

/// True for a HELO/EHLO argument that may go into `Received:` as it is: a domain-like name
/// (ASCII letters, digits, `-`, `.`, and `_` as real-world names have it) or an address literal
/// `[...]` (letters, digits, `.`, `:`, `-` inside). Nothing else: no whitespace, control
/// characters, non-ASCII, parentheses or stray brackets that could forge a trace comment.
pub fn valid_helo(name: &str) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    if let Some(inner) = name.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            return false;
        };
        return !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-'));
    }
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// `BDAT size [LAST]`: size is 1 to 20 digits (a u64).
fn parse_bdat(args: &str) -> Result<Command, Reply> {
    let usage = "BDAT size [LAST]";
    let mut words = args.split([' ', '\t']).filter(|s| !s.is_empty());
    let size = words
        .next()
        .filter(|v| v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| reply::syntax(usage))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(reply::syntax(usage)),
    };
    if words.next().is_some() {
        return Err(reply::syntax(usage));
    }
    Ok(Command::Bdat { size, last })
}

/// `AUTH mechanism [initial-response]`.
fn parse_auth(args: &str) -> Result<Command, Reply> {
    let usage = "AUTH mechanism [initial-response]";
    let mut words = args.split([' ', '\t']).filter(|s| !s.is_empty());
    let mechanism = words.next().ok_or_else(|| reply::syntax(usage))?;
    let initial = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(reply::syntax(usage));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_owned(),
        initial,
    })
}

fn parse_vrfy(args: &str) -> Result<Command, Reply> {
    if args.is_empty() {
        return Err(reply::syntax("VRFY address"));
    }
    Ok(Command::Vrfy)
}

/// Splits `KEYWORD:<path> params` into the path text (with brackets) and the parameters.
fn path_and_params<'a>(args: &'a str, keyword: &str) -> Option<(String, &'a str)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start_matches([' ', '\t']);
    if rest.is_empty() {
        return None;
    }
    if rest.starts_with('<') {
        let end = closing_bracket(rest)?;
        let params = rest[end + 1..].trim_start_matches([' ', '\t']);
        if !params.is_empty() && !rest[end + 1..].starts_with([' ', '\t']) {
            return None;
        }
        return Some((rest[..=end].to_owned(), params));
    }
    // Without brackets (as many scripts send): the first word is the address, as Postfix allows.
    let (addr, params) = match rest.find([' ', '\t']) {
        Some(i) => (&rest[..i], rest[i..].trim_start_matches([' ', '\t'])),
        None => (rest, ""),
    };
    Some((format!("<{addr}>"), params))
}

/// Index of the `>` closing the path, skipping quoted parts of the local part.
fn closing_bracket(s: &str) -> Option<usize> {
    maildir_core::address::find_unquoted(s, |c| c == '>')
}

fn parse_mail(args: &str) -> Result<Command, Reply> {
    let usage = "MAIL FROM:<address>";
    let (path, params) = path_and_params(args, "FROM:").ok_or_else(|| reply::syntax(usage))?;
    let from = ReversePath::parse(&path).map_err(|e| reply::bad_sender(e.reason()))?;
    let mut p = MailParams {
        size: None,
        body: Body::SevenBit,
        smtputf8: false,
        ret: None,
        envid: None,
    };
    for param in params.split([' ', '\t']).filter(|s| !s.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                let n = (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| v.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| reply::bad_parameter("SIZE"))?;
                p.size = Some(n);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => p.body = Body::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => p.body = Body::EightBitMime,
            // Not offered (no BINARYMIME): an unsupported option, not a syntax error.
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("BINARYMIME") => {
                return Err(reply::unsupported_option(param));
            }
            ("BODY", _) => return Err(reply::bad_parameter("BODY")),
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("RET", Some(v)) => {
                let r = Ret::parse(v).map_err(|_| reply::bad_parameter("RET"))?;
                if p.ret.replace(r).is_some() {
                    return Err(reply::duplicate_parameter("RET"));
                }
            }
            ("ENVID", Some(v)) => {
                let e = envelope::parse_envid(v).map_err(|_| reply::bad_parameter("ENVID"))?;
                if p.envid.replace(e).is_some() {
                    return Err(reply::duplicate_parameter("ENVID"));
                }
            }
            ("RET" | "ENVID", None) => return Err(reply::bad_parameter(key)),
            // RFC 4954 §5: the identity a relaying server vouches for; we trust no other
            // server's word for it, so it is accepted and ignored.
            ("AUTH", Some(_)) => {}
            _ => return Err(reply::unsupported_option(param)),
        }
    }
    Ok(Command::Mail(from, p))
}

fn parse_rcpt(args: &str) -> Result<Command, Reply> {
    let usage = "RCPT TO:<address>";
    let (path, params) = path_and_params(args, "TO:").ok_or_else(|| reply::syntax(usage))?;
    let to = ForwardPath::parse(&path).map_err(|e| reply::bad_recipient(e.reason()))?;
    let mut p = RcptParams::default();
    for param in params.split([' ', '\t']).filter(|s| !s.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("NOTIFY", Some(v)) => {
                let n = Notify::parse(v).map_err(|_| reply::bad_parameter("NOTIFY"))?;
                if p.notify.replace(n).is_some() {
                    return Err(reply::duplicate_parameter("NOTIFY"));
                }
            }
            ("ORCPT", Some(v)) => {
                let o = Orcpt::parse(v).map_err(|_| reply::bad_parameter("ORCPT"))?;
                if p.orcpt.replace(o).is_some() {
                    return Err(reply::duplicate_parameter("ORCPT"));
                }
            }
            ("NOTIFY" | "ORCPT", None) => return Err(reply::bad_parameter(key)),
            _ => return Err(reply::unsupported_option(param)),
        }
    }
    Ok(Command::Rcpt(to, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helo_argument_must_be_a_name_or_an_address_literal() {
        for ok in [
            "client.example",
            "my_host.local",
            "localhost",
            "[127.0.0.1]",
            "[IPv6:::1]",
            "x-1.example.",
        ] {
            assert!(
                matches!(parse(format!("EHLO {ok}").as_bytes()), Ok(Command::Ehlo(n)) if n == ok),
                "{ok}"
            );
        }
        for bad in [
            "EHLO a\tb",
            "EHLO a b",
            "HELO evil (host [1.2.3.4])",
            "HELO a(b",
            "EHLO [1.2.3.4",
            "EHLO a]",
            "EHLO []",
            "EHLO [1.2.3.4](x)",
            "EHLO caf\u{e9}.example",
            "EHLO a\u{2028}b",
        ] {
            let r = parse(bad.as_bytes());
            assert!(
                matches!(&r, Err(r) if r.code == 501 && r.status == Some(reply::Status(5, 5, 2))),
                "{bad}: {r:?}"
            );
        }
    }

    fn code(line: &str) -> u16 {
        match parse(line.as_bytes()) {
            Ok(_) => 0,
            Err(r) => r.code,
        }
    }

    #[test]
    fn verbs_are_case_insensitive_and_spaces_tolerated() {
        assert_eq!(
            parse(b"ehlo  client.example "),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert!(matches!(
            parse(b"mail from:<a@b.example>"),
            Ok(Command::Mail(..))
        ));
        assert!(matches!(
            parse(b"MAIL FROM: <a@b.example>"),
            Ok(Command::Mail(..))
        ));
        assert!(matches!(
            parse(b"  RCPT   TO:<postmaster>"),
            Ok(Command::Rcpt(ForwardPath::Postmaster, _))
        ));
        assert!(matches!(
            parse(b"MAIL FROM:a@b.example"),
            Ok(Command::Mail(..))
        ));
        assert_eq!(parse(b"noop whatever"), Ok(Command::Noop));
    }

    #[test]
    fn mail_parameters() {
        let Ok(Command::Mail(from, p)) = parse(b"MAIL FROM:<> SIZE=1000 BODY=8BITMIME SMTPUTF8")
        else {
            panic!("should parse")
        };
        assert_eq!(from, ReversePath::Null);
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Body::EightBitMime);
        assert!(p.smtputf8);
        assert_eq!(code("MAIL FROM:<a@b.example> SIZE=x"), 501);
        assert_eq!(code("MAIL FROM:<a@b.example> BODY=BINARYMIME"), 555);
        assert_eq!(code("MAIL FROM:<a@b.example> BODY=9BIT"), 501);
        assert_eq!(code("MAIL FROM:<a@b.example> FOO=1"), 555);
        assert_eq!(code("RCPT TO:<a@b.example> FOO=1"), 555);
        assert_eq!(code("MAIL FROM:<a@b.example>SIZE=1"), 501);
    }

    #[test]
    fn dsn_parameters() {
        let Ok(Command::Mail(_, p)) = parse(b"MAIL FROM:<a@b.example> ret=hdrs ENVID=QQ+2Bxyz")
        else {
            panic!("should parse")
        };
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_ref().map(|e| e.as_str()), Some("QQ+2Bxyz"));
        assert_eq!(p.envid.unwrap().decode(), b"QQ+xyz");
        let Ok(Command::Rcpt(_, r)) =
            parse(b"RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.example")
        else {
            panic!("should parse")
        };
        assert_eq!(
            r.notify.map(|n| n.to_string()).as_deref(),
            Some("SUCCESS,FAILURE")
        );
        assert_eq!(r.orcpt.unwrap().address.decode(), b"a@b.example");
        let Ok(Command::Rcpt(_, r)) = parse(b"RCPT TO:<c@d.example>") else {
            panic!("should parse")
        };
        assert!(r.is_empty());
        let envid_100 = format!("MAIL FROM:<a@b.example> ENVID={}", "x".repeat(100));
        assert_eq!(code(&envid_100), 0);
        let orcpt_500 = format!("RCPT TO:<c@d.example> ORCPT=rfc822;{}", "x".repeat(493));
        assert_eq!(code(&orcpt_500), 0);
        for bad in [
            "MAIL FROM:<a@b.example> RET=BODY",
            "MAIL FROM:<a@b.example> RET",
            "MAIL FROM:<a@b.example> RET=FULL RET=FULL",
            "MAIL FROM:<a@b.example> ENVID=a=b",
            "MAIL FROM:<a@b.example> ENVID=a+4",
            "MAIL FROM:<a@b.example> ENVID=",
            "MAIL FROM:<a@b.example> ENVID=x ENVID=y",
            &format!("MAIL FROM:<a@b.example> ENVID={}", "x".repeat(101)),
            "RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<c@d.example> NOTIFY=SOMETIMES",
            "RCPT TO:<c@d.example> NOTIFY=SUCCESS,SUCCESS",
            "RCPT TO:<c@d.example> NOTIFY=NEVER NOTIFY=NEVER",
            "RCPT TO:<c@d.example> NOTIFY",
            "RCPT TO:<c@d.example> ORCPT=a@b.example",
            "RCPT TO:<c@d.example> ORCPT=rfc822;a\u{e9}",
            "RCPT TO:<c@d.example> ORCPT=rfc822;a ORCPT=rfc822;b",
            &format!("RCPT TO:<c@d.example> ORCPT=rfc822;{}", "x".repeat(494)),
        ] {
            let r = parse(bad.as_bytes());
            assert!(
                matches!(&r, Err(r) if r.code == 501 && r.status == Some(reply::Status(5, 5, 4))),
                "{bad}: {r:?}"
            );
        }
    }

    #[test]
    fn bdat() {
        assert_eq!(
            parse(b"BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            parse(b"bdat  1234 "),
            Ok(Command::Bdat {
                size: 1234,
                last: false
            })
        );
        assert_eq!(
            parse(b"BDAT 18446744073709551615 last"),
            Ok(Command::Bdat {
                size: u64::MAX,
                last: true
            })
        );
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT 1 NOTLAST",
            "BDAT 1 LAST x",
            "BDAT 18446744073709551616",
        ] {
            assert_eq!(code(bad), 501, "{bad}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(code("FOO"), 500);
        assert_eq!(code("MAIL"), 501);
        assert_eq!(code("MAIL TO:<a@b.example>"), 501);
        assert_eq!(code("MAIL FROM:"), 501);
        assert_eq!(code("MAIL FROM:<a b@c.example>"), 501);
        assert_eq!(
            parse(b"MAIL FROM:<a b@c.example>").unwrap_err().status,
            Some(reply::Status(5, 1, 7))
        );
        assert_eq!(
            parse(b"RCPT TO:<a b@c.example>").unwrap_err().status,
            Some(reply::Status(5, 1, 3))
        );
        assert_eq!(code("HELO"), 501);
        assert_eq!(code("DATA now"), 501);
        assert_eq!(code("VRFY"), 501);
        assert_eq!(code("NO\0OP"), 500);
        assert_eq!(parse(&[b'N', 0xff, b'P']).unwrap_err().code, 500);
        assert_eq!(code("RCPT TO:<\"a>b\"@c.example>"), 0);
    }
}
