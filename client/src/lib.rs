//! smtp-relay's queue as a library: the queued messages with their relay state, and the
//! listing that both `smtp-relay --list` and `smtpctl show queue` print (one code, two
//! commands).
//!
//! Owns: nothing of its own; it exposes [`queue`] and [`state`] to the binary and to smtpd's
//! `smtpctl`. Must not: pull the relay's sending machinery into its users.

pub mod queue;
pub mod state;
