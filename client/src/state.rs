//! Durable per-message relay state: `Maildir/.relay/<queue id>`, one small text file per message
//! that has history (a deferred or already delivered recipient), plus the run lock.
//!
//! Owns: the state file format, atomic writes (tmp + rename, made durable in batches with one
//! `syncfs` for many files), and the `flock` that keeps two relays from sending the same queue.
//! Must not: decide outcomes, send mail or touch `new/`.
//!
//! Format (one record per line, unknown lines ignored):
//! ```text
//! attempts 2
//! next 1795493550
//! error 451 4.3.0 try later
//! rcpt 0 delivered 250 2.0.0 ok
//! rcpt 1 deferred 451 4.3.0 try later
//! warned 1
//! ```
//!
//! `warned 1` (written only when true, so files of older versions read as before and older
//! versions ignore it): the delay warning DSN for this message has been queued.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Name of the hidden state directory inside the Maildir.
pub const STATE_DIR: &str = ".relay";

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    /// Not tried yet.
    Pending,
    /// Tried, failed temporarily; will be retried.
    Deferred,
    /// Accepted by a server (final).
    Delivered,
    /// Refused permanently or expired; a DSN went out (final).
    Bounced,
}

impl RcptState {
    /// Delivered or bounced.
    pub fn is_final(self) -> bool {
        matches!(self, RcptState::Delivered | RcptState::Bounced)
    }

    /// The word used in state files and listings.
    pub fn word(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Deferred => "deferred",
            RcptState::Delivered => "delivered",
            RcptState::Bounced => "bounced",
        }
    }

    fn parse(w: &str) -> Option<RcptState> {
        Some(match w {
            "pending" => RcptState::Pending,
            "deferred" => RcptState::Deferred,
            "delivered" => RcptState::Delivered,
            "bounced" => RcptState::Bounced,
            _ => return None,
        })
    }
}

/// The recorded history of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MsgState {
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest next attempt, seconds since the epoch (0 = now).
    pub next: u64,
    /// Last error text.
    pub error: String,
    /// Per recipient (envelope order): state and last reply.
    pub rcpts: Vec<(RcptState, String)>,
    /// The delay warning DSN has been queued (sent once per message).
    pub warned: bool,
}

impl MsgState {
    /// Parses a state file's text; `n` is the number of envelope recipients.
    pub fn parse(text: &str, n: usize) -> MsgState {
        let mut st = MsgState {
            rcpts: vec![(RcptState::Pending, String::new()); n],
            ..MsgState::default()
        };
        for line in text.lines() {
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "attempts" => st.attempts = rest.trim().parse().unwrap_or(0),
                "next" => st.next = rest.trim().parse().unwrap_or(0),
                "error" => st.error = rest.to_owned(),
                "warned" => st.warned = rest.trim() == "1",
                "rcpt" => {
                    let mut it = rest.splitn(3, ' ');
                    let idx = it.next().and_then(|i| i.parse::<usize>().ok());
                    let state = it.next().and_then(RcptState::parse);
                    if let (Some(i), Some(s)) = (idx, state)
                        && let Some(slot) = st.rcpts.get_mut(i)
                    {
                        *slot = (s, it.next().unwrap_or("").to_owned());
                    }
                }
                _ => {}
            }
        }
        st
    }

    /// The file text.
    pub fn render(&self) -> String {
        let mut s = format!(
            "attempts {}\nnext {}\nerror {}\n",
            self.attempts,
            self.next,
            one_line(&self.error)
        );
        for (i, (state, text)) in self.rcpts.iter().enumerate() {
            s.push_str(&format!("rcpt {i} {} {}\n", state.word(), one_line(text)));
        }
        if self.warned {
            s.push_str("warned 1\n");
        }
        s
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Seconds since the epoch.
pub fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Retry delay after `attempts` failed attempts: 300 s doubling up to 4000 s (Postfix).
pub fn backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(8);
    Duration::from_secs((300u64 << exp).min(4000))
}

