//! Queue files and local copies: carries out a session's `Begin`, `Write`, `Commit` and `Abort`
//! actions on the Maildir, the users' Maildirs and the group commit, and turns every failure
//! into the [`StoreError`] the session answers with (`452 4.3.1` for a full disk or quota,
//! `451 4.3.0` otherwise).
//!
//! The message is spooled into a queue file in the relay Maildir's `tmp/` as it arrives. A
//! commit with local recipients ([`LocalDelivery`]) writes each user's copy from that spool on
//! a sync thread, syncs the copies and (when the message also goes to remote or forwarded
//! recipients, which its envelope lists) the queue file, and publishes them all in one batch
//! before the single `250`. With no remote recipient there is no queue file: the spool, which
//! the session then started with the first user's header lines instead of an envelope, is that
//! user's copy and is renamed into the user's `new/` (queue and mailboxes on one file system,
//! checked at start; otherwise it is written as a copy like the others and the spool removed).
//! A message whose `250` was sent is in every recipient's Maildir and in the queue.
//!
//! Owns: each connection's open queue file ([`QueueFile`]), the users' Maildirs
//! ([`Mailboxes`]), the classification of Maildir and write errors, the choice between the
//! group commit ([`crate::commit`]) and an unsynced rename (`--no-fsync`), and the count of
//! commits in flight.
//! Must not: touch a socket, decide a reply (the session does, from the [`StoreError`]), or
//! wait on a flush to disk (the group-commit threads do).

use std::fs::File;
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::sync::Arc;

use crossbeam_channel::Sender;
use maildir_core::directory::LocalDelivery;
use maildir_core::local::{LocalError, Mailboxes, WrittenCopy};
use maildir_core::maildir::Synced;
use maildir_core::{Delivery, Durability, Maildir, MaildirError};

use crate::commit::{Committer, Done, Settings, Tag, local_delivered};
use net::ConnRef;
use proto::smtp::server::session::StoreError;

/// One connection's queue file: the message being written, or the first write failure, which
/// is reported when the session commits.
///
/// The file's first write (the envelope and `Received:` header, which the session hands out
/// as soon as the file exists) is held until the next one, and both go out in one `writev`:
/// a message that arrives in one read costs one write instead of two.
#[derive(Default)]
pub struct QueueFile {
    delivery: Option<Delivery>,
    first: First,
    failed: Option<StoreError>,
}

/// Where the file's first write is.
#[derive(Default)]
enum First {
    /// Not come yet.
    #[default]
    Awaited,
    /// Here, to go out with the next one.
    Held(Vec<u8>),
    /// In the file.
    Written,
}

impl QueueFile {
    /// Appends message bytes (`Action::Write`). After a failure the rest is dropped and the
    /// failure kept for the commit.
    pub fn write(&mut self, bytes: Vec<u8>) {
        if self.delivery.is_none() || self.failed.is_some() {
            return;
        }
        match std::mem::replace(&mut self.first, First::Written) {
            First::Awaited => self.first = First::Held(bytes),
            First::Held(head) => self.write_out(&head, &bytes),
            First::Written => self.write_out(&bytes, &[]),
        }
    }

    /// Writes `bytes`, then `more`.
    fn write_out(&mut self, bytes: &[u8], more: &[u8]) {
        if let Some(d) = &mut self.delivery
            && let Err(e) = write_all_pair(d, bytes, more)
        {
            log::error!("cannot write queue file {}: {e}", d.id());
            self.failed = Some(io_store_error(&e));
        }
    }

    /// Drops the file being written, if any (`Action::Abort`); its `tmp/` file is removed.
    pub fn abort(&mut self) {
        self.delivery.take();
        self.reset();
    }

    /// Ready for the next file.
    fn reset(&mut self) {
        self.first = First::Awaited;
        self.failed = None;
    }

