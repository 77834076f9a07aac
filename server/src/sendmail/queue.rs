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
/// `maildir` of smtpd's configuration file `config` (or [`DEFAULT_CONFIG`]), read with smtpd's
/// own loader (`config_file`, every key checked as smtpd checks it). The error is the message
/// for `EX_CONFIG`.
pub fn locate(env: Option<&str>, config: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    if config.is_none() && !path.exists() {
        return Err(format!(
            "no queue configured: {DEFAULT_CONFIG} does not exist and {MAILDIR_ENV} is not set"
        ));
    }
    maildir_from_config(path)
}

/// The `maildir` setting of smtpd's configuration file at `path`.
pub fn maildir_from_config(path: &Path) -> Result<PathBuf, String> {
    let loaded = config_file::parse_file::<crate::config::Args>("smtpd", path).map_err(|e| {
        let e = e.to_string();
        if e.contains("--maildir") {
            format!(
                "{}: no maildir key: no queue configured (set it, or {MAILDIR_ENV})",
                path.display()
            )
        } else {
            e
        }
    })?;
    loaded
        .args
        .maildir
        .ok_or_else(|| format!("{}: no maildir key: no queue configured", path.display()))
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
        let dir = std::env::temp_dir().join(format!("sendmail-queue-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("smtpd.toml");
        let write = |t: &str| std::fs::write(&f, t).expect("write");
        write("maildir = \"/var/spool/smtpd\"\nhostname = \"x.test\"\n");
        assert_eq!(
            maildir_from_config(&f),
            Ok(PathBuf::from("/var/spool/smtpd"))
        );
        write("hostname = \"x.test\"\n");
        let e = maildir_from_config(&f).unwrap_err();
        assert!(e.contains("no maildir key"), "{e}");
        write("maildir = \"/q\"\nmax-size = \"big\"\n");
        let e = maildir_from_config(&f).unwrap_err();
        assert!(e.contains("max-size"), "smtpd's own checks apply: {e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_named_config_is_an_error_naming_it() {
        let e = locate(None, Some(Path::new("/nonexistent/smtpd.toml"))).unwrap_err();
        assert!(e.contains("/nonexistent/smtpd.toml"), "{e}");
    }
}
