//! SASL for SMTP AUTH (RFC 4954) and POP3 AUTH (RFC 5034): the `PLAIN` (RFC 4616) and `LOGIN`
//! mechanisms' messages, base64 on the wire, and the password type that never shows in a
//! `Debug` print.
//!
//! Pure: parsing only. Must not: know any protocol's replies, or check a password.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Longest SASL line (RFC 4954 §4: 12,288 octets), command included.
pub const MAX_LINE: usize = 12_288;
/// The `LOGIN` mechanism's first challenge, `Username:` in base64.
pub const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
/// The `LOGIN` mechanism's second challenge, `Password:` in base64.
pub const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// A password: its bytes are cleared when dropped and never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

impl Secret {
    /// Takes the bytes out (the caller clears them after use).
    pub fn take(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// A mechanism this crate speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616).
    Plain,
    /// `LOGIN` (draft-murchison-sasl-login).
    Login,
}

impl Mechanism {
    /// The mechanism named `name` (any case).
    pub fn parse(name: &str) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }
}

/// What went wrong with a client's SASL message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`: it cancels the exchange.
    Cancelled,
    /// Not base64, or not the mechanism's message format.
    Malformed,
}

/// A user name and password from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity (the user name).
    pub user: String,
    /// The password.
    pub password: Secret,
}

/// Decodes one base64 line of a SASL exchange (`*` cancels; `=` is an empty initial
/// response, RFC 4954 §4).
pub fn decode(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_matches([' ', '\t']);
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::Malformed)
}

/// The `PLAIN` message `[authzid] NUL authcid NUL passwd` (RFC 4616 §2). An authorization
/// identity other than the user itself is refused as malformed (no proxy logins).
pub fn plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let user = std::str::from_utf8(authc).map_err(|_| SaslError::Malformed)?;
    if user.is_empty() || (!authz.is_empty() && authz != authc) {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        user: user.to_owned(),
        password: Secret(pass.to_vec()),
    })
}

/// A `LOGIN` user name (UTF-8, not empty, no NUL).
pub fn login_user(message: &[u8]) -> Result<String, SaslError> {
    match std::str::from_utf8(message) {
        Ok(u) if !u.is_empty() && !u.contains('\0') => Ok(u.to_owned()),
        _ => Err(SaslError::Malformed),
    }
}

/// Base64 of `bytes` (for tests and clients).
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        let c = plain(b"\0alice\0pw").unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.password.0, b"pw");
        assert_eq!(plain(b"alice\0alice\0pw").unwrap().user, "alice");
        assert_eq!(plain(b"\0alice\0").unwrap().password.0, b"");
        for bad in [
            &b"bob\0alice\0pw"[..],
            b"\0\0pw",
            b"alicepw",
            b"\0a\0b\0c",
            b"\0\xff\0p",
        ] {
            assert_eq!(plain(bad), Err(SaslError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn decoding_lines() {
        assert_eq!(decode("AGFsaWNlAHB3").unwrap(), b"\0alice\0pw");
        assert_eq!(decode(" AGFsaWNlAHB3 ").unwrap(), b"\0alice\0pw");
        assert_eq!(decode("=").unwrap(), b"");
        assert_eq!(decode("*"), Err(SaslError::Cancelled));
        assert_eq!(decode("not base64!"), Err(SaslError::Malformed));
        assert_eq!(encode(b"Username:"), LOGIN_USERNAME);
        assert_eq!(encode(b"Password:"), LOGIN_PASSWORD);
        assert_eq!(login_user(b"alice").unwrap(), "alice");
        assert_eq!(login_user(b""), Err(SaslError::Malformed));
        assert_eq!(format!("{:?}", Secret(b"pw".to_vec())), "Secret(..)");
    }
}
