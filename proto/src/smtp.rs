//! SMTP (RFC 5321): the server side (smtpd) and the client side (smtp-relay).

pub mod client;
pub mod line_ends;
pub mod server;
