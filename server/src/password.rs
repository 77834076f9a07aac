//! Password hashes in the users file: making `{ARGON2ID}` strings (`smtpd hash-password`, like
//! `doveadm pw -s ARGON2ID`) and checking a password against a user's stored hash.
//!
//! The strings are Dovecot's: `{ARGON2ID}` followed by the PHC string
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), so Dovecot verifies what this writes and the
//! other way round. [`verify`] also checks `{SHA512-CRYPT}` (glibc `$6$`) and `{BLF-CRYPT}`
//! (bcrypt `$2y$`), the other schemes Dovecot users files commonly hold; other schemes are
//! reported as unsupported.
//!
//! This module owns the hashing only. It reads the random salt from the OS (and the command
//! reads stdin); hashing is slow on purpose, so the server must run [`verify`] off the reactor.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::process::ExitCode;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use maildir_core::users::Password;

/// The scheme this module writes and verifies.
pub const ARGON2ID: &str = "ARGON2ID";
/// glibc's SHA-512 crypt (`$6$`), verified only.
pub const SHA512_CRYPT: &str = "SHA512-CRYPT";
/// bcrypt (`$2y$`, `$2b$`, `$2a$`), verified only.
pub const BLF_CRYPT: &str = "BLF-CRYPT";

/// Why hashing or verification could not be done (a wrong password is `Ok(false)`, not this).
#[derive(Debug)]
pub enum PasswordError {
    /// No randomness for the salt.
    Random(io::Error),
    /// The stored hash is not a valid PHC string, or hashing failed.
    Hash(String),
    /// A scheme this build does not verify.
    Unsupported(String),
    /// The account has no password (`*` or empty): it cannot log in.
    NoLogin,
}

impl fmt::Display for PasswordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordError::Random(e) => write!(f, "cannot read random bytes for the salt: {e}"),
            PasswordError::Hash(e) => write!(f, "bad password hash: {e}"),
            PasswordError::Unsupported(s) => write!(f, "password scheme {{{s}}} is not supported"),
            PasswordError::NoLogin => f.write_str("the account cannot log in"),
        }
    }
}

impl std::error::Error for PasswordError {}

fn hasher() -> Argon2<'static> {
    // Argon2id v19 with the crate's defaults (m=19 MiB, t=2, p=1: OWASP's minimum), the
    // parameters written into each string so that any verifier reads them back.
    Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        Params::default(),
    )
}

/// Hashes `password` with a fresh random salt: `{ARGON2ID}$argon2id$v=19$...`.
pub fn hash(password: &[u8]) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(PasswordError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    let phc = hasher()
        .hash_password(password, &salt)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(format!("{{{ARGON2ID}}}{phc}"))
}

/// Checks `candidate` against a user's stored password: `Ok(true)` when it matches,
/// `Ok(false)` when it does not.
pub fn verify(stored: &Password, candidate: &[u8]) -> Result<bool, PasswordError> {
    match stored {
        Password::NoLogin => Err(PasswordError::NoLogin),
        Password::Hashed { scheme, hash } if scheme == ARGON2ID => {
            let parsed = PasswordHash::new(hash).map_err(|e| PasswordError::Hash(e.to_string()))?;
            if parsed.algorithm.as_str() != "argon2id" {
                return Err(PasswordError::Hash(format!(
                    "{{ARGON2ID}} holds a {} hash",
                    parsed.algorithm
                )));
            }
            match Argon2::default().verify_password(candidate, &parsed) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::Password) => Ok(false),
                Err(e) => Err(PasswordError::Hash(e.to_string())),
            }
        }
        Password::Hashed { scheme, hash } if scheme == SHA512_CRYPT => {
            verify_sha512_crypt(hash, candidate)
        }
        Password::Hashed { scheme, hash } if scheme == BLF_CRYPT => {
            bcrypt::verify(candidate, hash).map_err(|e| PasswordError::Hash(e.to_string()))
        }
        Password::Hashed { scheme, .. } => Err(PasswordError::Unsupported(scheme.clone())),
    }
}

