//! POP3 password checks off the reactor thread: a few threads verify a user name and password
//! against the users file ([`crate::password::verify`], argon2 and friends are slow on purpose)
//! and hand the answer back through a channel and the reactor's `mio::Waker`.
//!
//! INTERIM: issue 13 puts every password check (SMTP AUTH and POP3, users file and LDAP, with
//! the failure bans) in one shared worker pool (`server/src/auth/`, engineer A's part). Until
//! that is merged, POP3 uses this small pool over the users file only: no LDAP, no bans, no
//! failure delay. It keeps the same shape (submit a job, receive `Done` through the Waker), so
//! switching to the shared pool replaces this module and one call in [`super::conns`].
//!
//! Owns: the threads and the look-up of the login name (lower case; `user@<local domain>` is
//! `user`). An unknown user is checked against a dummy hash, so it takes as long as a wrong
//! password (no user enumeration by timing). Must not: touch sockets or the maildrop.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use maildir_core::directory::Directory;
use maildir_core::users::Password;
use net::ConnRef;
use proto::pop3::session::AuthResult;

use crate::password;

/// One password to check.
struct Job {
    conn: ConnRef,
    user: String,
    password: Vec<u8>,
}

/// The answer for one connection.
pub struct Done {
    /// Whose login it was.
    pub conn: ConnRef,
    /// The verdict.
    pub result: AuthResult,
}

/// Handle to the checking threads; dropping it stops them.
pub struct Logins {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Logins {
    /// Starts `n` threads checking against `directory`'s users; answers go to `done`, and
    /// `waker` is woken after each.
    pub fn spawn(
        n: usize,
        directory: Arc<Directory>,
        done: Sender<Done>,
        waker: Arc<mio::Waker>,
    ) -> std::io::Result<Logins> {
        let (tx, rx) = unbounded::<Job>();
        let dummy = password::hash(b"no such user")
            .map_err(|e| std::io::Error::other(format!("dummy hash: {e}")))?;
        let dummy = maildir_core::users::Password::Hashed {
            scheme: password::ARGON2ID.to_owned(),
            hash: dummy
                .strip_prefix("{ARGON2ID}")
                .unwrap_or_default()
                .to_owned(),
        };
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let (rx, done, waker, directory, dummy) = (
                rx.clone(),
                done.clone(),
                waker.clone(),
                directory.clone(),
                dummy.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pop3-login-{i}"))
                    .spawn(move || work(&rx, &done, &waker, &directory, &dummy))?,
            );
        }
        Ok(Logins {
            tx: Some(tx),
            threads,
        })
    }

    /// Queues a check; false when the threads are gone.
    pub fn submit(&self, conn: ConnRef, user: String, password: Vec<u8>) -> bool {
        self.tx.as_ref().is_some_and(|tx| {
            tx.send(Job {
                conn,
                user,
                password,
            })
            .is_ok()
        })
    }
}

impl Drop for Logins {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn work(
    rx: &Receiver<Job>,
    done: &Sender<Done>,
    waker: &mio::Waker,
    directory: &Directory,
    dummy: &Password,
) {
    while let Ok(job) = rx.recv() {
        let result = check(directory, dummy, &job.user, &job.password);
        if done
            .send(Done {
                conn: job.conn,
                result,
            })
            .is_err()
        {
            return;
        }
        let _ = waker.wake();
    }
}

/// The login name as the users file spells it: lower case, `@<local domain>` removed.
pub fn account_name(directory: &Directory, login: &str) -> String {
    let lower = login.to_ascii_lowercase();
    match lower.rsplit_once('@') {
        Some((local, domain)) if directory.domains().iter().any(|d| d == domain) => {
            local.to_owned()
        }
        _ => lower,
    }
}

fn check(directory: &Directory, dummy: &Password, login: &str, candidate: &[u8]) -> AuthResult {
    let name = account_name(directory, login);
    match directory.users().get(&name) {
        Some(user) => match password::verify(&user.password, candidate) {
            Ok(true) => AuthResult::Accepted(name),
            Ok(false) | Err(password::PasswordError::NoLogin) => AuthResult::Rejected,
            Err(e) => {
                log::warn!("pop3: cannot check the password of {name}: {e}");
                AuthResult::Rejected
            }
        },
        None => {
            // As long as a wrong password takes: no enumeration of users by timing.
            let _ = password::verify(dummy, candidate);
            AuthResult::Rejected
        }
    }
}
