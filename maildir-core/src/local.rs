//! Local delivery: copies of a spooled message into users' Maildirs (`<mailboxes>/<user>`), and
//! the per-user size count that quotas are checked against.
//!
//! A user's copy is an ordinary mail file, never the queue envelope:
//! `Return-Path: <sender>`, `Delivered-To: user@domain`, `X-Original-To: original@address`, then
//! the spooled content after the envelope (the `Received:` header and the message). So a copy
//! names its own recipient only (Bcc privacy). [`Mailboxes::write_copies`] streams the content
//! once into every copy and refuses the message when its header section already carries
//! `Delivered-To:` for one of the users (a loop, 554 5.4.6). Copies are never hard links of one
//! another: each names its own user in `Delivered-To:`, so their bytes differ.
//!
//! # Crash safety (SIGKILL at any instant)
//! Copies are written into each user's `tmp/` only. Each is fdatasync'd ([`Delivery::sync`]),
//! and only then renamed into `new/` ([`crate::maildir::publish_all`], one fsync per `new/`
//! directory), in the same group commit as the queue file; `250` follows that. A kill before a
//! rename leaves a file in `tmp/` only (readers never look there; it is removed as stale after
//! 36 hours); a rename is atomic, so `new/` holds whole files or nothing; a kill between the
//! renames of one message's copies leaves some users with the message and no `250`, so the
//! client sends it again: a duplicate, never a loss. A user's Maildir created on first delivery
//! (mode 0700) has its directory entries fsync'd before any copy is written into it.
//!
//! # Quota count
//! [`Mailboxes::usage`] counts the octets in `new/` and `cur/`: from the `,S=<size>` in file
//! names (smtpd and Dovecot both write it), `stat` for names without it. The count is cached
//! per user and raised by [`Mailboxes::add_usage`] after each delivery, so checking a quota is
//! a map look-up; it is recounted when older than [`USAGE_RECOUNT`] so that deletions by a
//! reader (Dovecot expunges) are seen within that delay. The rule applied to the count (under
//! quota, and at most a grace past it with the message) is smtpd's `quota` module's; this
//! module only counts.
//!
//! This module owns files under the mailboxes root. It does not decide who gets a copy
//! ([`crate::directory`]) or when the commit runs (the server's group commit).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::address::ReversePath;
use crate::directory::DeliveredTo;
pub use crate::directory::LocalCopy;
use crate::envelope::{Envelope, EnvelopeError, EnvelopeReader};
use crate::maildir::{self, Delivered, Delivery, Durability, Maildir, MaildirError};

/// How long a cached usage count is trusted before it is counted again from the directories.
pub const USAGE_RECOUNT: Duration = Duration::from_secs(60);

/// A copy written into a user's `tmp/`, not yet durable nor in `new/`.
#[derive(Debug)]
pub struct WrittenCopy {
    /// Whose copy it is.
    pub copy: LocalCopy,
    /// The file, ready for [`Delivery::sync`] and [`maildir::publish_all`] (or
    /// [`Delivery::commit`]). Dropping it removes the tmp file.
    pub delivery: Delivery,
}

/// Why local delivery failed.
#[derive(Debug)]
pub enum LocalError {
    /// Creating or writing a user's Maildir failed.
    Maildir(MaildirError),
    /// Reading the spooled message failed.
    Read(io::Error),
    /// The spool file's envelope could not be read.
    Envelope(EnvelopeError),
    /// The message already carries `Delivered-To:` for this address: a mail loop (554 5.4.6).
    Loop {
        /// The address found.
        address: String,
    },
}

impl LocalError {
    /// True for a full disk or exhausted file-system quota (a temporary failure, 452).
    pub fn is_storage_full(&self) -> bool {
        match self {
            LocalError::Maildir(e) => e.is_storage_full(),
            LocalError::Read(e) => maildir::storage_full(e),
            _ => false,
        }
    }
}

impl fmt::Display for LocalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalError::Maildir(e) => e.fmt(f),
            LocalError::Read(e) => write!(f, "cannot read the spooled message: {e}"),
            LocalError::Envelope(e) => write!(f, "cannot read the spool envelope: {e}"),
            LocalError::Loop { address } => {
                write!(
                    f,
                    "mail loop: already delivered to {address} (Delivered-To)"
                )
            }
        }
    }
}

