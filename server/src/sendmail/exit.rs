//! The exit codes of sysexits.h that `sendmail` uses, as Postfix's sendmail does: scripts and
//! programs (cron, git send-email, PHP) tell a temporary failure (retry) from a permanent one.
//!
//! Owns: the numbers. Must not: decide which applies (the callers do).

/// Command line usage error (unknown option, no recipient).
pub const USAGE: u8 = 64;
/// The message or the sender is unusable (too big, a mail loop, a bad sender address).
pub const DATAERR: u8 = 65;
/// A recipient address is refused.
pub const NOUSER: u8 = 67;
/// A program it hands over to (smtp-relay for `-bp`, `-q`) cannot be run.
pub const UNAVAILABLE: u8 = 69;
/// Internal error.
pub const SOFTWARE: u8 = 70;
/// The queue file cannot be created (the queue directory is missing or not writable).
pub const CANTCREAT: u8 = 73;
/// Reading the message failed.
pub const IOERR: u8 = 74;
/// Temporary failure: try again later (full disk, a write or sync failure).
pub const TEMPFAIL: u8 = 75;
/// Configuration error (no queue configured, unreadable configuration file).
pub const CONFIG: u8 = 78;
