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

/// Puts `--log-level` in force: records more detailed than `level` are no longer written.
/// It can lower the level `RUST_LOG` set, not raise it (the logging thread's filter is fixed at
/// start); `maildir_core::logging` needs a settable filter for that.
pub fn apply_log_level(level: log::LevelFilter) {
    log::set_max_level(level);
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
