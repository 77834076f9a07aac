//! Group commit, as a two-stage pipeline off the reactor thread:
//! 1. a pool of sync threads flushes each finished queue file's data as soon as it arrives
//!    (`Delivery::sync`; flushes pending together are merged by the block layer);
//! 2. one publisher thread takes every file synced meanwhile, renames them into `new/` and
//!    fsyncs `new/` once for the batch (`Maildir::publish`), then reports each result (with its
//!    latency and the batch's size, for [`crate::stats`]) to the reactor through a channel and a
//!    `mio::Waker`.
//!
//! Stage 1 of the next messages overlaps stage 2 of the previous ones. This is the only place
//! smtpd calls fsync; the reactor thread never waits on the disk.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use maildir_core::maildir::Synced;
use maildir_core::{Delivery, Maildir, MaildirError};

use proto::smtp::server::session::StoreError;

/// Most messages made durable in one flush.
pub const MAX_BATCH: usize = 512;

/// A connection, named so that a reused slab slot is not confused with its previous owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    /// Slab key.
    pub key: usize,
    /// Generation of the connection that held the key.
    pub generation: u64,
}

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
    /// From a sync thread taking the file to this result.
    pub latency: Duration,
    /// On the first result of each batch: how many files the batch held (one `new/` fsync).
    pub batch: Option<usize>,
}

/// Threads flushing file data in parallel.
const SYNC_THREADS: usize = 16;

/// Handle to the group-commit threads.
pub struct Committer {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Committer {
    /// Starts the threads. Results arrive on `done`, and `waker` is woken after each batch.
    pub fn spawn(
        maildir: Maildir,
        done: Sender<Done>,
        waker: Arc<mio::Waker>,
    ) -> std::io::Result<Committer> {
        let (tx, jobs) = unbounded::<Job>();
        let (synced_tx, synced_rx) = unbounded::<SyncedFile>();
        let mut threads = Vec::with_capacity(SYNC_THREADS + 1);
        for i in 0..SYNC_THREADS {
            let jobs = jobs.clone();
            let synced_tx = synced_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sync-{i}"))
                    .spawn(move || {
                        for job in jobs.iter() {
                            let taken = Instant::now();
                            if synced_tx
                                .send((job.conn, taken, job.delivery.sync()))
                                .is_err()
                            {
                                return;
                            }
                        }
                    })?,
            );
        }
        drop(synced_tx);
        threads.push(
            std::thread::Builder::new()
                .name("publish".into())
                .spawn(move || publish(&maildir, &synced_rx, &done, &waker))?,
        );
        Ok(Committer {
            tx: Some(tx),
            threads,
        })
    }

    /// Queues a file for commit. Returns the job if the threads are gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the job channel ends the sync threads, which ends the publisher.
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A file through stage 1: whose, when a sync thread took it, and the sync's outcome.
type SyncedFile = (ConnRef, Instant, Result<Synced, MaildirError>);

fn publish(
    maildir: &Maildir,
    synced: &Receiver<SyncedFile>,
    done: &Sender<Done>,
    waker: &mio::Waker,
) {
    while let Ok(first) = synced.recv() {
        // Everything synced while the previous batch was publishing joins this one.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match synced.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let size = batch.len();
        let mut conns = Vec::with_capacity(batch.len());
        let mut files = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        for (conn, taken, r) in batch {
            match r {
                Ok(s) => {
                    conns.push((conn, taken));
                    files.push(s);
                }
                Err(e) => results.push(((conn, taken), Err(e))),
            }
        }
        let n = files.len();
        results.extend(conns.into_iter().zip(maildir.publish(files)));
        log::debug!("published a batch of {n} in {:?}", started.elapsed());
        for (i, ((conn, taken), result)) in results.into_iter().enumerate() {
            let result = result.map(|_| ()).map_err(|e| {
                log::error!("commit failed: {e}");
                store_error(&e)
            });
            let done_one = Done {
                conn,
                result,
                latency: taken.elapsed(),
                batch: (i == 0).then_some(size),
            };
            if done.send(done_one).is_err() {
                return;
            }
        }
        if let Err(e) = waker.wake() {
            log::error!("cannot wake the reactor: {e}");
        }
    }
}

/// Classifies a Maildir failure for the reply: full disk is 452, anything else 451.
pub fn store_error(e: &MaildirError) -> StoreError {
    if e.is_storage_full() {
        StoreError::Full
    } else {
        StoreError::Failed
    }
}

/// The store error for a failed write to a queue file: out of space or over quota is
/// temporary and answered `452 4.3.1`, anything else `451 4.3.0`.
pub fn io_store_error(e: &std::io::Error) -> StoreError {
    if maildir_core::maildir::storage_full(e) {
        StoreError::Full
    } else {
        StoreError::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
