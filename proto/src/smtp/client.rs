//! The SMTP client side: reply parser, DATA encoder and session.

pub mod body;
pub mod reply;
pub mod session;
