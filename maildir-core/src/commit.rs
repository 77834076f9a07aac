//! Group commit: the threads that make many deliveries durable together.
//!
//! Two stages, each message tagged with a caller's `T` (a connection, an index):
//! 1. a pool of sync threads flushes each finished file's data as soon as it arrives
//!    ([`Delivery::sync`]; flushes pending together are merged by the block layer);
//! 2. [`publish_all`] renames the synced files into their `new/` and fsyncs each `new/` once
//!    for all of them.
//!
//! A job is one file ([`GroupCommit::submit`]) or the files of one message written by a
//! [`Prepare`] step on a sync thread ([`GroupCommit::submit_prepared`]: smtpd's local delivery
//! writes the users' copies from the spooled message, in several users' Maildirs, beside the
//! queue file); all of a job's files are published in the same batch, and its result is
//! reported once, after that batch's directory fsyncs.
//!
//! [`GroupCommit`] runs both stages as a pipeline that lives as long as its owner (smtpd's
//! committer): a publisher thread takes every file synced meanwhile as one batch, so stage 1 of
//! the next messages overlaps stage 2 of the previous ones. [`sync_all`] runs stage 1 once
//! for a batch the caller then publishes ([`crate::Maildir::commit_batch`]).
//!
//! With [`SyncMode::FileSystem`] a finished file skips stage 1: the publisher makes every
//! such file of its batch durable with one `syncfs(2)` ([`sync_fs`]) before the renames.
//!
//! Owns: these threads and the order of durability (file data flushed, then rename, then the
//! directory fsync, before any result is reported). Must not: speak SMTP, know the reactor, or
//! report a message as committed before its batch's directory fsync.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::job_queue::JobQueue;
use crate::maildir::{Delivered, Delivery, MaildirError, Synced, publish_all, sync_fs};

/// Sync threads used where the caller has no setting of its own ([`crate::Maildir::commit_batch`],
/// and smtpd's default).
pub const SYNC_THREADS: usize = 16;

/// How the group commit makes a finished file's bytes durable before publishing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// An fdatasync per file, from the sync threads: right on any file system.
    #[default]
    File,
    /// One `syncfs(2)` per batch, by the publisher, for all the batch's finished files
    /// ([`sync_fs`]): fewer, larger writes and one journal commit, but it flushes everything
    /// written to that file system, so it is meant for a queue on a file system of its own.
    /// Jobs that write files themselves ([`GroupCommit::submit_prepared`]) still sync per file.
    FileSystem,
}

/// Work run on a sync thread for one job: writes what remains to be written and returns the
/// job's files synced ([`Delivery::sync`]), ready to publish. Dropping a file it made before
/// failing removes it, so a failure leaves nothing behind.
pub type Prepare = Box<dyn FnOnce() -> Result<Vec<Synced>, MaildirError> + Send>;

/// One job of the sync threads.
enum Work {
    /// One finished file: sync it.
    File(Delivery),
    /// Files still to write, then sync.
    Prepare(Prepare),
}

impl Work {
    fn run(self) -> Result<Vec<Synced>, MaildirError> {
        match self {
            Work::File(d) => d.sync().map(|s| vec![s]),
            Work::Prepare(f) => f(),
        }
    }
}

/// What the sync threads report: a caller's tag and the synced files or why not.
type SyncResult<T> = (T, Result<Vec<Synced>, MaildirError>);

/// What reaches the publisher.
enum Ready<T> {
    /// A job the sync threads ran.
    Synced(SyncResult<T>),
    /// A finished file still to sync ([`SyncMode::FileSystem`]): synced with its batch.
    Unsynced(T, Delivery),
}

/// What a published job comes to: its files in `new/` (in the order its work gave them), or
/// why not.
pub type JobResult = Result<Vec<Delivered>, MaildirError>;

/// Stage 1: threads that flush each file's data as it arrives.
struct SyncPool<T> {
    jobs: Arc<JobQueue<(T, Work)>>,
    threads: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> SyncPool<T> {
    /// Starts `threads` sync threads (at least one) reporting on `out` what `wrap` makes of
    /// each result.
    fn spawn<R: Send + 'static>(
        threads: usize,
        out: &Sender<R>,
        wrap: fn(SyncResult<T>) -> R,
    ) -> io::Result<SyncPool<T>> {
        let n = threads.max(1);
        // Dropped on a failed spawn: that closes the queue and ends the threads started.
        let mut pool = SyncPool {
            jobs: Arc::new(JobQueue::default()),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let jobs = pool.jobs.clone();
            let out = out.clone();
            pool.threads.push(
                std::thread::Builder::new()
                    .name(format!("sync-{i}"))
                    .spawn(move || {
                        while let Some((tag, work)) = jobs.pop() {
                            if out.send(wrap((tag, work.run()))).is_err() {
                                return;
                            }
                        }
                    })?,
            );
        }
        Ok(pool)
    }