    /// Creates the file in `maildir`'s `tmp/` (`Action::Begin` without a [`Store`]: `sendmail`,
    /// one message per process); returns its queue ID.
    pub fn begin_in(&mut self, maildir: &Maildir) -> Result<String, StoreError> {
        match maildir.deliver() {
            Ok(d) => {
                let id = d.id().to_owned();
                self.delivery = Some(d);
                self.reset();
                Ok(id)
            }
            Err(e) => {
                log::error!("{e}");
                Err(store_error(&e))
            }
        }
    }

    /// Commits the finished file at once, durably (fsync the file, rename into `new/`, fsync
    /// `new/`), on the calling thread: `sendmail`'s `Action::Commit`, with no group commit to
    /// share the flush with.
    pub fn commit_now(&mut self) -> Result<(), StoreError> {
        let delivery = self.finish()?;
        delivery.commit(Durability::Fsync).map(|_| ()).map_err(|e| {
            log::error!("{e}");
            store_error(&e)
        })
    }

    /// The finished file (what was held written), or why it cannot be committed.
    fn finish(&mut self) -> Result<Delivery, StoreError> {
        if let First::Held(head) = std::mem::take(&mut self.first)
            && self.failed.is_none()
        {
            self.write_out(&head, &[]);
        }
        let failed = self.failed;
        self.reset();
        match (self.delivery.take(), failed) {
            (Some(d), None) => Ok(d),
            (_, failed) => Err(failed.unwrap_or(StoreError::Failed)),
        }
    }
}

/// Writes `a` then `b` with as few `writev` calls as the file takes.
fn write_all_pair(w: &mut impl Write, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let mut slices = [IoSlice::new(a), IoSlice::new(b)];
    let mut rest = &mut slices[..];
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match w.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What became of a `Commit`.
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    /// Handed to the group commit: the outcome arrives later as a [`Done`].
    Pending,
    /// Decided now (no fsync asked for, or a failure): answer the session at once.
    Done(Result<(), StoreError>),
}

/// The Maildir and the group commit, shared by every connection.
pub struct Store {
    maildir: Maildir,
    mailboxes: Option<Arc<Mailboxes>>,
    committer: Option<Committer>,
    in_flight: usize,
}

impl Store {
    /// Opens the store: the queue Maildir and, for local delivery, the users' Maildirs. With
    /// [`Durability::Fsync`] the group-commit threads start as `commit` says; their results
    /// arrive on `done`, and `waker` is woken after each batch.
    pub fn new(
        maildir: Maildir,
        mailboxes: Option<Arc<Mailboxes>>,
        durability: Durability,
        commit: Settings,
        done: Sender<Done>,
        waker: Arc<mio::Waker>,
    ) -> std::io::Result<Store> {
        let committer = match durability {
            Durability::Fsync => Some(Committer::spawn(commit, mailboxes.clone(), done, waker)?),
            Durability::NoFsync => None,
        };
        Ok(Store {
            maildir,
            mailboxes,
            committer,
            in_flight: 0,
        })
    }

    /// Creates a queue file in `tmp/` (`Action::Begin`); returns its queue ID.
    pub fn begin(&self, file: &mut QueueFile) -> Result<String, StoreError> {
        file.begin_in(&self.maildir)
    }

