//! The POP3 maildrop work that touches many files, off the reactor thread: listing a user's
//! Maildir at login (a directory read and, for names without a size, a `stat` per message)
//! and removing the messages deleted in the session at QUIT (an unlink per message). One
//! thread takes the jobs in order; each answer comes back through a channel and the reactor's
//! `mio::Waker`, like the TLS handshakes and the logins.
//!
//! Owns: that thread. Must not: touch a socket or a session, or decide what an answer means
//! for the protocol ([`super::conns`] does).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, unbounded};
use maildir_core::MaildirError;
use maildir_core::local::Mailboxes;
use maildir_core::maildrop::Maildrop;
use net::ConnRef;

/// Work for the maildrop thread.
pub enum Job {
    /// List `root` (the user's Maildir) for a login.
    List {
        /// Whose login.
        conn: ConnRef,
        /// The user.
        user: String,
        /// The user's Maildir.
        root: PathBuf,
    },
    /// Remove these messages of the maildrop (QUIT in TRANSACTION).
    Remove {
        /// Whose session.
        conn: ConnRef,
        /// The user (whose lock is held until this is done).
        user: String,
        /// The session's maildrop.
        maildrop: Box<Maildrop>,
        /// Indexes of the messages to remove.
        deleted: Vec<usize>,
        /// The users' Maildirs, whose usage count (the quota's) is made again after the
        /// removal, so that deleting mail frees quota at once rather than at the next recount.
        mailboxes: Option<Arc<Mailboxes>>,
    },
}

/// The answer to a [`Job`].
pub enum Done {
    /// The listing, or why there is none.
    Listed {
        /// Whose login.
        conn: ConnRef,
        /// The user.
        user: String,
        /// The maildrop.
        result: Result<Box<Maildrop>, MaildirError>,
    },
    /// The removal is over.
    Removed {
        /// Whose session.
        conn: ConnRef,
        /// The user.
        user: String,
        /// The messages that could not be removed (the others are gone).
        failures: Vec<MaildirError>,
    },
}

/// Does one job (on the thread, or here when the thread is gone).
pub fn run(job: Job) -> Done {
    match job {
        Job::List { conn, user, root } => Done::Listed {
            conn,
            user,
            result: Maildrop::scan(&root).map(Box::new),
        },
        Job::Remove {
            conn,
            user,
            mut maildrop,
            deleted,
            mailboxes,
        } => {
            let failures = maildrop.remove(&deleted);
            if let Some(m) = mailboxes.filter(|m| m.cached_usage(&user).is_some())
                && let Err(e) = m.recount(&user, SystemTime::now())
            {
                log::warn!("pop3: cannot recount the usage of {user}: {e}");
            }
            Done::Removed {
                conn,
                user,
                failures,
            }
        }
    }
}

/// Handle to the maildrop thread; dropping it lets the thread finish its jobs and stop.
pub struct Worker {
    tx: Option<Sender<Job>>,
    rx: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread; `waker` is woken after each answer.
    pub fn spawn(waker: Arc<mio::Waker>) -> io::Result<Worker> {
        let (tx, jobs) = unbounded::<Job>();
        let (done_tx, rx) = unbounded::<Done>();
        let thread = std::thread::Builder::new()
            .name("pop3-maildrop".into())
            .spawn(move || {
                for job in jobs.iter() {
                    if done_tx.send(run(job)).is_err() {
                        return;
                    }
                    if let Err(e) = waker.wake() {
                        log::error!("cannot wake the reactor: {e}");
                    }
                }
            })?;
        Ok(Worker {
            tx: Some(tx),
            rx,
            thread: Some(thread),
        })
    }

    /// Queues a job; gives it back when the thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// An answer, if one is there.
    pub fn try_recv(&self) -> Option<Done> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
