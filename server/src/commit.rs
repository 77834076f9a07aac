//! smtpd's committer: [`maildir_core::commit::GroupCommit`] (sync threads flushing each
//! finished queue file's data, or writing and flushing a message's local copies beside it; one
//! publisher renaming every file synced meanwhile into its `new/` and fsyncing each `new/` once
//! per batch) tagged with the connection, its results reported to the reactor through a
//! channel and a `mio::Waker`, with its latency and the batch's size (for [`crate::stats`]).
//!
//! Owns: the connection tag, the report of each result as a [`StoreError`], the wake-up, the
//! log line of each local delivery (once durable) and the usage count it adds.
//! Must not: touch a socket or the session. This is the only place smtpd's fsyncs run; the
//! reactor thread never waits on the disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use maildir_core::commit::{GroupCommit, JobResult, Prepare, SyncMode};
use maildir_core::directory::LocalCopy;
use maildir_core::local::Mailboxes;
use maildir_core::{Delivered, Delivery};
use net::ConnRef;

use proto::smtp::server::session::StoreError;

use crate::store::store_error;

/// Most messages made durable in one flush, by default (`Config::max_batch`).
pub const MAX_BATCH: usize = 512;

/// Whose a job is: the connection, and the local copies it writes (for the log and the usage
/// count once they are durable; they come first in the job's files).
pub struct Tag {
    /// Whose message it is.
    pub conn: ConnRef,
    /// The message's queue id.
    pub id: String,
    /// The users' copies, in the order the job writes them.
    pub copies: Vec<LocalCopy>,
    /// When it was handed to the group commit.
    pub submitted: Instant,
}

/// The outcome of one commit.
pub struct Done {
    /// Whose message it was.
    pub conn: ConnRef,
    /// Durable in `new/`, or why not.
    pub result: Result<(), StoreError>,
    /// From the hand-off to the group commit ([`Committer::submit`]) to this result.
    pub latency: Duration,
    /// On the first result of each batch: how many messages the batch held (one fsync per
    /// `new/` directory).
    pub batch: Option<usize>,
    /// Copies written into local users' Maildirs by this job (durable when `result` is Ok).
    pub local_copies: usize,
}

/// How the group commit runs (`Config::sync_threads`, `max_batch`, `--sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Threads flushing files in parallel (at least one).
    pub threads: usize,
    /// Most messages made durable in one batch.
    pub max_batch: usize,
    /// An fdatasync per queue file, or a syncfs per batch.
    pub mode: SyncMode,
}

/// Handle to the group-commit threads ([`maildir_core::commit::GroupCommit`]).
pub struct Committer {
    inner: GroupCommit<Tag>,
}

impl Committer {
    /// Starts the threads as `settings` say. Results arrive on `done`, and `waker` is woken
    /// after each batch. `mailboxes` counts what local copies add to their users' usage.
    pub fn spawn(
        settings: Settings,
        mailboxes: Option<Arc<Mailboxes>>,
        done: Sender<Done>,
        waker: Arc<mio::Waker>,
    ) -> std::io::Result<Committer> {
        let inner = GroupCommit::spawn(
            settings.threads,
            settings.max_batch,
            settings.mode,
            move |results| report(results, mailboxes.as_deref(), &done, &waker),
        )?;
        Ok(Committer { inner })
    }

    /// Queues a finished queue file for commit. False if the threads are gone.
    pub fn submit(&self, conn: ConnRef, delivery: Delivery) -> bool {
        let tag = Tag {
            conn,
            id: delivery.id().to_owned(),
            copies: Vec::new(),
            submitted: Instant::now(),
        };
        self.inner.submit(tag, delivery).is_ok()
    }

    /// Queues a job that writes local copies (and keeps the queue file or not) on a sync
    /// thread. False if the threads are gone.
    pub fn submit_prepared(&self, tag: Tag, prepare: Prepare) -> bool {
        self.inner.submit_prepared(tag, prepare).is_ok()
    }
}

/// Hands one published batch's results to the reactor and wakes it. False once the reactor
/// is gone.
fn report(
    results: Vec<(Tag, JobResult)>,
    mailboxes: Option<&Mailboxes>,
    done: &Sender<Done>,
    waker: &mio::Waker,
) -> bool {
    let mut batch = Some(results.len());
    for (tag, result) in results {
        let result = match result {
            Ok(files) => {
                local_delivered(&tag, &files, mailboxes);
                Ok(())
            }
            Err(e) => {
                log::error!("{}: commit failed: {e}", tag.id);
                Err(store_error(&e))
            }
        };
        let done_one = Done {
            local_copies: tag.copies.len(),
            conn: tag.conn,
            result,
            latency: tag.submitted.elapsed(),
            batch: batch.take(),
        };
        if done.send(done_one).is_err() {
            return false;
        }
    }
    if let Err(e) = waker.wake() {
        log::error!("cannot wake the reactor: {e}");
    }
    true
}

/// One log line per local copy now durable in its user's `new/` (in the style of the relay's
/// delivery lines), and its size added to the user's usage.
pub fn local_delivered(tag: &Tag, files: &[Delivered], mailboxes: Option<&Mailboxes>) {
    for (copy, file) in tag.copies.iter().zip(files) {
        if let Some(m) = mailboxes {
            m.add_usage(&copy.user, file.size);
        }
        log::info!(
            "{}: to=<{}>, orig_to=<{}>, relay=local, status=delivered",
            tag.id,
            copy.delivered_to,
            copy.original_to
        );
    }
}