    /// Commits the finished file (`Action::Commit`) for connection `conn`: as a queue file, or,
    /// with `local`, as the spool of the users' copies (and the queue file if `local.queue`).
    pub fn commit(
        &mut self,
        file: &mut QueueFile,
        conn: ConnRef,
        local: Option<LocalDelivery>,
    ) -> Commit {
        let delivery = match file.finish() {
            Ok(d) => d,
            Err(e) => return Commit::Done(Err(e)),
        };
        let Some(local) = local else {
            return match &self.committer {
                Some(c) => self.pending(c.submit(conn, delivery)),
                None => Commit::Done(delivery.commit(Durability::NoFsync).map(|_| ()).map_err(
                    |e| {
                        log::error!("{e}");
                        store_error(&e)
                    },
                )),
            };
        };
        let Some(mailboxes) = self.mailboxes.clone() else {
            log::error!("{}: local recipients but no --mailboxes", delivery.id());
            return Commit::Done(Err(StoreError::Failed));
        };
        let tag = Tag {
            conn,
            id: delivery.id().to_owned(),
            copies: local.copies.clone(),
            submitted: std::time::Instant::now(),
        };
        match &self.committer {
            Some(c) => {
                let queued = c.submit_prepared(
                    tag,
                    Box::new(move || prepare_local(&mailboxes, delivery, &local)),
                );
                self.pending(queued)
            }
            // --no-fsync: written and renamed here, on the reactor thread (benchmarks only).
            None => Commit::Done(
                write_local(&mailboxes, delivery, &local)
                    .map_err(|e| local_error(&tag.id, &e))
                    .and_then(|(written, queue)| {
                        let mut files = Vec::new();
                        for d in written {
                            files.push(d.commit(Durability::NoFsync));
                        }
                        if let Some(q) = queue {
                            files.push(q.commit(Durability::NoFsync));
                        }
                        let files =
                            files
                                .into_iter()
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(|e| {
                                    log::error!("{e}");
                                    store_error(&e)
                                })?;
                        local_delivered(&tag, &files, Some(&mailboxes));
                        Ok(())
                    }),
            ),
        }
    }

    fn pending(&mut self, queued: bool) -> Commit {
        if queued {
            self.in_flight += 1;
            Commit::Pending
        } else {
            log::error!("group commit thread is gone");
            Commit::Done(Err(StoreError::Failed))
        }
    }

