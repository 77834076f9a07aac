//! smtp-relay: drains a Maildir queue to the recipients' mail exchangers (work in progress).

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("smtp-relay: not implemented yet");
    ExitCode::FAILURE
}
