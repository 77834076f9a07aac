//! The SMTP server side: parser, reply catalogue, DATA decoder and session.

pub mod command;
pub mod data;
pub mod reply;
pub mod session;
