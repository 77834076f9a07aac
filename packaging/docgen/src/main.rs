//! docgen: the manual pages and shell completions of every program, from their clap
//! definitions, for `scripts/package.sh` (run before `cargo deb`).
//!
//! `docgen OUTDIR` writes `OUTDIR/man/{smtpd,smtp-relay,sendmail.smtpd}.8` and
//! `OUTDIR/completions/{bash,zsh,fish}/...` (smtpd and smtp-relay). smtp-relay's definition is its own
//! `client/src/config.rs`, compiled in here (the relay is a binary crate without a library);
//! sendmail's is `smtpd::sendmail::args::command()`.
//!
//! Owns: which pages and completions exist and where they are written.
//! Must not: define options (each program's own command line does).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)]
#[path = "../../../client/src/config.rs"]
mod relay_config;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: docgen OUTDIR");
        return ExitCode::from(2);
    };
    match generate(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("docgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every program's command definition, named as installed.
fn commands() -> Vec<clap::Command> {
    vec![
        smtpd::config::Args::command().name("smtpd"),
        relay_config::Args::command().name("smtp-relay"),
        smtpd::sendmail::args::command(),
    ]
}

fn generate(out: &Path) -> Result<(), String> {
    let man = out.join("man");
    std::fs::create_dir_all(&man).map_err(|e| format!("cannot create {}: {e}", man.display()))?;
    for cmd in commands() {
        let name = cmd.get_name().to_owned();
        // sendmail's page is installed as sendmail.smtpd.8, the alternative's slave link, never
        // over another MTA's sendmail.8.
        let page = if name == "sendmail" {
            "sendmail.smtpd".to_owned()
        } else {
            name.clone()
        };
        let path = man.join(format!("{page}.8"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section("8")
            .manual("System Manager's Manual")
            .render(&mut buf)
            .map_err(|e| format!("{name}: {e}"))?;
        std::fs::write(&path, buf).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if name == "sendmail" {
            // Its options are not clap's (getopt grouping); other MTAs' completions may exist.
            continue;
        }
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let d = out.join("completions").join(dir);
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut buf);
            let p = d.join(file);
            std::fs::write(&p, buf).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
    }
    Ok(())
}
