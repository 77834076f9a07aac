//! Where `sendmail` queues, and with which rights: the queue Maildir named by the environment
//! variable `SMTPD_MAILDIR`, or else by the `maildir` key of smtpd's configuration file (`-C
//! FILE`, default [`DEFAULT_CONFIG`]).
//!
//! Permissions (README.md, "sendmail", tells the whole design): the package installs
//! `sendmail` setgid to the mail system's group, and the queue's `tmp/` and `new/` writable by
//! that group; queue files are created with mode 0640 so the relay (that group's user) reads
//! them. A caller who chooses the queue (`SMTPD_MAILDIR`, `-C`) or runs another program
//! (`-bp`, `-q`) first gives the group up ([`drop_setgid`]): the setgid right only ever drops
//! a message into the configured queue.
//!
//! Owns: the look-up of the queue path, the configuration file's `maildir` key (the one place
//! that reads it), and giving up the setgid group.
//! Must not: write to the queue or speak SMTP.

use std::path::{Path, PathBuf};

/// The configuration file read without `-C`.
pub const DEFAULT_CONFIG: &str = "/etc/smtpd/smtpd.toml";
/// The environment variable that names the queue, overriding the configuration file.
pub const MAILDIR_ENV: &str = "SMTPD_MAILDIR";

/// The queue Maildir: `env` (the value of [`MAILDIR_ENV`]) when set and not empty, else the
/// `maildir` key of `config` (or [`DEFAULT_CONFIG`]). The error is the message for `EX_CONFIG`.
pub fn locate(env: Option<&str>, config: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.is_none() => {
            return Err(format!(
                "no queue configured: {DEFAULT_CONFIG} does not exist and {MAILDIR_ENV} is not set"
            ));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    maildir_from_config(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `maildir` key of smtpd's TOML configuration.
pub fn maildir_from_config(text: &str) -> Result<PathBuf, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
    match table.get("maildir") {
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(PathBuf::from(s)),
        Some(_) => Err("maildir must be a non-empty string".to_owned()),
        None => Err(format!(
            "no maildir key: no queue configured (set it, or {MAILDIR_ENV})"
        )),
    }
}

/// Running setgid (effective group not the real one).
pub fn is_setgid() -> bool {
    // SAFETY: getgid/getegid cannot fail and take no pointers.
    unsafe { libc::getegid() != libc::getgid() }
}

/// Gives up the setgid group for good (effective and saved set-group-ID back to the real
/// group), checked.
pub fn drop_setgid() -> Result<(), String> {
    if !is_setgid() {
        return Ok(());
    }
    // SAFETY: plain system calls on integers.
    let (rc, still) = unsafe {
        let gid = libc::getgid();
        let rc = libc::setresgid(gid, gid, gid);
        (rc, libc::getegid() != gid)
    };
    if rc != 0 || still {
        return Err(format!(
            "cannot give up the mail group: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins() {
        assert_eq!(
            locate(Some("/q"), Some(Path::new("/nonexistent/x.toml"))),
            Ok(PathBuf::from("/q"))
        );
    }

    #[test]
    fn config_key() {
        assert_eq!(
            maildir_from_config("maildir = \"/var/spool/smtpd\"\nhostname = \"x\"\n"),
            Ok(PathBuf::from("/var/spool/smtpd"))
        );
        assert!(
            maildir_from_config("hostname = \"x\"\n")
                .unwrap_err()
                .contains("no maildir key")
        );
        assert!(
            maildir_from_config("maildir = 3\n")
                .unwrap_err()
                .contains("non-empty string")
        );
        assert!(
            maildir_from_config("maildir = \n")
                .unwrap_err()
                .contains("not valid TOML")
        );
    }

    #[test]
    fn a_missing_named_config_is_an_error_naming_it() {
        let e = locate(None, Some(Path::new("/nonexistent/smtpd.toml"))).unwrap_err();
        assert!(e.contains("/nonexistent/smtpd.toml"), "{e}");
    }
}
