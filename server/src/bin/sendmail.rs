//! sendmail: the Postfix-compatible submission command (`smtpd::sendmail`). Thin: the
//! arguments go to `smtpd::sendmail::run::main`, its code is the exit status.

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv = std::env::args_os().skip(1);
    let argv = argv.map(|a| a.to_string_lossy().into_owned()).collect();
    ExitCode::from(smtpd::sendmail::run::main(argv))
}
