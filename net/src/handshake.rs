//! TLS handshakes off the reactor thread: a small pool of threads that runs the expensive part
//! of each handshake (key exchange, signatures) on bytes the reactor read, and hands back the
//! bytes to send, through a channel and the reactor's `mio::Waker`.
//!
//! The rustls connection travels with the job and comes back with the result, so it is only
//! ever touched by one thread at a time. No socket is touched here: a peer that stalls in the
//! middle of its handshake holds no thread (the reactor just has nothing to send). Works for a
//! server or a client connection alike (smtpd uses it, with [`crate::Handshake::Offload`]).
//!
//! Must not: touch a socket, or decide what a failed handshake means for the session.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, unbounded};
use rustls::Connection;

use crate::ConnRef;

/// Handshake bytes to process for one connection.
pub struct Job {
    /// Whose handshake it is.
    pub conn: ConnRef,
    /// The TLS connection, lent to the pool.
    pub tls: Box<Connection>,
    /// TLS records received from the peer.
    pub input: Vec<u8>,
}

/// The outcome of processing a [`Job`].
pub struct Done {
    /// Whose handshake it is.
    pub conn: ConnRef,
    /// The TLS connection, returned.
    pub tls: Box<Connection>,
    /// TLS records to send to the peer.
    pub output: Vec<u8>,
    /// The handshake failed (the alert, if any, is in `output`).
    pub error: Option<String>,
}

/// Handle to the handshake threads.
pub struct Handshakers {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Handshakers {
    /// Starts `n` threads; results go to `done` and `waker` is woken after each.
    pub fn spawn(n: usize, done: Sender<Done>, waker: Arc<mio::Waker>) -> std::io::Result<Self> {
        let (tx, rx) = unbounded::<Job>();
        let mut threads = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rx = rx.clone();
            let done = done.clone();
            let waker = waker.clone();
            threads.push(std::thread::Builder::new().name(format!("tls-{i}")).spawn(
                move || {
                    for job in rx.iter() {
                        if done.send(process(job)).is_err() {
                            return;
                        }
                        if let Err(e) = waker.wake() {
                            log::error!("cannot wake the reactor: {e}");
                        }
                    }
                },
            )?);
        }
        Ok(Handshakers {
            tx: Some(tx),
            threads,
        })
    }

    /// Queues handshake work. Returns the job if the threads are gone.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(job)),
        }
    }
}

impl Drop for Handshakers {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Feeds the records to the connection and collects what it wants to send.
pub fn process(job: Job) -> Done {
    let Job {
        conn,
        mut tls,
        input,
    } = job;
    let mut rest = &input[..];
    let mut error = None;
    while !rest.is_empty() && error.is_none() {
        match tls.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    error = Some(e.to_string());
                }
            }
            Err(e) => error = Some(e.to_string()),
        }
    }
    let mut output = Vec::new();
    while tls.wants_write() {
        match tls.write_tls(&mut output) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Done {
        conn,
        tls,
        output,
        error,
    }
}
