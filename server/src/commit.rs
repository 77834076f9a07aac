//! Group commit: a thread that makes finished queue files durable in batches (one data flush
//! and one directory fsync per batch, see `Maildir::commit_batch`) and reports each result back
//! to the reactor through a channel and a `mio::Waker`.
//!
//! This is the only place smtpd calls fsync; the reactor thread never waits on the disk flush.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use maildir_core::{Delivery, Durability, Maildir, MaildirError};

use crate::session::StoreError;

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
}

/// Handle to the group-commit thread.
pub struct Committer {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the thread. Results arrive on `done`, and `waker` is woken after each batch.
    pub fn spawn(
        maildir: Maildir,
        done: Sender<Done>,
        waker: Arc<mio::Waker>,
    ) -> std::io::Result<Committer> {
        let (tx, rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("commit".into())
            .spawn(move || run(&maildir, &rx, &done, &waker))?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a file for the next batch. Returns the job if the thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(maildir: &Maildir, rx: &Receiver<Job>, done: &Sender<Done>, waker: &mio::Waker) {
    while let Ok(first) = rx.recv() {
        // Whatever queued up while the previous batch was syncing joins this one.
        let mut conns = vec![first.conn];
        let mut files = vec![first.delivery];
        while files.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    conns.push(job.conn);
                    files.push(job.delivery);
                }
                Err(_) => break,
            }
        }
        let n = files.len();
        let started = std::time::Instant::now();
        let results = maildir.commit_batch(files, Durability::Fsync);
        log::debug!("committed a batch of {n} in {:?}", started.elapsed());
        for (conn, result) in conns.into_iter().zip(results) {
            let result = result.map(|_| ()).map_err(|e| {
                log::error!("commit failed: {e}");
                store_error(&e)
            });
            if done.send(Done { conn, result }).is_err() {
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
