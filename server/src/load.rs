//! Loading smtpd's whole configuration: the command line merged with its `--config` TOML file
//! ([`config_file`]), validated into a [`Config`], and every file it names read and checked
//! (users and aliases through [`crate::accounts::load`], certificate and key through
//! [`crate::tls::load`]). Start-up, `--check-config` and a reload (SIGHUP, `smtpctl reload`) all
//! go through [`complete`], so they accept and refuse the same things.
//!
//! Owns: the order of loading and the errors' wording (one line). Must not: bind sockets,
//! create or open Maildirs, or change a running server (that is
//! [`crate::reactor::Server::reload`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use maildir_core::directory::Directory;
use maildir_core::local::Mailboxes;
use proto::smtp::server::policy::{LocalPolicy, QuotaView};

use crate::config::{Args, Config, LocalConfig};

/// A configuration with every file it names read: ready to start or swap in.
#[derive(Debug)]
pub struct Loaded {
    /// The validated settings.
    pub config: Config,
    /// Users and aliases, when there are local domains.
    pub directory: Option<Directory>,
    /// The TLS configuration, when a certificate is given.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Each option's value and origin, for `--check-config`.
    pub settings: Vec<config_file::Setting>,
    /// The `--config` file, if any.
    pub file: Option<PathBuf>,
}

/// Parses the command line (program name first) with its `--config` file. Errors in the file
/// are [`config_file::Error::File`]; help, version and usage errors are clap's.
pub fn args(argv: &[OsString]) -> Result<config_file::Loaded<Args>, config_file::Error> {
    config_file::parse::<Args>(argv)
}

/// Validates the arguments and reads every file they name. The error is one line.
pub fn complete(loaded: config_file::Loaded<Args>) -> Result<Loaded, String> {
    let config_file::Loaded {
        args,
        file,
        settings,
    } = loaded;
    let config = args.validate()?;
    let directory = match &config.local {
        Some(local) => Some(crate::accounts::load(&local.accounts)?),
        None => None,
    };
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::load(&files.cert, &files.key)?),
        None => None,
    };
    Ok(Loaded {
        config,
        directory,
        tls,
        settings,
        file,
    })
}

/// [`args`] then [`complete`], every error as one line (a reload's).
pub fn from_argv(argv: &[OsString]) -> Result<Loaded, String> {
    complete(args(argv).map_err(|e| e.to_string())?)
}

/// smtpd's effective settings from a configuration file alone, as `smtpd --config FILE` would
/// have them (validated; the users, aliases and certificate files are not read). For other
/// programs that need smtpd's settings, such as the queue Maildir (`config.maildir`).
pub fn from_file(path: &Path) -> Result<Config, String> {
    config_file::parse_file::<Args>("smtpd", path)
        .map_err(|e| e.to_string())?
        .args
        .validate()
}

/// The local-delivery policy the sessions share: the directory, and the quota over the usage
/// counts of `mailboxes` (every user counted now).
pub fn local_policy(
    local: &LocalConfig,
    directory: Directory,
    mailboxes: &Arc<Mailboxes>,
    spool_is_copy: bool,
) -> Result<LocalPolicy, String> {
    let quota = match local.quota {
        Some(limit) => {
            let users = directory.users().iter().map(|u| u.name.as_str());
            let q = crate::quota::Quota::start(Arc::clone(mailboxes), limit, users)?;
            Some(q as Arc<dyn QuotaView>)
        }
        None => None,
    };
    Ok(LocalPolicy {
        directory: Arc::new(directory),
        quota,
        spool_is_copy,
    })
}

/// Puts `--log-level` in force at once, raising or lowering what `RUST_LOG` allowed; `None`
/// (the option gone at a reload) gives the decision back to `RUST_LOG`, whose most detailed
/// level was `start` ([`log::max_level`] before any `--log-level`).
pub fn apply_log_level(level: Option<log::LevelFilter>, start: log::LevelFilter) {
    match level {
        Some(level) => maildir_core::logging::set_level(level),
        None => maildir_core::logging::clear_level(start),
    }
}

/// What `--check-config` prints: a header naming the file, then the settings as TOML.
pub fn render(loaded: &Loaded, show: config_file::Show) -> String {
    let file = loaded.file.as_ref().map_or_else(
        || "no --config file".to_owned(),
        |p| p.display().to_string(),
    );
    let what = match show {
        config_file::Show::Set => "settings given",
        config_file::Show::All => "every setting",
    };
    format!(
        "# smtpd configuration ({file}): valid; {what}\n{}",
        config_file::render(&loaded.settings, show)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("smtpd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Another program reads smtpd's queue Maildir from its configuration file.
    #[test]
    fn from_file_gives_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smtpd.toml");
        std::fs::write(&file, "maildir = \"/srv/queue\"\nmax-size = 1000\n").unwrap();
        let c = from_file(&file).unwrap();
        assert_eq!(c.maildir, PathBuf::from("/srv/queue"));
        assert_eq!(c.session.max_size, 1000);
        std::fs::write(&file, "max-size = 1000\n").unwrap();
        assert!(from_file(&file).unwrap_err().contains("--maildir"));
        std::fs::write(&file, "maildir = \"q\"\n[tls]\ncert = 1\nkey = 2\n").unwrap();
        let c = from_file(&file).unwrap();
        assert!(c.session.starttls, "certificate files are not read here");
    }

    /// Start, check and reload refuse the same things, each in one line.
    #[test]
    fn complete_reads_the_files_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smtpd.toml");
        let users = dir.path().join("users");
        std::fs::write(
            &file,
            format!(
                "maildir = \"q\"\nlocal-domain = [\"example.test\"]\nmailboxes = \"m\"\nusers = \"{}\"\n",
                users.display()
            ),
        )
        .unwrap();
        let config = file.to_str().unwrap();
        let e = from_argv(&argv(&["--config", config])).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::write(&users, "alice:*::::\npostmaster:*::::\n").unwrap();
        let l = from_argv(&argv(&["--config", config])).unwrap();
        assert_eq!(l.directory.map(|d| d.users().len()), Some(2));
        assert_eq!(l.file.as_deref(), Some(file.as_path()));
        let e = from_argv(&argv(&[
            "--config",
            config,
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ]))
        .unwrap_err();
        assert!(e.contains("TLS certificate c"), "{e}");
        assert!(!e.contains('\n'));
    }
}
