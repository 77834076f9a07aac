//! The POP3 server's status lines: `+OK` and `-ERR` texts, with the RFC 2449 / RFC 3206
//! response codes (`[AUTH]`, `[IN-USE]`, `[SYS/TEMP]`, `[SYS/PERM]`) where a client needs to
//! tell why, and the CAPA list.
//!
//! Owns: reply wording. Must not: decide which reply a situation gets (that is
//! [`super::session`]).

/// Greeting (no APOP timestamp: APOP is not offered).
pub fn greeting(hostname: &str) -> String {
    format!("+OK {hostname} POP3 server ready\r\n")
}

/// A bad password, an unknown user, a refused AUTH PLAIN message (RFC 3206 `[AUTH]`).
pub const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed.\r\n";
/// USER/PASS/AUTH on a plaintext connection that is not loopback (RFC 2595 §2).
pub const PLAINTEXT_REFUSED: &str =
    "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n";
/// The client's address is banned after repeated failed logins.
pub const BANNED: &str = "-ERR [AUTH] Too many failed logins from your address; try later.\r\n";
/// The password could not be checked (LDAP down, ...) (RFC 3206 `[SYS/TEMP]`).
pub const AUTH_UNAVAILABLE: &str =
    "-ERR [SYS/TEMP] Authentication service unavailable; try again later.\r\n";
/// Another session holds the maildrop (RFC 2449 `[IN-USE]`).
pub const IN_USE: &str = "-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n";
/// The maildrop could not be read.
pub const MAILDROP_FAILED: &str = "-ERR [SYS/TEMP] Cannot open the mailbox; try again later.\r\n";
/// A message file could not be opened or read for RETR/TOP.
pub const MESSAGE_FAILED: &str = "-ERR [SYS/TEMP] Cannot read the message.\r\n";
/// A message file disappeared (another reader deleted it).
pub const MESSAGE_GONE: &str = "-ERR Message was deleted by another client.\r\n";
/// After `AUTH PLAIN` without an initial response: an empty challenge.
pub const CONTINUE: &str = "+ \r\n";
/// `*` in answer to the challenge (RFC 5034 §4).
pub const AUTH_CANCELLED: &str = "-ERR Authentication cancelled.\r\n";
/// A SASL response that is not base64.
pub const BAD_BASE64: &str = "-ERR Invalid base64 data.\r\n";
/// An AUTH mechanism other than PLAIN.
pub const UNKNOWN_MECHANISM: &str = "-ERR Unsupported authentication mechanism.\r\n";
/// `AUTH` without a mechanism: the mechanisms (a multi-line answer).
pub const MECHANISMS: &str = "+OK\r\nPLAIN\r\n.\r\n";
/// APOP is not offered.
pub const NO_APOP: &str = "-ERR APOP is not supported.\r\n";
/// PASS without USER.
pub const USER_FIRST: &str = "-ERR No username given.\r\n";
/// USER accepted (whether or not the user exists: no enumeration).
pub const USER_OK: &str = "+OK\r\n";
/// Login done and the maildrop opened.
pub const LOGGED_IN: &str = "+OK Logged in.\r\n";
/// STLS accepted: the handshake follows.
pub const STLS_OK: &str = "+OK Begin TLS negotiation now.\r\n";
/// STLS when TLS is not configured or already on.
pub const STLS_REFUSED: &str = "-ERR STLS not available.\r\n";
/// A command not known.
pub const UNKNOWN_COMMAND: &str = "-ERR Unknown command.\r\n";
/// A command not allowed in this state.
pub const WRONG_STATE: &str = "-ERR Command not valid in this state.\r\n";
/// A line over the limit.
pub const LINE_TOO_LONG: &str = "-ERR Line too long.\r\n";
/// Too many errors: closing.
pub const TOO_MANY_ERRORS: &str = "-ERR Too many invalid commands.\r\n";
/// A message number not in the maildrop, or marked deleted.
pub const NO_SUCH_MESSAGE: &str = "-ERR No such message.\r\n";
/// DELE of a message already marked.
pub const ALREADY_DELETED: &str = "-ERR Message is already deleted.\r\n";
/// NOOP.
pub const OK: &str = "+OK\r\n";
/// DELE done.
pub const DELETED: &str = "+OK Marked to be deleted.\r\n";
/// The idle timer ran out (RFC 1939 autologout).
pub const TIMEOUT: &str = "-ERR Disconnected for inactivity.\r\n";
/// The server is stopping.
pub const SHUTTING_DOWN: &str = "-ERR [SYS/TEMP] Server shutting down.\r\n";
/// QUIT in AUTHORIZATION, or after an update that removed everything asked.
pub const BYE: &str = "+OK Logging out.\r\n";
/// QUIT whose update could not remove some messages (RFC 1939 §6).
pub const UPDATE_FAILED: &str = "-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n";

/// The CAPA answer (RFC 2449): `login` lists USER and SASL PLAIN, `stls` lists STLS.
pub fn capabilities(login: bool, stls: bool) -> String {
    let mut s = String::from(
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\n",
    );
    if login {
        s.push_str("USER\r\nSASL PLAIN\r\n");
    }
    if stls {
        s.push_str("STLS\r\n");
    }
    s.push_str("IMPLEMENTATION smtpd\r\n.\r\n");
    s
}
