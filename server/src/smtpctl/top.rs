//! `smtpctl top`: placeholder, filled in below.
use std::io;
use std::path::PathBuf;

/// Runs the console.
pub fn run(_socket: PathBuf) -> io::Result<()> {
    Err(io::Error::other("top: not built yet"))
}
