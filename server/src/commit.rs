//! smtpd's committer: [`maildir_core::commit::GroupCommit`] (sync threads flushing each
//! finished queue file's data, one publisher renaming every file synced meanwhile into `new/`
//! and fsyncing `new/` once per batch) tagged with the connection, its results reported to the
//! reactor through a channel and a `mio::Waker`.
//!
//! Owns: the connection tag, the report of each result as a [`StoreError`], the wake-up.
//! Must not: touch a socket or the session. This is the only place smtpd's fsyncs run; the
//! reactor thread never waits on the disk.

use std::sync::Arc;

use crossbeam_channel::Sender;
use maildir_core::commit::GroupCommit;
use maildir_core::{Delivered, Delivery, Maildir, MaildirError};
use net::ConnRef;

use crate::session::StoreError;
use crate::store::store_error;

/// Most messages made durable in one flush.
pub const MAX_BATCH: usize = 512;

/// A finished queue file to commit.
pub struct Job {
    /// Whose message it is.
    pub conn: ConnRef,
    /// The file.
    pub delivery: Delivery,
}

/// The outcome of one commit.
pub struct Done {
    /// Whose message it was.
    pub conn: ConnRef,
    /// Durable in `new/`, or why not.
    pub result: Result<(), StoreError>,
}

/// Handle to the group-commit threads ([`maildir_core::commit::GroupCommit`]).
pub struct Committer {
    inner: GroupCommit<ConnRef>,
}

impl Committer {
    /// Starts the threads (`sync_threads` flushing in parallel, at least one). Results arrive
    /// on `done`, and `waker` is woken after each batch.
    pub fn spawn(
        maildir: Maildir,
        sync_threads: usize,
        done: Sender<Done>,
        waker: Arc<mio::Waker>,
    ) -> std::io::Result<Committer> {
        let inner = GroupCommit::spawn(maildir, sync_threads, MAX_BATCH, move |results| {
            report(results, &done, &waker)
        })?;
        Ok(Committer { inner })
    }

    /// Queues a file for commit. Returns the job if the threads are gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.inner
            .submit(job.conn, job.delivery)
            .map_err(|(conn, delivery)| Job { conn, delivery })
    }
}

/// Hands one published batch's results to the reactor and wakes it. False once the reactor
/// is gone.
fn report(
    results: Vec<(ConnRef, Result<Delivered, MaildirError>)>,
    done: &Sender<Done>,
    waker: &mio::Waker,
) -> bool {
    for (conn, result) in results {
        let result = result.map(|_| ()).map_err(|e| {
            log::error!("commit failed: {e}");
            store_error(&e)
        });
        if done.send(Done { conn, result }).is_err() {
            return false;
        }
    }
    if let Err(e) = waker.wake() {
        log::error!("cannot wake the reactor: {e}");
    }
    true
}