    fn submit(&self, tag: T, work: Work) -> Result<(), (T, Work)> {
        self.jobs.push((tag, work))
    }
}

impl<T> Drop for SyncPool<T> {
    fn drop(&mut self) {
        // Closing the job queue ends the threads once the queued files are synced.
        self.jobs.close();
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
    match SyncPool::spawn(threads.min(n), &out, |r| r) {
        Ok(pool) => {
            drop(out);
            for (i, d) in batch.into_iter().enumerate() {
                if let Err((i, work)) = pool.submit(i, Work::File(d)) {
                    results[i] = Some(one(work.run()));
                }
            }
            // Ends the threads; their senders go with them, which ends the loop below.
            drop(pool);
            for (i, r) in results_rx.iter() {
                results[i] = Some(one(r));
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

/// The single file of a [`Work::File`] job.
fn one(r: Result<Vec<Synced>, MaildirError>) -> Result<Synced, MaildirError> {
    r.and_then(|v| {
        v.into_iter().next().ok_or_else(|| {
            MaildirError::new(
                "fsync",
                Path::new("tmp"),
                io::Error::other("internal: no file"),
            )
        })
    })
}

/// The long-lived pipeline: sync threads, then one publisher thread that hands each batch's
/// results to the caller's `report`.
pub struct GroupCommit<T> {
    pool: Option<SyncPool<T>>,
    /// The publisher's queue, for finished files that skip the sync threads
    /// ([`SyncMode::FileSystem`]; None otherwise).
    direct: Option<Sender<Ready<T>>>,
    publisher: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts `sync_threads` sync threads (at least one) and the publisher. At most
    /// `max_batch` jobs go in one publish; `mode` says how finished files are synced. `report`
    /// gets every result of a batch (each job with its tag: its files in `new/` durably, or
    /// why not) after that batch's directory fsyncs; when it returns false the publisher stops.
    pub fn spawn(
        sync_threads: usize,
        max_batch: usize,
        mode: SyncMode,
        mut report: impl FnMut(Vec<(T, JobResult)>) -> bool + Send + 'static,
    ) -> io::Result<GroupCommit<T>> {
        let (synced_tx, synced_rx) = unbounded::<Ready<T>>();
        let pool = SyncPool::spawn(sync_threads, &synced_tx, Ready::Synced)?;
        let direct = (mode == SyncMode::FileSystem).then_some(synced_tx);
        let publisher = std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || {
                while let Some(results) = publish_next(&synced_rx, max_batch) {
                    if !report(results) {
                        return;
                    }
                }
            })?;
        Ok(GroupCommit {
            pool: Some(pool),
            direct,
            publisher: Some(publisher),
        })
    }

    /// Queues a finished file. Returns the tag if the threads are gone (the file is dropped,
    /// which removes it from `tmp/`).
    pub fn submit(&self, tag: T, delivery: Delivery) -> Result<(), T> {
        if let Some(direct) = &self.direct {
            return direct
                .send(Ready::Unsynced(tag, delivery))
                .map_err(|e| match e.0 {
                    Ready::Unsynced(tag, _) | Ready::Synced((tag, _)) => tag,
                });
        }
        self.submit_work(tag, Work::File(delivery))
            .map_err(|(tag, _)| tag)
    }

    /// Queues a job whose files a sync thread writes and syncs (`prepare`). Returns the tag
    /// if the threads are gone (`prepare` is dropped unrun).
    pub fn submit_prepared(&self, tag: T, prepare: Prepare) -> Result<(), T> {
        self.submit_work(tag, Work::Prepare(prepare))
            .map_err(|(tag, _)| tag)
    }

    fn submit_work(&self, tag: T, work: Work) -> Result<(), (T, Work)> {
        match &self.pool {
            Some(pool) => pool.submit(tag, work),
            None => Err((tag, work)),
        }
    }
}

impl<T> Drop for GroupCommit<T> {
    fn drop(&mut self) {
        // Ending the sync threads (and dropping the direct sender) closes the publisher's
        // channel, which ends the publisher.
        self.pool.take();
        self.direct.take();
        if let Some(t) = self.publisher.take() {
            let _ = t.join();
        }
    }
}

/// Waits for a ready job, takes every other one ready meanwhile (up to `max_batch`), syncs
/// the unsynced files among them together ([`sync_fs`]) and publishes all their files
/// ([`publish_all`]: one fsync per `new/` directory). None once the sync threads are gone.
fn publish_next<T>(ready: &Receiver<Ready<T>>, max_batch: usize) -> Option<Vec<(T, JobResult)>> {
    let first = ready.recv().ok()?;
    // Everything ready while the previous batch was publishing joins this one.
    let mut arrived = vec![first];
    while arrived.len() < max_batch.max(1) {
        match ready.try_recv() {
            Ok(item) => arrived.push(item),
            Err(_) => break,
        }
    }
    let started = std::time::Instant::now();
    let batch = sync_unsynced(arrived);
    // Every file of every job, with the index of its job.
    let mut owners = Vec::new();
    let mut files = Vec::new();
    let mut results: Vec<(T, JobResult)> = Vec::with_capacity(batch.len());
    for (tag, r) in batch {
        match r {
            Ok(synced) => {
                for f in synced {
                    owners.push(results.len());
                    files.push(f);
                }
                results.push((tag, Ok(Vec::new())));
            }
            Err(e) => results.push((tag, Err(e))),
        }
    }
    let n = files.len();
    for (owner, published) in owners.into_iter().zip(publish_all(files)) {
        let slot = &mut results[owner].1;
        match (slot.as_mut(), published) {
            (Ok(done), Ok(d)) => done.push(d),
            // The job's first failure is its result (files of it already published stay:
            // the client retries, a duplicate rather than a loss).
            (Ok(_), Err(e)) => *slot = Err(e),
            (Err(_), _) => {}
        }
    }
    log::debug!("published a batch of {n} files in {:?}", started.elapsed());
    Some(results)
}

/// The batch with its unsynced files synced together ([`sync_fs`]), in the order it came.
fn sync_unsynced<T>(arrived: Vec<Ready<T>>) -> Vec<SyncResult<T>> {
    let mut tags = Vec::with_capacity(arrived.len());
    let mut unsynced = Vec::new();
    let mut done: Vec<Option<Result<Vec<Synced>, MaildirError>>> = Vec::new();
    for item in arrived {
        match item {
            Ready::Synced((tag, r)) => {
                tags.push(tag);
                done.push(Some(r));
            }
            Ready::Unsynced(tag, d) => {
                tags.push(tag);
                done.push(None);
                unsynced.push(d);
            }
        }
    }
    let mut synced = sync_fs(unsynced).into_iter();
    tags.into_iter()
        .zip(done)
        .map(|(tag, r)| {
            let r = r.unwrap_or_else(|| {
                synced.next().map_or_else(
                    || {
                        Err(MaildirError::new(
                            "syncfs",
                            Path::new("tmp"),
                            io::Error::other("internal: no result"),
                        ))
                    },
                    |one| one.map(|s| vec![s]),
                )
            });
            (tag, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildir::Maildir;
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

    /// The pipeline reports every file with its tag, in `new/` by then, whichever way the
    /// files are synced.
    #[test]
    fn group_commit_reports_each_tag_once_published() {
        for mode in [SyncMode::File, SyncMode::FileSystem] {
            reports_each_tag_once_published(mode);
        }
    }

    fn reports_each_tag_once_published(mode: SyncMode) {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = Maildir::open(dir.path()).expect("open");
        let (tx, rx) = unbounded();
        let new_dir = md.new_dir().to_owned();
        let gc = GroupCommit::spawn(2, 4, mode, move |results| {
            for (tag, r) in results {
                let delivered = r.expect("committed");
                assert_eq!(delivered.len(), 1);
                assert!(delivered[0].path.starts_with(&new_dir) && delivered[0].path.exists());
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

    /// A prepared job's files in two Maildirs are published together and reported once, in
    /// the order the job gave them; a failing job leaves nothing in `new/`.
    #[test]
    fn prepared_jobs_publish_every_file_or_report_the_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Maildir::open(dir.path().join("a")).expect("open");
        let b = Maildir::open(dir.path().join("b")).expect("open");
        let (tx, rx) = unbounded();
        let gc = GroupCommit::spawn(2, 8, SyncMode::File, move |results| {
            for r in results {
                if tx.send(r).is_err() {
                    return false;
                }
            }
            true
        })
        .expect("spawn");
        let (a2, b2) = (a.clone(), b.clone());
        gc.submit_prepared(
            1u32,
            Box::new(move || {
                let one = delivery(&a2, b"to a\r\n").sync()?;
                let two = delivery(&b2, b"to b\r\n").sync()?;
                Ok(vec![one, two])
            }),
        )
        .expect("submit");
        let b3 = b.clone();
        gc.submit_prepared(
            2u32,
            Box::new(move || {
                let _dropped = delivery(&b3, b"never published\r\n");
                Err(MaildirError::new(
                    "write",
                    Path::new("x"),
                    io::Error::other("boom"),
                ))
            }),
        )
        .expect("submit");
        let mut got: Vec<(u32, JobResult)> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(30)).expect("result"))
            .collect();
        got.sort_by_key(|(t, _)| *t);
        let files = got[0].1.as_ref().expect("job 1 committed");
        assert_eq!(files.len(), 2);
        assert!(files[0].path.starts_with(a.new_dir()) && files[0].path.exists());
        assert!(files[1].path.starts_with(b.new_dir()) && files[1].path.exists());
        assert!(got[1].1.is_err());
        drop(gc);
        let count = |d: &Path| std::fs::read_dir(d).map_or(0, |r| r.count());
        assert_eq!(count(a.new_dir()), 1);
        assert_eq!(count(b.new_dir()), 1);
        assert_eq!(count(b.tmp_dir()), 0);
    }
}
