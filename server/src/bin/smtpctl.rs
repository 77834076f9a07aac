//! smtpctl: control a running smtpd (see `smtpd::smtpctl`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    smtpd::smtpctl::main(smtpd::smtpctl::Args::parse())
}
