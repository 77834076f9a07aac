//! POP3 command lines (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH, RFC 2595 STLS) parsed into
//! [`Command`]s. Keywords are case-insensitive; arguments are separated by spaces (several are
//! tolerated); `PASS` takes the rest of the line, spaces included, as the password.
//!
//! Owns: the syntax of one command line (without its line end). Must not: decide whether a
//! command is allowed in the session's state (that is [`super::session`]) or hold state.

/// One parsed command. Message numbers are as the client wrote them (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `CAPA` (RFC 2449).
    Capa,
    /// `USER name`.
    User(&'a str),
    /// `PASS secret` (the rest of the line).
    Pass(&'a [u8]),
    /// `AUTH [mechanism [initial-response]]` (RFC 5034).
    Auth {
        /// The mechanism, as given; `None`: list the mechanisms.
        mechanism: Option<&'a str>,
        /// The initial response (`=` for an empty one).
        initial: Option<&'a str>,
    },
    /// `STLS` (RFC 2595).
    Stls,
    /// `STAT`.
    Stat,
    /// `LIST [n]`.
    List(Option<u32>),
    /// `UIDL [n]`.
    Uidl(Option<u32>),
    /// `TOP n lines`.
    Top(u32, u64),
    /// `RETR n`.
    Retr(u32),
    /// `DELE n`.
    Dele(u32),
    /// `NOOP`.
    Noop,
    /// `RSET`.
    Rset,
    /// `QUIT`.
    Quit,
    /// `APOP` (not offered: answered `-ERR`).
    Apop,
}

/// Why a line is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not a command we know.
    Unknown,
    /// A known command with missing, extra or malformed arguments; the text says which.
    Syntax(&'static str),
}

/// Parses one command line (without CR LF).
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    if keyword.len() > 4 || keyword.is_empty() {
        return Err(ParseError::Unknown);
    }
    let mut kw = [0u8; 4];
    for (d, s) in kw.iter_mut().zip(keyword) {
        *d = s.to_ascii_uppercase();
    }
    let kw = &kw[..keyword.len()];
    if kw == b"PASS" {
        if rest.is_empty() {
            return Err(ParseError::Syntax("PASS needs a password"));
        }
        return Ok(Command::Pass(rest));
    }
    let rest = std::str::from_utf8(rest).map_err(|_| ParseError::Syntax("not UTF-8"))?;
    let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
    let none = |c: Command<'static>| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Syntax("no arguments expected"))
        }
    };
    match kw {
        b"CAPA" => none(Command::Capa),
        b"STLS" => none(Command::Stls),
        b"STAT" => none(Command::Stat),
        b"NOOP" => none(Command::Noop),
        b"RSET" => none(Command::Rset),
        b"QUIT" => none(Command::Quit),
        b"APOP" => Ok(Command::Apop),
        b"USER" => match args.as_slice() {
            [name] => Ok(Command::User(name)),
            _ => Err(ParseError::Syntax("USER needs one name")),
        },
        b"AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [m] => Ok(Command::Auth {
                mechanism: Some(m),
                initial: None,
            }),
            [m, i] => Ok(Command::Auth {
                mechanism: Some(m),
                initial: Some(i),
            }),
            _ => Err(ParseError::Syntax(
                "AUTH takes a mechanism and an initial response",
            )),
        },
        b"LIST" | b"UIDL" => {
            let n = match args.as_slice() {
                [] => None,
                [n] => Some(number(n)?),
                _ => return Err(ParseError::Syntax("one message number at most")),
            };
            Ok(if kw == b"LIST" {
                Command::List(n)
            } else {
                Command::Uidl(n)
            })
        }
        b"RETR" | b"DELE" => match args.as_slice() {
            [n] => {
                let n = number(n)?;
                Ok(if kw == b"RETR" {
                    Command::Retr(n)
                } else {
                    Command::Dele(n)
                })
            }
            _ => Err(ParseError::Syntax("one message number expected")),
        },
        b"TOP" => match args.as_slice() {
            [n, lines] => {
                let lines = digits(lines)
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(ParseError::Syntax("invalid number of lines"))?;
                Ok(Command::Top(number(n)?, lines))
            }
            _ => Err(ParseError::Syntax(
                "TOP needs a message number and a line count",
            )),
        },
        _ => Err(ParseError::Unknown),
    }
}

fn digits(s: &str) -> Option<&str> {
    (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

/// A message number: decimal digits, 1 or more.
fn number(s: &str) -> Result<u32, ParseError> {
    digits(s)
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .ok_or(ParseError::Syntax("invalid message number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_in_any_case() {
        assert_eq!(parse(b"capa"), Ok(Command::Capa));
        assert_eq!(parse(b"Stat"), Ok(Command::Stat));
        assert_eq!(parse(b"USER alice"), Ok(Command::User("alice")));
        assert_eq!(parse(b"pass two words "), Ok(Command::Pass(b"two words ")));
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"list  3"), Ok(Command::List(Some(3))));
        assert_eq!(parse(b"UIDL 12"), Ok(Command::Uidl(Some(12))));
        assert_eq!(parse(b"TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(parse(b"RETR 2"), Ok(Command::Retr(2)));
        assert_eq!(parse(b"DELE 2"), Ok(Command::Dele(2)));
        assert_eq!(parse(b"noop"), Ok(Command::Noop));
        assert_eq!(parse(b"RSET"), Ok(Command::Rset));
        assert_eq!(parse(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse(b"STLS"), Ok(Command::Stls));
        assert_eq!(
            parse(b"AUTH PLAIN AGEAYg=="),
            Ok(Command::Auth {
                mechanism: Some("PLAIN"),
                initial: Some("AGEAYg==")
            })
        );
        assert_eq!(
            parse(b"AUTH"),
            Ok(Command::Auth {
                mechanism: None,
                initial: None
            })
        );
    }

    #[test]
    fn bad_arguments_are_syntax_errors() {
        for line in [
            &b"RETR"[..],
            b"RETR 0",
            b"RETR -1",
            b"RETR +1",
            b"RETR 1 2",
            b"RETR 99999999999",
            b"TOP 1",
            b"TOP 1 x",
            b"LIST 1 2",
            b"STAT 1",
            b"USER",
            b"USER a b",
            b"PASS",
            b"USER \xff",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::Syntax(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        for line in [&b""[..], b"HELO x", b"RETRX 1", b" RETR 1", b"\xff"] {
            assert_eq!(parse(line), Err(ParseError::Unknown));
        }
    }
}