    /// A [`Commit::Pending`] commit has reported its [`Done`].
    pub fn completed(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Commits handed to the group commit and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// Writes the users' copies from the spool `delivery` (content from `local.content_at`) into
/// their `tmp/`; returns the copies in plan order (the spool first when it is itself the first
/// copy), and the spool when it is also the queue file. Otherwise the spool is dropped, which
/// removes it.
fn write_local(
    mailboxes: &Mailboxes,
    mut delivery: Delivery,
    local: &LocalDelivery,
) -> Result<(Vec<Delivery>, Option<Delivery>), LocalError> {
    let (first, rest) = match (local.spool_is_copy, local.copies.split_first()) {
        (true, Some((first, rest))) => (Some(first), rest),
        _ => (None, &local.copies[..]),
    };
    let written = if rest.is_empty() {
        Vec::new()
    } else {
        let mut spool = File::open(delivery.tmp_path()).map_err(LocalError::Read)?;
        spool
            .seek(SeekFrom::Start(local.content_at))
            .map_err(LocalError::Read)?;
        mailboxes.write_copies(&local.sender, rest, &mut spool)?
    };
    let mut copies = Vec::with_capacity(local.copies.len());
    if let Some(first) = first {
        delivery.publish_into(&mailboxes.maildir(&first.user)?);
        copies.push(delivery);
        copies.extend(written.into_iter().map(|w: WrittenCopy| w.delivery));
        return Ok((copies, None));
    }
    copies.extend(written.into_iter().map(|w| w.delivery));
    Ok((copies, local.queue.then_some(delivery)))
}

/// The group commit's work for a message with local recipients (on a sync thread): the copies
/// written and synced, then the queue file synced; copies first, in plan order (the committer
/// logs them by position).
fn prepare_local(
    mailboxes: &Mailboxes,
    delivery: Delivery,
    local: &LocalDelivery,
) -> Result<Vec<Synced>, MaildirError> {
    let spool = delivery.tmp_path().to_owned();
    let (written, queue) = write_local(mailboxes, delivery, local).map_err(|e| match e {
        LocalError::Maildir(e) => e,
        LocalError::Read(e) => MaildirError {
            op: "read",
            path: spool.clone(),
            source: e,
        },
        other => MaildirError {
            op: "deliver",
            path: spool.clone(),
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    let mut synced = Vec::with_capacity(written.len() + 1);
    for d in written {
        synced.push(d.sync()?);
    }
    if let Some(q) = queue {
        synced.push(q.sync()?);
    }
    Ok(synced)
}

/// Logs a local delivery failure and classifies it for the reply.
fn local_error(id: &str, e: &LocalError) -> StoreError {
    log::error!("{id}: local delivery failed: {e}");
    full_or_failed(e.is_storage_full())
}

/// Classifies a Maildir failure for the reply: full disk or quota is `452 4.3.1`, anything
/// else `451 4.3.0`.
pub fn store_error(e: &MaildirError) -> StoreError {
    full_or_failed(e.is_storage_full())
}

/// The store error for a failed write to a queue file: out of space or over quota is
/// temporary and answered `452 4.3.1`, anything else `451 4.3.0`.
pub fn io_store_error(e: &std::io::Error) -> StoreError {
    full_or_failed(maildir_core::maildir::storage_full(e))
}

/// Out of space or over quota is [`StoreError::Full`], anything else [`StoreError::Failed`].
fn full_or_failed(full: bool) -> StoreError {
    if full {
        StoreError::Full
    } else {
        StoreError::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::MAX_BATCH;
    use maildir_core::commit::SyncMode;
    use std::path::PathBuf;
    use std::time::Duration;

    /// A Maildir in a fresh directory under the system temporary directory, removed on drop.
    struct TempMaildir(PathBuf);

    impl TempMaildir {
        fn new(name: &str) -> (TempMaildir, Maildir) {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir()
                .join(format!("smtpd-store-{name}-{}-{nanos}", std::process::id()));
            let md = Maildir::open(&dir).expect("open test Maildir");
            (TempMaildir(dir), md)
        }

        fn count(&self, sub: &str) -> usize {
            std::fs::read_dir(self.0.join(sub)).map_or(0, |d| d.count())
        }
    }

    impl Drop for TempMaildir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn store(md: Maildir, durability: Durability) -> (Store, crossbeam_channel::Receiver<Done>) {
        store_with(md, durability, SyncMode::File)
    }

    fn store_with(
        md: Maildir,
        durability: Durability,
        mode: SyncMode,
    ) -> (Store, crossbeam_channel::Receiver<Done>) {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (tx, rx) = crossbeam_channel::unbounded();
        let settings = Settings {
            threads: 2,
            max_batch: MAX_BATCH,
            mode,
        };
        let store = Store::new(md, None, durability, settings, tx, waker).expect("store");
        (store, rx)
    }

    const CONN: ConnRef = ConnRef {
        key: 7,
        generation: 3,
    };

    /// Issue 10 item 17: a quota error while DATA streams is "full" (452), as ENOSPC is.
    #[test]
    fn quota_and_no_space_are_full() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(io_store_error(&e(libc::EDQUOT)), StoreError::Full);
        assert_eq!(io_store_error(&e(libc::ENOSPC)), StoreError::Full);
        assert_eq!(io_store_error(&e(libc::EIO)), StoreError::Failed);
        assert_eq!(
            io_store_error(&std::io::Error::other("x")),
            StoreError::Failed
        );
    }

    /// Without fsync the commit is decided at once and the message is in `new/`.
    #[test]
    fn begin_write_commit_without_fsync() {
        let (dir, md) = TempMaildir::new("nofsync");
        let (mut store, _rx) = store(md, Durability::NoFsync);
        let mut file = QueueFile::default();
        let id = store.begin(&mut file).expect("begin");
        assert!(!id.is_empty());
        file.write(b"Subject: x\r\n\r\nbody\r\n".to_vec());
        assert_eq!(store.commit(&mut file, CONN, None), Commit::Done(Ok(())));
        assert_eq!(store.in_flight(), 0);
        assert_eq!((dir.count("new"), dir.count("tmp")), (1, 0));
        // The first write held, the second written with it, the third alone: all in order.
        store.begin(&mut file).expect("begin");
        for part in ["head\r\n", "one\r\n", "two\r\n"] {
            file.write(part.as_bytes().to_vec());
        }
        assert_eq!(store.commit(&mut file, CONN, None), Commit::Done(Ok(())));
        let texts: Vec<Vec<u8>> = std::fs::read_dir(dir.0.join("new"))
            .expect("new/")
            .flatten()
            .map(|e| std::fs::read(e.path()).expect("read"))
            .collect();
        assert!(
            texts.contains(&b"head\r\none\r\ntwo\r\n".to_vec()),
            "{texts:?}"
        );
    }

    /// With fsync the commit goes to the group commit and its result comes back for the
    /// same connection, whichever way the files are synced; the held first write and the next
    /// one are both in the file.
    #[test]
    fn begin_write_commit_through_the_group_commit() {
        for mode in [SyncMode::File, SyncMode::FileSystem] {
            let (dir, md) = TempMaildir::new("fsync");
            let (mut store, rx) = store_with(md, Durability::Fsync, mode);
            let mut file = QueueFile::default();
            store.begin(&mut file).expect("begin");
            file.write(b"head\r\n".to_vec());
            file.write(b"body\r\n".to_vec());
            assert_eq!(store.commit(&mut file, CONN, None), Commit::Pending);
            assert_eq!(store.in_flight(), 1);
            let done = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("commit result");
            assert_eq!(done.conn, CONN, "{mode:?}");
            assert_eq!(done.result, Ok(()), "{mode:?}");
            store.completed();
            assert_eq!(store.in_flight(), 0);
            let new: Vec<_> = std::fs::read_dir(dir.0.join("new"))
                .expect("new/")
                .flatten()
                .collect();
            assert_eq!(new.len(), 1, "{mode:?}");
            let text = std::fs::read(new[0].path()).expect("read");
            assert_eq!(text, b"head\r\nbody\r\n", "{mode:?}");
        }
    }

    /// Abort removes the file from `tmp/`; a commit without a file is a failure (451), and a
    /// write failure recorded earlier is what the commit reports.
    #[test]
    fn abort_and_failures() {
        let (dir, md) = TempMaildir::new("abort");
        let (mut store, _rx) = store(md, Durability::NoFsync);
        let mut file = QueueFile::default();
        store.begin(&mut file).expect("begin");
        file.write(b"partial".to_vec());
        assert_eq!(dir.count("tmp"), 1);
        file.abort();
        assert_eq!((dir.count("new"), dir.count("tmp")), (0, 0));
        assert_eq!(
            store.commit(&mut file, CONN, None),
            Commit::Done(Err(StoreError::Failed))
        );
        store.begin(&mut file).expect("begin");
        file.failed = Some(StoreError::Full);
        file.write(b"dropped after the failure".to_vec());
        assert_eq!(
            store.commit(&mut file, CONN, None),
            Commit::Done(Err(StoreError::Full))
        );
        assert_eq!((dir.count("new"), dir.count("tmp")), (0, 0));
        // A new transaction starts clean.
        store.begin(&mut file).expect("begin");
        assert_eq!(store.commit(&mut file, CONN, None), Commit::Done(Ok(())));
    }

    /// A Maildir that cannot take a new file (here: `tmp/` gone) refuses `Begin` with 451.
    #[test]
    fn begin_failure_is_classified() {
        let (dir, md) = TempMaildir::new("begin");
        let (store, _rx) = store(md, Durability::NoFsync);
        std::fs::remove_dir_all(dir.0.join("tmp")).expect("remove tmp");
        assert_eq!(
            store.begin(&mut QueueFile::default()),
            Err(StoreError::Failed)
        );
    }
}
