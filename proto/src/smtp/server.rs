//! The SMTP server side: parser, reply catalogue, DATA decoder, local-recipient policy and
//! session.

pub mod command;
pub mod data;
pub mod policy;
pub mod reply;
pub mod session;
