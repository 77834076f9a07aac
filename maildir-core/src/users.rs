//! The users file: who exists, in Dovecot's passwd-file format, so one file serves smtpd
//! (local delivery, and AUTH/POP3 later) and Dovecot's IMAP alike.
//!
//! One user per line, `name:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]`; `#` starts a comment
//! line; blank lines are ignored. An empty password or `*` means "receives mail, cannot log in".
//! The scheme and hash are kept as written for password verification (the server's business);
//! a password without `{SCHEME}` is Dovecot's default scheme, `CRYPT`.
//!
//! This module owns parsing and lookup only. It is pure: it never opens a file, reads the clock
//! or touches a socket (the server reads the file and hands the text here), so the protocol
//! sessions may call it. Parse errors carry the 1-based line number; the caller adds the file.

use std::collections::BTreeMap;
use std::fmt;

/// A parse or consistency error in a users or aliases file: the line (1-based; 0 when it is
/// about the file as a whole) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number, or 0 for the file as a whole.
    pub line: usize,
    /// What is wrong, for a human.
    pub message: String,
}

impl LineError {
    /// An error at `line`.
    pub fn new(line: usize, message: impl Into<String>) -> LineError {
        LineError {
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for LineError {
    /// `line N: message` (or just the message for line 0); the loader prefixes the file name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for LineError {}

/// A user's password field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// Empty or `*`: the user receives mail but cannot log in.
    NoLogin,
    /// `{SCHEME}hash`, scheme in upper case (`ARGON2ID`, `SHA512-CRYPT`, `BLF-CRYPT`, ...).
    Hashed {
        /// The scheme named in braces, upper case.
        scheme: String,
        /// Everything after the closing brace, as written.
        hash: String,
    },
}

/// One line of the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login and mailbox name, lower case.
    pub name: String,
    /// The password field.
    pub password: Password,
    /// Numeric uid, when given.
    pub uid: Option<u32>,
    /// Numeric gid, when given.
    pub gid: Option<u32>,
    /// Home directory, when given.
    pub home: Option<String>,
    /// Dovecot's extra fields (the rest of the line after the shell), when given.
    pub extra: Option<String>,
    /// The line it came from.
    pub line: usize,
}

/// Every user, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    by_name: BTreeMap<String, User>,
}

impl Users {
    /// Parses the text of a users file.
    pub fn parse(text: &str) -> Result<Users, LineError> {
        let mut by_name = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim_end_matches('\r');
            if l.trim().is_empty() || l.trim_start().starts_with('#') {
                continue;
            }
            let user = parse_line(l, line)?;
            if let Some(prev) = by_name.get(&user.name) {
                let prev: &User = prev;
                return Err(LineError::new(
                    line,
                    format!("user {:?} already defined on line {}", user.name, prev.line),
                ));
            }
            by_name.insert(user.name.clone(), user);
        }
        Ok(Users { by_name })
    }

    /// The user called `name` (already lower case).
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// True when `name` (already lower case) is a user.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there are no users.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The users in name order.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.by_name.values()
    }
}

/// Checks a user or alias name: what may name a directory under the mailboxes root and a local
/// part. Returns the reason when it may not.
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.starts_with('.') {
        return Err("a name must not start with '.'");
    }
    if name.len() > 64 {
        return Err("a name is at most 64 octets (RFC 5321 local part)");
    }
    if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '@' | ':' | '"' | '\\'))
    {
        return Err(
            "a name must not contain white space, control characters, '/', '@', ':', '\"' or '\\'",
        );
    }
    if name.chars().any(char::is_uppercase) {
        return Err("names are lower case (lookups are case-insensitive)");
    }
    Ok(())
}