impl std::error::Error for LocalError {}

impl From<MaildirError> for LocalError {
    fn from(e: MaildirError) -> Self {
        LocalError::Maildir(e)
    }
}

/// Opens a spooled queue file and returns its envelope and a reader over what follows it (the
/// `Received:` header and the message): the `content` for [`Mailboxes::write_copies`].
pub fn open_spool(path: &Path) -> Result<(Envelope, EnvelopeReader<File>), LocalError> {
    let f = File::open(path).map_err(LocalError::Read)?;
    EnvelopeReader::open(f).map_err(|e| match e {
        EnvelopeError::Io(e) => LocalError::Read(e),
        other => LocalError::Envelope(other),
    })
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    bytes: u64,
    counted_at: SystemTime,
}

/// The root of the per-user Maildirs, with the Maildirs opened so far and the usage counts.
/// Shared by reference between threads (smtpd's group-commit threads write copies, the
/// reactor's quota check reads [`Mailboxes::cached_usage`]): the maps are behind mutexes held
/// for a look-up, never across a write.
#[derive(Debug)]
pub struct Mailboxes {
    root: PathBuf,
    open: Mutex<HashMap<String, Maildir>>,
    usage: Mutex<HashMap<String, Usage>>,
}

/// Locks a mutex, taking the data of a poisoned one (the maps stay consistent: every update
/// is one insert).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Mailboxes {
    /// Opens (creating, mode 0700) the mailboxes root. Users' Maildirs are created on first
    /// delivery.
    pub fn open(root: impl AsRef<Path>) -> Result<Mailboxes, MaildirError> {
        let root = root.as_ref().to_path_buf();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| err("create directory", &root, e))?;
        if !root.is_dir() {
            return Err(err(
                "use",
                &root,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        Ok(Mailboxes {
            root,
            open: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
        })
    }

    /// The mailboxes root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `user`'s Maildir is (whether or not it exists yet).
    pub fn path(&self, user: &str) -> PathBuf {
        self.root.join(user)
    }

    /// `user`'s Maildir, created (mode 0700, directory entries made durable) if missing.
    pub fn maildir(&self, user: &str) -> Result<Maildir, MaildirError> {
        let mut open = lock(&self.open);
        if let Some(md) = open.get(user) {
            return Ok(md.clone());
        }
        if user.is_empty() || user.starts_with('.') || user.contains(['/', '\0']) {
            // Names come checked from the users file; this keeps any other caller inside
            // the mailboxes root.
            return Err(err(
                "use",
                &self.root,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad user name {user:?}"),
                ),
            ));
        }
        let path = self.path(user);
        let existed = path.join("new").is_dir();
        let md = Maildir::open(&path)?;
        if !existed {
            // The new directories must survive a crash before a 250 names mail in them.
            for dir in [&path, &self.root] {
                maildir::fsync_dir(dir)?;
            }
        }
        open.insert(user.to_owned(), md.clone());
        Ok(md)
    }

    /// Writes one copy per entry of `copies` into the users' `tmp/`: the three delivery header
    /// lines, then `content` streamed once into all of them. Nothing is durable or in `new/`
    /// yet; on any error every copy is removed.
    pub fn write_copies(
        &self,
        sender: &ReversePath,
        copies: &[LocalCopy],
        content: &mut dyn Read,
    ) -> Result<Vec<WrittenCopy>, LocalError> {
        let mut written: Vec<WrittenCopy> = Vec::with_capacity(copies.len());
        for c in copies {
            let mut delivery = self.maildir(&c.user)?.deliver()?;
            let head = crate::directory::copy_header(sender, c);
            delivery
                .write_all(head.as_bytes())
                .map_err(|e| write_error(&delivery, e))?;
            written.push(WrittenCopy {
                copy: c.clone(),
                delivery,
            });
        }
        let mut scan = DeliveredTo::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LocalError::Read(e)),
            };
            if !scan.header_done() {
                scan.feed(&buf[..n]);
                if let Some(w) = written.iter().find(|w| scan.contains(&w.copy.delivered_to)) {
                    return Err(LocalError::Loop {
                        address: w.copy.delivered_to.clone(),
                    });
                }
            }
            for w in &mut written {
                w.delivery
                    .write_all(&buf[..n])
                    .map_err(|e| write_error(&w.delivery, e))?;
            }
        }
        Ok(written)
    }

    /// Writes, syncs and publishes the copies at once (one fsync per `new/`), counting them
    /// towards each user's usage: local delivery outside a group commit (tests, tools).
    pub fn deliver_now(
        &self,
        sender: &ReversePath,
        copies: &[LocalCopy],
        content: &mut dyn Read,
        durability: Durability,
    ) -> Result<Vec<Delivered>, LocalError> {
        let written = self.write_copies(sender, copies, content)?;
        let users: Vec<String> = written.iter().map(|w| w.copy.user.clone()).collect();
        let results = if durability == Durability::NoFsync {
            written
                .into_iter()
                .map(|w| w.delivery.commit(Durability::NoFsync))
                .collect()
        } else {
            let mut synced = Vec::with_capacity(written.len());
            for w in written {
                synced.push(w.delivery.sync()?);
            }
            maildir::publish_all(synced)
        };
        let mut out = Vec::with_capacity(results.len());
        for (user, r) in users.iter().zip(results) {
            let d = r?;
            self.add_usage(user, d.size);
            out.push(d);
        }
        Ok(out)
    }

    /// Octets in `user`'s `new/` and `cur/`, from the cache when it is younger than
    /// [`USAGE_RECOUNT`] at `now`, else counted again. A user without a Maildir uses 0.
    pub fn usage(&self, user: &str, now: SystemTime) -> Result<u64, MaildirError> {
        if let Some(u) = lock(&self.usage).get(user)
            && now
                .duration_since(u.counted_at)
                .is_ok_and(|age| age < USAGE_RECOUNT)
        {
            return Ok(u.bytes);
        }
        self.recount(user, now)
    }

    /// Counts `user`'s usage again now, whatever the cache's age (after a reader removed
    /// messages); the count is cached.
    pub fn recount(&self, user: &str, now: SystemTime) -> Result<u64, MaildirError> {
        let bytes = count_usage(&self.path(user))?;
        lock(&self.usage).insert(
            user.to_owned(),
            Usage {
                bytes,
                counted_at: now,
            },
        );
        Ok(bytes)
    }

    /// The cached usage of `user`, if counted before (no I/O: for the reactor thread).
    pub fn cached_usage(&self, user: &str) -> Option<u64> {
        lock(&self.usage).get(user).map(|u| u.bytes)
    }

    /// The users whose usage is cached, for a periodic recount.
    pub fn counted_users(&self) -> Vec<String> {
        lock(&self.usage).keys().cloned().collect()
    }

    /// Counts `bytes` just delivered to `user` (keeps the cache current between recounts).
    pub fn add_usage(&self, user: &str, bytes: u64) {
        if let Some(u) = lock(&self.usage).get_mut(user) {
            u.bytes = u.bytes.saturating_add(bytes);
        }
    }

    /// True when `user` already holds `limit` octets or more at `now` (then 452 4.2.2).
    pub fn over_quota(
        &self,
        user: &str,
        limit: u64,
        now: SystemTime,
    ) -> Result<bool, MaildirError> {
        Ok(self.usage(user, now)? >= limit)
    }
}