/// The state directory of one Maildir.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// The held run lock; released when dropped (the file descriptor closes).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl StateDir {
    /// Opens (creating) `<maildir>/.relay`.
    pub fn open(maildir: &Path) -> io::Result<StateDir> {
        let dir = maildir.join(STATE_DIR);
        fs::create_dir_all(&dir).map_err(|e| ctx(e, "create", &dir))?;
        Ok(StateDir { dir })
    }

    /// Takes the run lock without waiting; `Ok(None)` when another process holds it.
    pub fn try_lock(&self) -> io::Result<Option<Lock>> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| ctx(e, "open", &path))?;
        // SAFETY: flock(2) on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(ctx(e, "lock", &path));
        }
        Ok(Some(Lock { _file: file }))
    }

    /// Names of messages that have a state file.
    pub fn names(&self) -> io::Result<HashSet<String>> {
        let mut set = HashSet::new();
        for e in fs::read_dir(&self.dir).map_err(|e| ctx(e, "read", &self.dir))? {
            let e = e.map_err(|e| ctx(e, "read", &self.dir))?;
            if let Some(n) = e.file_name().to_str()
                && !n.starts_with('.')
                && n != "lock"
                && !n.ends_with(".tmp")
            {
                set.insert(n.to_owned());
            }
        }
        Ok(set)
    }

    /// Reads the state of `name` (n recipients); a missing file is a fresh state.
    pub fn load(&self, name: &str, n: usize) -> io::Result<MsgState> {
        let path = self.dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(MsgState::parse(&text, n)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(MsgState::parse("", n)),
            Err(e) => Err(ctx(e, "read", &path)),
        }
    }

    /// Writes many states durably: every tmp file, one `syncfs`, the renames, one directory
    /// fsync. Returns the names that failed, with why.
    pub fn store_batch(&self, states: &[(String, MsgState)]) -> Vec<(String, io::Error)> {
        let mut failed = Vec::new();
        let mut written = Vec::new();
        for (name, st) in states {
            let tmp = self.dir.join(format!("{name}.tmp"));
            let res = File::create(&tmp).and_then(|mut f| f.write_all(st.render().as_bytes()));
            match res {
                Ok(()) => written.push((name, tmp)),
                Err(e) => failed.push((name.clone(), ctx(e, "write", &tmp))),
            }
        }
        if written.is_empty() {
            return failed;
        }
        if let Err(e) = self.sync_fs() {
            for (name, _) in written {
                failed.push((name.clone(), io::Error::new(e.kind(), e.to_string())));
            }
            return failed;
        }
        for (name, tmp) in written {
            let to = self.dir.join(name);
            if let Err(e) = fs::rename(&tmp, &to) {
                failed.push((name.clone(), ctx(e, "rename", &tmp)));
            }
        }
        if let Err(e) = fsync_dir(&self.dir) {
            log::warn!("{e}");
        }
        failed
    }

    /// Removes the state of finished messages (made durable by the caller's directory fsync).
    pub fn remove(&self, name: &str) {
        let path = self.dir.join(name);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("cannot remove {}: {e}", path.display());
        }
    }

    /// fsync of the state directory itself.
    pub fn sync_dir(&self) -> io::Result<()> {
        fsync_dir(&self.dir)
    }

    fn sync_fs(&self) -> io::Result<()> {
        let f = File::open(&self.dir).map_err(|e| ctx(e, "open", &self.dir))?;
        // SAFETY: syncfs(2) on a descriptor we own.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(ctx(io::Error::last_os_error(), "syncfs", &self.dir));
        }
        Ok(())
    }
}

/// fsync of a directory, so renames and removals in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| ctx(e, "fsync", dir))
}

fn ctx(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {op} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tolerance() {
        let st = MsgState {
            attempts: 2,
            next: 1234,
            error: "451 later\r\nx".into(),
            rcpts: vec![
                (RcptState::Delivered, "250 ok".into()),
                (RcptState::Deferred, "451 4.3.0 try later".into()),
            ],
            warned: false,
        };
        let back = MsgState::parse(&st.render(), 2);
        assert_eq!(back.rcpts, st.rcpts);
        assert_eq!(back.error, "451 later  x");
        let junk = MsgState::parse("garbage\nrcpt 9 delivered\nrcpt 0 bogus\n", 1);
        assert_eq!(junk.rcpts, vec![(RcptState::Pending, String::new())]);
        assert!(!back.warned && !st.render().contains("warned"));
        // The delay warning flag: written only when set, read back; old files read as unset.
        let warned = MsgState {
            warned: true,
            ..st.clone()
        };
        assert!(warned.render().ends_with("warned 1\n"));
        assert!(MsgState::parse(&warned.render(), 2).warned);
        let old = "attempts 3\nnext 5\nerror x\nrcpt 0 deferred 451 x\n";
        assert_eq!(
            MsgState::parse(old, 1),
            MsgState {
                attempts: 3,
                next: 5,
                error: "x".into(),
                rcpts: vec![(RcptState::Deferred, "451 x".into())],
                warned: false,
            }
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1).as_secs(), 300);
        assert_eq!(backoff(2).as_secs(), 600);
        assert_eq!(backoff(4).as_secs(), 2400);
        assert_eq!(backoff(5).as_secs(), 4000);
        assert_eq!(backoff(50).as_secs(), 4000);
    }

    #[test]
    fn store_load_lock() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path()).unwrap();
        let st = MsgState::parse("attempts 1\nrcpt 0 deferred 451 x\n", 1);
        assert!(sd.store_batch(&[("m1".into(), st.clone())]).is_empty());
        assert_eq!(sd.load("m1", 1).unwrap(), st);
        assert!(sd.names().unwrap().contains("m1"));
        let l = sd.try_lock().unwrap();
        assert!(l.is_some());
        // flock locks belong to the open file description: a second open conflicts.
        assert!(sd.try_lock().unwrap().is_none());
        drop(l);
        assert!(sd.try_lock().unwrap().is_some());
    }
}
