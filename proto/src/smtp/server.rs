//! The SMTP server side: parser, reply catalogue, DATA decoder, local-recipient policy, AUTH
//! exchange and session.

pub mod auth;
pub mod command;
pub mod data;
pub mod policy;
pub mod reply;
pub mod session;
