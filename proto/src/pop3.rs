//! What smtpd's POP3 listeners speak (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH PLAIN, RFC 2595
//! STLS, RFC 3206 response codes):
//! - [`command`]: command-line parser;
//! - [`reply`]: status lines and the CAPA list;
//! - [`multiline`]: the dot-stuffed RETR/TOP response made from the message file chunk by chunk;
//! - [`session`]: the state machine (AUTHORIZATION, TRANSACTION, UPDATE).

pub mod command;
pub mod multiline;
pub mod reply;
pub mod session;

#[cfg(test)]
mod tests;
