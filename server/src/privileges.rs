//! Dropping root: smtpd started as root (to bind port 25, 465, 587 and read a key only root
//! reads) becomes `--user`/`--group` before it opens a Maildir or starts a thread, so it never
//! serves a client as root.
//!
//! The order is the one that cannot fail open: supplementary groups replaced by the one group
//! (`setgroups`), then the group (`setgid`), then the user (`setuid`); then checked: real and
//! effective IDs are the target ones and `setuid(0)` fails. Any failure is an error naming the
//! step, and smtpd exits.
//!
//! Decision on root without `--user`: smtpd serves, with a warning (containers and CI run as
//! root on purpose, and the tests do). The package's unit gives `--user smtpd`.
//!
//! Owns: looking up the user and group and changing the process's identity.
//! Must not: bind, open files or decide when to run (main does, after binding).

use std::ffi::CString;

/// Who to serve as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User name (`--user`).
    pub user: String,
    /// Group name (`--group`); `None`: the user's primary group.
    pub group: Option<String>,
}

/// True when the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The user's ID and primary group ID.
pub fn lookup_user(name: &str) -> Result<(libc::uid_t, libc::gid_t), String> {
    let c = CString::new(name).map_err(|_| format!("--user '{name}': not a user name"))?;
    // SAFETY: getpwnam_r gets a zeroed struct, a buffer and its length, and a result pointer
    // that is only read when set.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(format!(
                "--user '{name}': {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        if result.is_null() {
            return Err(format!("--user '{name}': no such user"));
        }
        Ok((pw.pw_uid, pw.pw_gid))
    }
}

/// The group's ID.
pub fn lookup_group(name: &str) -> Result<libc::gid_t, String> {
    let c = CString::new(name).map_err(|_| format!("--group '{name}': not a group name"))?;
    // SAFETY: as in lookup_user, with getgrnam_r.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 64 * 1024];
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            c.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(format!(
                "--group '{name}': {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        if result.is_null() {
            return Err(format!("--group '{name}': no such group"));
        }
        Ok(gr.gr_gid)
    }
}

/// Becomes `run_as` (see the module doc for the order and checks). Not root: allowed only when
/// already that user and group (nothing to change).
pub fn drop_to(run_as: &RunAs) -> Result<(), String> {
    let (uid, primary) = lookup_user(&run_as.user)?;
    let gid = match &run_as.group {
        Some(g) => lookup_group(g)?,
        None => primary,
    };
    // SAFETY: plain system calls on integers and a one-element array that outlives the call.
    unsafe {
        if !is_root() {
            if libc::geteuid() == uid && libc::getegid() == gid {
                return Ok(());
            }
            return Err(format!(
                "--user {}: only root can change user (running as uid {})",
                run_as.user,
                libc::geteuid()
            ));
        }
        let groups = [gid];
        let step = |rc: libc::c_int, what: &str| {
            if rc == 0 {
                Ok(())
            } else {
                Err(format!(
                    "cannot drop privileges ({what}): {}",
                    std::io::Error::last_os_error()
                ))
            }
        };
        step(libc::setgroups(1, groups.as_ptr()), "setgroups")?;
        step(libc::setgid(gid), "setgid")?;
        step(libc::setuid(uid), "setuid")?;
        if libc::getuid() != uid
            || libc::geteuid() != uid
            || libc::getgid() != gid
            || libc::getegid() != gid
        {
            return Err("cannot drop privileges: the IDs did not change".into());
        }
        if uid != 0 && libc::setuid(0) == 0 {
            return Err("cannot drop privileges: root could be regained".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(lookup_user("root").map(|(u, _)| u), Ok(0));
        assert_eq!(lookup_group("root"), Ok(0));
        assert!(
            lookup_user("no-such-user-here")
                .unwrap_err()
                .contains("no such user")
        );
        assert!(
            lookup_group("no-such-group-here")
                .unwrap_err()
                .contains("no such group")
        );
        assert!(lookup_user("a\0b").unwrap_err().contains("not a user name"));
    }
}
