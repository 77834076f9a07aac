//! Group commit: the threads that make many deliveries durable together.
//!
//! Two stages, each message tagged with a caller's `T` (a connection, an index):
//! 1. a pool of sync threads flushes each finished file's data as soon as it arrives
//!    ([`Delivery::sync`]; flushes pending together are merged by the block layer);
//! 2. [`Maildir::publish`] renames the synced files into `new/` and fsyncs `new/` once for all
//!    of them.
//!
//! [`GroupCommit`] runs both stages as a pipeline that lives as long as its owner (smtpd's
//! committer): a publisher thread takes every file synced meanwhile as one batch, so stage 1 of
//! the next messages overlaps stage 2 of the previous ones. [`sync_all`] runs stage 1 once
//! for a batch the caller then publishes ([`Maildir::commit_batch`]).
//!
//! Owns: these threads and the order of durability (file data flushed, then rename, then the
//! directory fsync, before any result is reported). Must not: speak SMTP, know the reactor, or
//! report a message as committed before its batch's directory fsync.

use std::io;
use std::path::Path;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::maildir::{Delivered, Delivery, Maildir, MaildirError, Synced};

/// Sync threads used where the caller has no setting of its own ([`Maildir::commit_batch`],
/// and smtpd's default).
pub const SYNC_THREADS: usize = 16;

/// What the sync threads report: a caller's tag and the synced file or why not.
type SyncResult<T> = (T, Result<Synced, MaildirError>);

/// Stage 1: threads that flush each file's data as it arrives.
struct SyncPool<T> {
    tx: Option<Sender<(T, Delivery)>>,
    threads: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> SyncPool<T> {
    /// Starts `threads` sync threads (at least one) reporting on `out`.
    fn spawn(threads: usize, out: &Sender<SyncResult<T>>) -> io::Result<SyncPool<T>> {
        let (tx, jobs) = unbounded::<(T, Delivery)>();
        let n = threads.max(1);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let jobs = jobs.clone();
            let out = out.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("sync-{i}"))
                    .spawn(move || {
                        for (tag, delivery) in jobs.iter() {
                            if out.send((tag, delivery.sync())).is_err() {
                                return;
                            }
                        }
                    })?,
            );
        }
        Ok(SyncPool {
            tx: Some(tx),
            threads: handles,
        })
    }

    fn submit(&self, tag: T, delivery: Delivery) -> Result<(), (T, Delivery)> {
        match &self.tx {
            Some(tx) => tx.send((tag, delivery)).map_err(|e| e.0),
            None => Err((tag, delivery)),
        }
    }
}

impl<T> Drop for SyncPool<T> {
    fn drop(&mut self) {
        // Closing the job channel ends the threads once the queued files are synced.
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Syncs every delivery's data from up to `threads` parallel threads (stage 1 for one batch).
/// Results come back in the order given; a file whose thread failed counts as failed.
pub fn sync_all(batch: Vec<Delivery>, threads: usize) -> Vec<Result<Synced, MaildirError>> {
    let n = batch.len();
    if n <= 1 {
        return batch.into_iter().map(Delivery::sync).collect();
    }
    let (out, results_rx) = unbounded();
    let mut results: Vec<Option<Result<Synced, MaildirError>>> = (0..n).map(|_| None).collect();
    match SyncPool::spawn(threads.min(n), &out) {
        Ok(pool) => {
            drop(out);
            for (i, d) in batch.into_iter().enumerate() {
                if let Err((i, d)) = pool.submit(i, d) {
                    results[i] = Some(d.sync());
                }
            }
            // Ends the threads; their senders go with them, which ends the loop below.
            drop(pool);
            for (i, r) in results_rx.iter() {
                results[i] = Some(r);
            }
        }
        Err(e) => {
            log::warn!("cannot start sync threads ({e}): syncing one by one");
            for (slot, d) in results.iter_mut().zip(batch) {
                *slot = Some(d.sync());
            }
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(MaildirError::new(
                    "fsync",
                    Path::new("tmp"),
                    io::Error::other("sync thread panicked"),
                ))
            })
        })
        .collect()
}