fn err(op: &'static str, path: &Path, e: io::Error) -> MaildirError {
    MaildirError {
        op,
        path: path.to_path_buf(),
        source: e,
    }
}

fn write_error(d: &Delivery, e: io::Error) -> LocalError {
    LocalError::Maildir(err("write", Path::new(d.id()), e))
}

/// Octets of the files in `<maildir>/new` and `<maildir>/cur`.
fn count_usage(maildir: &Path) -> Result<u64, MaildirError> {
    let mut total = 0u64;
    for sub in ["new", "cur"] {
        let dir = maildir.join(sub);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err("read", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| err("read", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let size = match size_from_name(&name) {
                Some(s) => s,
                // Gone since the listing (expunged): it no longer counts.
                None => entry.metadata().map(|m| m.len()).unwrap_or(0),
            };
            total = total.saturating_add(size);
        }
    }
    Ok(total)
}

/// The `S=<size>` field of a Maildir file name (`base,S=123,W=130:2,S`), if any.
fn size_from_name(name: &str) -> Option<u64> {
    let base = name.split(":2,").next().unwrap_or(name);
    base.split(',')
        .skip(1)
        .find_map(|f| f.strip_prefix("S="))
        .and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::ForwardPath;
    use std::os::unix::fs::PermissionsExt;

    fn copy(user: &str, to: &str, orig: &str) -> LocalCopy {
        LocalCopy {
            user: user.into(),
            delivered_to: to.into(),
            original_to: orig.into(),
        }
    }

    const CONTENT: &[u8] =
        b"Received: from c (unknown [127.0.0.1])\r\n\tby h with ESMTP id X;\r\n\tdate\r\nSubject: hi\r\n\r\nbody\r\n";

    fn spool(dir: &Path) -> PathBuf {
        let env = Envelope::new(
            ReversePath::parse("<s@far.test>").unwrap(),
            vec![
                ForwardPath::parse("<sales@example.test>").unwrap(),
                ForwardPath::parse("<secret-bcc@example.test>").unwrap(),
            ],
        );
        let path = dir.join("spooled");
        let mut bytes = env.to_bytes();
        bytes.extend_from_slice(CONTENT);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn read_new(md: &Path) -> Vec<Vec<u8>> {
        let mut v: Vec<_> = fs::read_dir(md.join("new"))
            .unwrap()
            .map(|e| fs::read(e.unwrap().path()).unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn copies_carry_their_own_recipient_only() {
        let t = tempfile::tempdir().unwrap();
        let mb = Mailboxes::open(t.path().join("mailboxes")).unwrap();
        let (env, mut rest) = open_spool(&spool(t.path())).unwrap();
        let copies = [
            copy("bob", "bob@example.test", "sales@example.test"),
            copy("alice", "alice@example.test", "secret-bcc@example.test"),
        ];
        let done = mb
            .deliver_now(&env.sender, &copies, &mut rest, Durability::Fsync)
            .unwrap();
        assert_eq!(done.len(), 2);
        for (user, orig) in [("bob", "sales"), ("alice", "secret-bcc")] {
            let md = t.path().join("mailboxes").join(user);
            let files = read_new(&md);
            assert_eq!(files.len(), 1);
            let mut want = format!(
                "Return-Path: <s@far.test>\r\nDelivered-To: {user}@example.test\r\nX-Original-To: {orig}@example.test\r\n"
            )
            .into_bytes();
            want.extend_from_slice(CONTENT);
            assert_eq!(files[0], want);
            let text = String::from_utf8_lossy(&files[0]).to_string();
            let other = if user == "bob" { "secret-bcc" } else { "sales" };
            assert!(!text.contains(other), "{user}'s copy names {other}");
            assert!(fs::read_dir(md.join("tmp")).unwrap().next().is_none());
            for d in [md.clone(), md.join("new"), md.join("cur"), md.join("tmp")] {
                let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o700, "{}", d.display());
            }
        }
        let root_mode = fs::metadata(t.path().join("mailboxes"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(root_mode & 0o777, 0o700);
    }

    #[test]
    fn written_copies_are_invisible_until_published() {
        let t = tempfile::tempdir().unwrap();
        let mb = Mailboxes::open(t.path()).unwrap();
        let sender = ReversePath::Null;
        let mut content: &[u8] = CONTENT;
        let written = mb
            .write_copies(
                &sender,
                &[copy("alice", "alice@x.test", "alice@x.test")],
                &mut content,
            )
            .unwrap();
        assert!(read_new(&t.path().join("alice")).is_empty());
        assert_eq!(fs::read_dir(t.path().join("alice/tmp")).unwrap().count(), 1);
        // A "kill" before the commit: dropping removes the tmp file, nothing reached new/.
        drop(written);
        assert_eq!(fs::read_dir(t.path().join("alice/tmp")).unwrap().count(), 0);
        let mut content: &[u8] = CONTENT;
        let written = mb
            .write_copies(
                &sender,
                &[copy("alice", "alice@x.test", "alice@x.test")],
                &mut content,
            )
            .unwrap();
        let synced: Vec<_> = written
            .into_iter()
            .map(|w| w.delivery.sync().unwrap())
            .collect();
        let published = maildir::publish_all(synced);
        assert!(published.iter().all(Result::is_ok));
        let files = read_new(&t.path().join("alice"));
        assert!(files[0].starts_with(b"Return-Path: <>\r\nDelivered-To: alice@x.test\r\n"));
    }

    #[test]
    fn delivered_to_for_a_recipient_is_a_loop() {
        let t = tempfile::tempdir().unwrap();
        let mb = Mailboxes::open(t.path()).unwrap();
        let msg = b"Received: x\r\nDelivered-To: Alice@Example.Test\r\n\r\nDelivered-To: bob@example.test\r\n";
        let mut content: &[u8] = msg;
        let e = mb
            .deliver_now(
                &ReversePath::Null,
                &[
                    copy("bob", "bob@example.test", "bob@example.test"),
                    copy("alice", "alice@example.test", "alice@example.test"),
                ],
                &mut content,
                Durability::Fsync,
            )
            .unwrap_err();
        assert!(matches!(&e, LocalError::Loop { address } if address == "alice@example.test"));
        for u in ["alice", "bob"] {
            assert!(read_new(&t.path().join(u)).is_empty());
            assert_eq!(
                fs::read_dir(t.path().join(u).join("tmp")).unwrap().count(),
                0
            );
        }
        // Delivered-To in the body, or for someone else, is no loop.
        let mut content: &[u8] = msg;
        mb.deliver_now(
            &ReversePath::Null,
            &[copy("bob", "bob@example.test", "bob@example.test")],
            &mut content,
            Durability::NoFsync,
        )
        .unwrap();
        assert_eq!(read_new(&t.path().join("bob")).len(), 1);
    }

    #[test]
    fn usage_counts_names_and_follows_deliveries() {
        let t = tempfile::tempdir().unwrap();
        let mb = Mailboxes::open(t.path()).unwrap();
        let now = SystemTime::now();
        assert_eq!(mb.usage("alice", now).unwrap(), 0);
        assert_eq!(mb.cached_usage("alice"), Some(0));
        let md = mb.maildir("alice").unwrap();
        fs::write(md.cur_dir().join("1.M1P1.h,S=1000,W=1020:2,S"), b"x").unwrap();
        fs::write(md.new_dir().join("2.no-size"), b"12345").unwrap();
        // Cached until the recount delay passes.
        assert_eq!(mb.usage("alice", now).unwrap(), 0);
        let later = now + USAGE_RECOUNT;
        assert_eq!(mb.usage("alice", later).unwrap(), 1005);
        let mut content: &[u8] = CONTENT;
        let d = mb
            .deliver_now(
                &ReversePath::Null,
                &[copy("alice", "alice@x.test", "alice@x.test")],
                &mut content,
                Durability::Fsync,
            )
            .unwrap();
        assert_eq!(mb.usage("alice", later).unwrap(), 1005 + d[0].size);
        assert!(mb.over_quota("alice", 1005, later).unwrap());
        assert!(!mb.over_quota("alice", 1_000_000, later).unwrap());
        // The recount agrees with the running count.
        let much_later = later + USAGE_RECOUNT;
        assert_eq!(mb.usage("alice", much_later).unwrap(), 1005 + d[0].size);
        // A reader removed a message: a recount sees it at once, whatever the cache's age.
        fs::remove_file(md.cur_dir().join("1.M1P1.h,S=1000,W=1020:2,S")).unwrap();
        assert_eq!(mb.usage("alice", much_later).unwrap(), 1005 + d[0].size);
        assert_eq!(mb.recount("alice", much_later).unwrap(), 5 + d[0].size);
        assert_eq!(mb.cached_usage("alice"), Some(5 + d[0].size));
    }

    #[test]
    fn user_names_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let mb = Mailboxes::open(t.path().join("m")).unwrap();
        for bad in ["", "..", "../x", "a/b", ".hidden"] {
            assert!(mb.maildir(bad).is_err(), "{bad:?}");
        }
        assert!(!t.path().join("x").exists());
    }

    #[test]
    fn size_in_names() {
        assert_eq!(size_from_name("1.M2P3Q4.h,S=42"), Some(42));
        assert_eq!(size_from_name("1.M2P3.h,S=42,W=50:2,RS"), Some(42));
        assert_eq!(size_from_name("1.M2P3.h:2,S"), None);
        assert_eq!(size_from_name("1.M2P3.h,S=x"), None);
    }
}
