//! MX resolution (RFC 5321 §5.1, RFC 7505): what a domain's mail goes to.
//!
//! Owns: the answer types ([`Target`], [`Resolution`]) the rest of the relay sees, and the split
//! between the pure MX policy ([`order`]: preference order with equal preferences shuffled by one
//! seed per run, so domains sharing MX hosts pick the same one; implicit MX, null MX, MX targets
//! written as IP addresses, MX lists that name this relay) and the lookups ([`resolve`]: hickory
//! on a DNS thread of its own, so the reactor never blocks on DNS).
//! Must not: open connections or decide retries.

mod order;
mod resolve;

use std::net::SocketAddr;

pub use order::{MxPlan, mx_hosts, targets_below_self};
pub use resolve::resolve_all;

/// One address to try, with the host name it came from (for logs and DSNs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
    /// A `--transport` next hop: configured on purpose, so the session does not refuse a
    /// server that calls itself by our HELO name, and `--tls` applies as given. Sessions never
    /// mix jobs of transport and other targets.
    pub transport: bool,
}

/// What a domain resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Addresses in the order to try them.
    Targets(Vec<Target>),
    /// Give up: enhanced status and text (null MX, NXDOMAIN).
    Permanent { status: &'static str, text: String },
    /// Try later (SERVFAIL, timeout).
    Temporary(String),
}