/// The long-lived pipeline: sync threads, then one publisher thread that hands each batch's
/// results to the caller's `report`.
pub struct GroupCommit<T> {
    pool: Option<SyncPool<T>>,
    publisher: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts `sync_threads` sync threads (at least one) and the publisher. At most
    /// `max_batch` files go in one publish. `report` gets every result of a batch (each file
    /// with its tag, in `new/` durably or why not) after that batch's directory fsync; when it
    /// returns false the publisher stops.
    pub fn spawn(
        maildir: Maildir,
        sync_threads: usize,
        max_batch: usize,
        mut report: impl FnMut(Vec<(T, Result<Delivered, MaildirError>)>) -> bool + Send + 'static,
    ) -> io::Result<GroupCommit<T>> {
        let (synced_tx, synced_rx) = unbounded::<SyncResult<T>>();
        let pool = SyncPool::spawn(sync_threads, &synced_tx)?;
        drop(synced_tx);
        let publisher = std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || {
                while let Some(results) = publish_next(&maildir, &synced_rx, max_batch) {
                    if !report(results) {
                        return;
                    }
                }
            })?;
        Ok(GroupCommit {
            pool: Some(pool),
            publisher: Some(publisher),
        })
    }

    /// Queues a finished file. Returns it (with its tag) if the threads are gone.
    pub fn submit(&self, tag: T, delivery: Delivery) -> Result<(), (T, Delivery)> {
        match &self.pool {
            Some(pool) => pool.submit(tag, delivery),
            None => Err((tag, delivery)),
        }
    }
}

impl<T> Drop for GroupCommit<T> {
    fn drop(&mut self) {
        // Ending the sync threads closes the publisher's channel, which ends the publisher.
        self.pool.take();
        if let Some(t) = self.publisher.take() {
            let _ = t.join();
        }
    }
}

/// Waits for a synced file, takes every other one synced meanwhile (up to `max_batch`) and
/// publishes them together. None once the sync threads are gone.
fn publish_next<T>(
    maildir: &Maildir,
    synced: &Receiver<SyncResult<T>>,
    max_batch: usize,
) -> Option<Vec<(T, Result<Delivered, MaildirError>)>> {
    let first = synced.recv().ok()?;
    // Everything synced while the previous batch was publishing joins this one.
    let mut batch = vec![first];
    while batch.len() < max_batch.max(1) {
        match synced.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    let started = std::time::Instant::now();
    let mut tags = Vec::with_capacity(batch.len());
    let mut files = Vec::with_capacity(batch.len());
    let mut results = Vec::with_capacity(batch.len());
    for (tag, r) in batch {
        match r {
            Ok(s) => {
                tags.push(tag);
                files.push(s);
            }
            Err(e) => results.push((tag, Err(e))),
        }
    }
    let n = files.len();
    results.extend(tags.into_iter().zip(maildir.publish(files)));
    log::debug!("published a batch of {n} in {:?}", started.elapsed());
    Some(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn delivery(md: &Maildir, body: &[u8]) -> Delivery {
        let mut d = md.deliver().expect("deliver");
        d.write_all(body).expect("write");
        d
    }

    /// `sync_all` keeps the order given, whatever the thread count.
    #[test]
    fn sync_all_keeps_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = Maildir::open(dir.path()).expect("open");
        for threads in [0, 1, 3, 64] {
            let batch: Vec<Delivery> = (0..10).map(|_| delivery(&md, b"x\r\n")).collect();
            let ids: Vec<String> = batch.iter().map(|d| d.id().to_owned()).collect();
            let synced = sync_all(batch, threads);
            let got: Vec<String> = synced
                .iter()
                .map(|r| r.as_ref().expect("synced").id().to_owned())
                .collect();
            assert_eq!(got, ids, "{threads} threads");
        }
    }

    /// The pipeline reports every file with its tag, in `new/` by then.
    #[test]
    fn group_commit_reports_each_tag_once_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = Maildir::open(dir.path()).expect("open");
        let (tx, rx) = unbounded();
        let new_dir = md.new_dir().to_owned();
        let gc = GroupCommit::spawn(md.clone(), 2, 4, move |results| {
            for (tag, r) in results {
                let delivered = r.expect("committed");
                assert!(delivered.path.starts_with(&new_dir) && delivered.path.exists());
                if tx.send(tag).is_err() {
                    return false;
                }
            }
            true
        })
        .expect("spawn");
        for tag in 0..20u32 {
            gc.submit(tag, delivery(&md, b"y\r\n")).expect("submit");
        }
        let mut tags: Vec<u32> = (0..20)
            .map(|_| rx.recv_timeout(Duration::from_secs(30)).expect("result"))
            .collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..20).collect::<Vec<_>>());
        drop(gc);
        assert_eq!(
            std::fs::read_dir(dir.path().join("new"))
                .expect("new")
                .count(),
            20
        );
    }
}