/// `$6$[rounds=N$]salt$hash` (glibc crypt(3), what `doveadm pw -s SHA512-CRYPT` writes). As
/// glibc does, rounds are clamped to 1,000..=999,999,999 and the salt is cut at 16 characters.
fn verify_sha512_crypt(stored: &str, candidate: &[u8]) -> Result<bool, PasswordError> {
    let bad = |why: &str| PasswordError::Hash(format!("{{SHA512-CRYPT}}: {why}"));
    let rest = stored
        .strip_prefix("$6$")
        .ok_or_else(|| bad("does not start with $6$"))?;
    let mut parts: Vec<&str> = rest.split('$').collect();
    let rounds = match parts.first().and_then(|p| p.strip_prefix("rounds=")) {
        Some(n) => {
            let n: usize = n.parse().map_err(|_| bad("rounds is not a number"))?;
            parts.remove(0);
            n.clamp(sha_crypt::ROUNDS_MIN, sha_crypt::ROUNDS_MAX)
        }
        None => sha_crypt::ROUNDS_DEFAULT,
    };
    let [salt, want] = parts[..] else {
        return Err(bad("expected salt$hash"));
    };
    let salt = &salt.as_bytes()[..salt.len().min(16)];
    let params = sha_crypt::Sha512Params::new(rounds).map_err(|_| bad("bad rounds"))?;
    let got = sha_crypt::sha512_crypt_b64(candidate, salt, &params)
        .map_err(|_| bad("cannot compute the hash"))?;
    Ok(constant_time_eq(got.as_bytes(), want.as_bytes()))
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The password on the first line of `input`, without its line end.
fn read_password(input: &mut dyn BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    input.read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// `smtpd hash-password`: reads a password from the first line of stdin, prints its
/// `{ARGON2ID}` string for the users file. Exit 1 with one line on stderr on failure.
pub fn hash_password_command() -> ExitCode {
    let stdin = io::stdin();
    let result = read_password(&mut stdin.lock())
        .map_err(|e| format!("cannot read the password from stdin: {e}"))
        .and_then(|p| {
            if p.is_empty() {
                Err("empty password (give it on stdin)".to_owned())
            } else {
                hash(&p).map_err(|e| e.to_string())
            }
        });
    match result {
        Ok(line) => {
            let mut out = io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtpd hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maildir_core::users::Users;

    fn stored(line: &str) -> Password {
        let u = Users::parse(&format!("alice:{line}\n")).unwrap();
        u.get("alice").unwrap().password.clone()
    }

    #[test]
    fn hash_then_verify() {
        let h = hash(b"s3cret pass").unwrap();
        assert!(
            h.starts_with("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"),
            "{h}"
        );
        let p = stored(&h);
        assert!(verify(&p, b"s3cret pass").unwrap());
        assert!(!verify(&p, b"s3cret pasS").unwrap());
        // Two hashes of one password differ (fresh salt).
        assert_ne!(h, hash(b"s3cret pass").unwrap());
    }

    #[test]
    fn verifies_dovecot_parameters() {
        // Dovecot 2.3's `doveadm pw -s ARGON2ID -p secret` writes m=65536,t=3,p=1; the
        // parameters come from the string, so a hash made with them verifies here.
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let params = Params::new(65536, 3, 1, None).unwrap();
        let a = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let phc = a.hash_password(b"secret", &salt).unwrap().to_string();
        assert!(phc.contains("m=65536,t=3,p=1"));
        let p = stored(&format!("{{ARGON2ID}}{phc}"));
        assert!(verify(&p, b"secret").unwrap());
        assert!(!verify(&p, b"Secret").unwrap());
    }

    /// Made independently with Dovecot 2.3.19: `doveadm pw -s SCHEME -p 'correct horse'`.
    #[test]
    fn verifies_doveadm_crypt_hashes() {
        for line in [
            "{SHA512-CRYPT}$6$sNDqHs.hhdD9yuAI$fWwvlemPsvqkMyqp9uNcElVdSsbyT11P8dsqnaa6KVdJXTpjZ9GrPRSPIiDnaIDKHJfgUfMEoJGt5w8i0N8cT/",
            "{BLF-CRYPT}$2y$05$0OVAC6MpW8cZ4bVP80dJLuoi.MYuGCAim5FmUaueOKXk1XSHZF7uK",
        ] {
            let p = stored(line);
            assert!(verify(&p, b"correct horse").unwrap(), "{line}");
            assert!(!verify(&p, b"correct horsE").unwrap(), "{line}");
            assert!(!verify(&p, b"").unwrap(), "{line}");
        }
        // glibc's test vector with explicit rounds and a salt longer than 16 characters.
        let p = stored(
            "{SHA512-CRYPT}$6$rounds=5000$toolongsaltstring$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
        );
        assert!(verify(&p, b"This is just a test").unwrap());
        for bad in [
            "{SHA512-CRYPT}$5$a$b",
            "{SHA512-CRYPT}$6$rounds=x$a$b",
            "{SHA512-CRYPT}$6$onlysalt",
        ] {
            assert!(
                matches!(verify(&stored(bad), b"x"), Err(PasswordError::Hash(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            verify(&stored("{BLF-CRYPT}$2y$05$short"), b"x"),
            Err(PasswordError::Hash(_))
        ));
    }

    #[test]
    fn other_schemes_and_no_login() {
        assert!(matches!(
            verify(&stored("*"), b"x"),
            Err(PasswordError::NoLogin)
        ));
        assert!(matches!(
            verify(&stored("{PLAIN-MD5}abc"), b"x"),
            Err(PasswordError::Unsupported(s)) if s == "PLAIN-MD5"
        ));
        assert!(matches!(
            verify(&stored("{ARGON2ID}not-phc"), b"x"),
            Err(PasswordError::Hash(_))
        ));
        let argon2i = "{ARGON2ID}$argon2i$v=19$m=19456,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(matches!(
            verify(&stored(argon2i), b"x"),
            Err(PasswordError::Hash(_))
        ));
    }

    #[test]
    fn password_line_ends() {
        for (input, want) in [
            (&b"pw\n"[..], &b"pw"[..]),
            (b"pw\r\n", b"pw"),
            (b"pw", b"pw"),
            (b"p w\nsecond\n", b"p w"),
            (b"", b""),
        ] {
            let mut r = input;
            assert_eq!(read_password(&mut r).unwrap(), want);
        }
    }
}