fn parse_line(l: &str, line: usize) -> Result<User, LineError> {
    // Dovecot splits on ':' for the first six fields; the seventh (extra fields) is the rest.
    let mut fields = l.splitn(8, ':');
    let name = fields.next().unwrap_or_default();
    check_name(name).map_err(|why| LineError::new(line, format!("user {name:?}: {why}")))?;
    let pass = fields.next().unwrap_or_default();
    let password = parse_password(pass).map_err(|why| LineError::new(line, why))?;
    let number = |field: Option<&str>, what: &str| -> Result<Option<u32>, LineError> {
        match field {
            None | Some("") => Ok(None),
            Some(s) => s.parse::<u32>().map(Some).map_err(|_| {
                LineError::new(line, format!("user {name:?}: {what} {s:?} is not a number"))
            }),
        }
    };
    let uid = number(fields.next(), "uid")?;
    let gid = number(fields.next(), "gid")?;
    let _gecos = fields.next();
    let home = fields.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let _shell = fields.next();
    let extra = fields.next().filter(|s| !s.is_empty()).map(str::to_owned);
    Ok(User {
        name: name.to_owned(),
        password,
        uid,
        gid,
        home,
        extra,
        line,
    })
}

fn parse_password(pass: &str) -> Result<Password, String> {
    if pass.is_empty() || pass == "*" {
        return Ok(Password::NoLogin);
    }
    let Some(rest) = pass.strip_prefix('{') else {
        return Ok(Password::Hashed {
            scheme: "CRYPT".to_owned(),
            hash: pass.to_owned(),
        });
    };
    let Some(end) = rest.find('}') else {
        return Err("password scheme has no closing '}'".to_owned());
    };
    let scheme = &rest[..end];
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!("bad password scheme {{{scheme}}}"));
    }
    let hash = &rest[end + 1..];
    if hash.is_empty() {
        return Err(format!("empty hash after {{{scheme}}}"));
    }
    Ok(Password::Hashed {
        scheme: scheme.to_ascii_uppercase(),
        hash: hash.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# users\n\
        alice:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaA:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G\n\
        \n\
        bob:{sha512-crypt}$6$salt$hash\n\
        postmaster:*\n\
        carol:\n\
        dave:oldcrypt\n";

    #[test]
    fn parses_dovecot_lines() {
        let u = Users::parse(FILE).unwrap();
        assert_eq!(u.len(), 5);
        let a = u.get("alice").unwrap();
        assert_eq!(a.line, 2);
        assert_eq!(a.uid, Some(1000));
        assert_eq!(a.gid, Some(1000));
        assert_eq!(a.home.as_deref(), Some("/home/alice"));
        assert_eq!(a.extra.as_deref(), Some("userdb_quota_rule=*:storage=1G"));
        assert_eq!(
            a.password,
            Password::Hashed {
                scheme: "ARGON2ID".into(),
                hash: "$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaA".into()
            }
        );
        let b = u.get("bob").unwrap();
        assert_eq!(
            b.password,
            Password::Hashed {
                scheme: "SHA512-CRYPT".into(),
                hash: "$6$salt$hash".into()
            }
        );
        assert_eq!(b.uid, None);
        assert_eq!(u.get("postmaster").unwrap().password, Password::NoLogin);
        assert_eq!(u.get("carol").unwrap().password, Password::NoLogin);
        assert!(matches!(
            &u.get("dave").unwrap().password,
            Password::Hashed { scheme, .. } if scheme == "CRYPT"
        ));
        assert!(!u.contains("mallory"));
    }

    #[test]
    fn crlf_and_comments() {
        let u = Users::parse("  # indented comment\r\nalice:*\r\n").unwrap();
        assert!(u.contains("alice"));
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("alice:*\nAlice:*\n", 2, "lower case"),
            ("alice:*\nalice:*\n", 2, "already defined on line 1"),
            ("\n\nbad name:*\n", 3, "white space"),
            ("a/b:*\n", 1, "'/'"),
            (":*\n", 1, "empty name"),
            (".x:*\n", 1, "start with '.'"),
            ("alice:{ARGON2ID\n", 1, "closing"),
            ("alice:{}x\n", 1, "bad password scheme"),
            ("alice:{PLAIN}\n", 1, "empty hash"),
            ("alice:*:x\n", 1, "uid \"x\""),
            ("alice:*:1:-1\n", 1, "gid"),
        ];
        for (text, line, what) in cases {
            let e = Users::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")));
        }
    }
}
