//! The [`Authenticator`]: a small pool of threads that verify logins ([`Backend::verify`]:
//! argon2 or an LDAP bind, never on the reactor thread), answers brought back through a
//! channel and the reactor's `mio::Waker`, like the TLS handshake pool.
//!
//! On the reactor side it applies the lockout ([`Bans`]: a failure is counted as its answer
//! arrives, a banned address always gets `Bad`, a new ban is logged and saved by
//! [`Saver`]) and holds every `Bad` answer back for the failure delay (Postfix/Dovecot
//! style: guessing is slow, and a failure never answers sooner than a success). Held answers
//! wait in a queue ordered by due time (the delay is the same for all, so arrival order is
//! due order); the reactor asks [`Authenticator::next_deadline`] when to look again. No
//! thread ever sleeps for it.
//!
//! Owns: the threads, the held answers, the bans in force. Must not: touch a socket or a
//! session, or block the reactor (the only disk work, saving bans, is on the saver thread).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, unbounded};
use net::ConnRef;

use super::ban_file::{self, Saver};
use super::bans::{BanPolicy, Bans};
use super::verify::Backend;
use super::{Answer, Request, Verdict};

/// Default delay before a failed login is answered.
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);

/// The pool's settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Verifying threads.
    pub threads: usize,
    /// How long a failure is held before it is answered.
    pub failure_delay: Duration,
    /// The lockout.
    pub bans: BanPolicy,
    /// The bans file (`<queue maildir>/.smtpd/bans`).
    pub bans_file: PathBuf,
}

/// Does a user exist in the external directory (LDAP)? Asked for a local recipient the users
/// file does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupRequest {
    /// Whose RCPT it is.
    pub conn: ConnRef,
    /// The user name.
    pub name: String,
}

/// The answer to a [`LookupRequest`]: found, not found, or the directory could not be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupAnswer {
    /// Whose RCPT it is.
    pub conn: ConnRef,
    /// `Ok(true)` found, `Ok(false)` nobody, `Err` why it could not be asked.
    pub found: Result<bool, String>,
}

/// Work for the pool threads.
enum Job {
    Login(Request),
    Lookup(LookupRequest),
}

/// What the reactor needs to start the logins: the pool's settings and the password source.
pub struct LoginService {
    /// Threads, failure delay, lockout, bans file.
    pub pool: AuthConfig,
    /// The users file or LDAP.
    pub backend: Arc<Backend>,
}

/// The reactor's handle on the login checks.
pub struct Authenticator {
    tx: Option<Sender<Job>>,
    answers: Receiver<Answer>,
    lookups: Receiver<LookupAnswer>,
    /// For answers made without a thread (banned address, pool gone).
    loopback: Sender<Answer>,
    threads: Vec<JoinHandle<()>>,
    /// Answers due now (successes, temporary failures).
    ready: VecDeque<Answer>,
    /// Failures held for the delay, in due order (the delay is the same for all).
    held: VecDeque<(Instant, Answer)>,
    failure_delay: Duration,
    bans: Bans,
    saver: Saver,
    /// Requests submitted and not yet answered by [`Authenticator::poll_answer`].
    in_flight: usize,
    /// When the earliest ban kept ends: then [`Authenticator::collect`] drops it.
    next_expiry: Option<SystemTime>,
    /// Set when the server stops: the threads drop the jobs still queued unverified.
    stop: Arc<AtomicBool>,
    /// The password source the threads use; a reload replaces it ([`Authenticator::set_backend`]).
    backend: Arc<RwLock<Arc<Backend>>>,
}

impl Authenticator {
    /// Loads the bans saved by the last run (expired ones dropped), starts the threads and
    /// the bans file's writer. `waker` is woken after each answer.
    pub fn spawn(
        config: AuthConfig,
        backend: Arc<Backend>,
        waker: Arc<mio::Waker>,
        now: SystemTime,
    ) -> Result<Authenticator, String> {
        let saved = ban_file::load(&config.bans_file)?;
        let bans = Bans::with_bans(config.bans.clone(), saved, now);
        for b in bans.bans() {
            log::info!(
                "ban ip={} failures={} until={} (kept from the last run)",
                b.ip,
                b.failures,
                ban_file::rfc3339(b.until)
            );
        }
        let saver = Saver::spawn(config.bans_file.clone())
            .map_err(|e| format!("cannot start the bans file thread: {e}"))?;
        let (tx, rx) = unbounded::<Job>();
        let (answer_tx, answers) = unbounded::<Answer>();
        let (lookup_tx, lookups) = unbounded::<LookupAnswer>();
        let backend = Arc::new(RwLock::new(backend));
        let next_expiry = bans.next_expiry();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..config.threads.max(1) {
            let rx = rx.clone();
            let done = answer_tx.clone();
            let looked_up = lookup_tx.clone();
            let waker = waker.clone();
            let backend = backend.clone();
            let stop = stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("auth-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        if stop.load(Ordering::Relaxed) {
                            return; // Stopping: nobody waits for these answers.
                        }
                        // The source in force when the job starts (a reload may replace it).
                        let backend = backend.read().unwrap_or_else(|e| e.into_inner()).clone();
                        let sent = match job {
                            Job::Login(mut req) => {
                                let verdict = backend.verify(&req.user, &req.password);
                                req.password.fill(0);
                                let answer = Answer {
                                    conn: req.conn,
                                    service: req.service,
                                    login: req.user,
                                    ip: req.ip,
                                    verdict,
                                    banned: false,
                                };
                                done.send(answer).is_ok()
                            }
                            Job::Lookup(l) => {
                                let found = backend.user_exists(&l.name);
                                looked_up
                                    .send(LookupAnswer {
                                        conn: l.conn,
                                        found,
                                    })
                                    .is_ok()
                            }
                        };
                        if !sent {
                            return;
                        }
                        if let Err(e) = waker.wake() {
                            log::error!("cannot wake the reactor: {e}");
                        }
                    }
                })
                .map_err(|e| format!("cannot start the login threads: {e}"))?;
            threads.push(t);
        }
        Ok(Authenticator {
            tx: Some(tx),
            answers,
            lookups,
            loopback: answer_tx,
            threads,
            ready: VecDeque::new(),
            held: VecDeque::new(),
            failure_delay: config.failure_delay,
            bans,
            saver,
            in_flight: 0,
            next_expiry,
            stop,
            backend,
        })
    }

    /// Checks later logins against `backend` (a reload's users file or LDAP settings); checks
    /// already running finish with the old one.
    pub fn set_backend(&self, backend: Arc<Backend>) {
        *self.backend.write().unwrap_or_else(|e| e.into_inner()) = backend;
    }

    /// Queues a login for verification. A banned address is not verified: it gets `Bad`
    /// after the failure delay, whatever the password.
    pub fn submit(&mut self, mut req: Request, now: Instant, wall: SystemTime) {
        self.in_flight += 1;
        if self.bans.is_banned(req.ip, wall) {
            req.password.fill(0);
            self.held.push_back((
                now + self.failure_delay,
                Answer {
                    conn: req.conn,
                    service: req.service,
                    login: req.user,
                    ip: req.ip,
                    verdict: Verdict::Bad,
                    banned: true,
                },
            ));
            return;
        }
        let req = match &self.tx {
            Some(tx) => match tx.send(Job::Login(req)) {
                Ok(()) => return,
                Err(e) => match e.0 {
                    Job::Login(r) => r,
                    Job::Lookup(_) => return,
                },
            },
            None => req,
        };
        log::error!("the login threads are gone");
        let _ = self.loopback.send(Answer {
            conn: req.conn,
            service: req.service,
            login: req.user,
            ip: req.ip,
            verdict: Verdict::TempFail("login threads are gone".into()),
            banned: false,
        });
    }

    /// Queues a user look-up in the external directory. `false` if the threads are gone (the
    /// caller answers it as a temporary failure).
    pub fn submit_lookup(&self, req: LookupRequest) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.send(Job::Lookup(req)).is_ok())
    }

    /// The next user look-up answered (no delay: a look-up is no login).
    pub fn poll_lookup(&mut self) -> Option<LookupAnswer> {
        self.lookups.try_recv().ok()
    }

    /// Takes the threads' answers (call after a Waker event): counts failures, applies and
    /// logs bans, holds failures back for the delay.
    pub fn collect(&mut self, now: Instant, wall: SystemTime) {
        if self.next_expiry.is_some_and(|t| t <= wall) {
            if self.bans.expire(wall) {
                self.saver.save(self.bans.bans());
            }
            self.next_expiry = self.bans.next_expiry();
        }
        while let Ok(mut a) = self.answers.try_recv() {
            let banned_before = self.bans.is_banned(a.ip, wall);
            match &a.verdict {
                Verdict::Ok { .. } if banned_before => {
                    // A right password does not lift a ban, and says nothing about it.
                    a.verdict = Verdict::Bad;
                    a.banned = true;
                }
                Verdict::Ok { user } => {
                    self.bans.record_success(a.ip);
                    log::info!(
                        "login ok service={} ip={} user={user}",
                        a.service.name(),
                        a.ip
                    );
                }
                Verdict::Bad => {
                    a.banned = banned_before;
                    log::info!(
                        "login failed service={} ip={} user={:?}",
                        a.service.name(),
                        a.ip,
                        a.login
                    );
                    if let Some(ban) = self.bans.record_failure(a.ip, wall) {
                        a.banned = true;
                        log::warn!(
                            "ban ip={} failures={} until={}",
                            ban.ip,
                            ban.failures,
                            ban_file::rfc3339(ban.until)
                        );
                        self.bans.expire(wall);
                        self.next_expiry = self.bans.next_expiry();
                        self.saver.save(self.bans.bans());
                    }
                }
                Verdict::TempFail(why) => log::warn!(
                    "login not checked service={} ip={} user={:?}: {why}",
                    a.service.name(),
                    a.ip,
                    a.login
                ),
            }
            if a.verdict == Verdict::Bad {
                self.held.push_back((now + self.failure_delay, a));
            } else {
                self.ready.push_back(a);
            }
        }
    }

    /// The next answer whose time has come (failures once their delay is over).
    pub fn poll_answer(&mut self, now: Instant) -> Option<Answer> {
        let a = match self.ready.pop_front() {
            Some(a) => a,
            None if self.held.front().is_some_and(|(due, _)| *due <= now) => {
                self.held.pop_front()?.1
            }
            None => return None,
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(a)
    }

    /// When the first held answer is due (answers due now are taken by
    /// [`Authenticator::poll_answer`] in the same turn as [`Authenticator::collect`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.ready.front() {
            Some(_) => Some(Instant::now()),
            None => self.held.front().map(|(due, _)| *due),
        }
    }

    /// True while `ip` is banned: a new connection from it is refused.
    pub fn is_banned(&self, ip: IpAddr, wall: SystemTime) -> bool {
        self.bans.is_banned(ip, wall)
    }

    /// The bans and failure counts (read-only).
    pub fn bans(&self) -> &Bans {
        &self.bans
    }

    /// Logins submitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Service;
    use crate::auth::verify::Source;
    use maildir_core::aliases::Aliases;
    use maildir_core::directory::Directory;
    use maildir_core::users::Users;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(name: &str, delay: Duration) -> (Authenticator, mio::Poll, Dir) {
        let dir = std::env::temp_dir().join(format!("smtpd-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let h = crate::password::hash(b"right").unwrap();
        let users = Users::parse(&format!("alice:{h}::::\n")).unwrap();
        let aliases = Aliases::parse("postmaster: alice\n").unwrap();
        let d = Directory::new(users, aliases, &["example.test".to_owned()], None).unwrap();
        let backend = Arc::new(Backend::new(Source::Users(Arc::new(d))));
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let config = AuthConfig {
            threads: 2,
            failure_delay: delay,
            bans: BanPolicy::default(),
            bans_file: ban_file::path(&dir),
        };
        let a = Authenticator::spawn(config, backend, waker, SystemTime::now()).unwrap();
        (a, poll, Dir(dir))
    }

    fn req(key: usize, ip: &str, password: &[u8]) -> Request {
        Request {
            conn: ConnRef { key, generation: 1 },
            service: Service::Smtp,
            user: "alice".into(),
            password: password.to_vec(),
            ip: ip.parse().unwrap(),
        }
    }

    /// Waits for `n` answers the way the reactor does: poll for the Waker, collect, and
    /// poll answers at their deadlines.
    fn answers(a: &mut Authenticator, poll: &mut mio::Poll, n: usize) -> Vec<(Answer, Instant)> {
        let mut events = mio::Events::with_capacity(8);
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(60);
        while got.len() < n && Instant::now() < end {
            let timeout = a
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            poll.poll(&mut events, timeout.or(Some(Duration::from_secs(1))))
                .unwrap();
            let now = Instant::now();
            a.collect(now, SystemTime::now());
            while let Some(x) = a.poll_answer(now) {
                got.push((x, now));
            }
        }
        got
    }

    #[test]
    fn right_wrong_delay_and_ban() {
        let delay = Duration::from_millis(300);
        let (mut a, mut poll, dir) = setup("pool", delay);
        let t0 = Instant::now();
        // One after the other: a success answered after the failure would reset its count.
        a.submit(req(1, "192.0.2.1", b"right"), t0, SystemTime::now());
        let mut got = answers(&mut a, &mut poll, 1);
        let t0 = Instant::now();
        a.submit(req(2, "192.0.2.1", b"wrong"), t0, SystemTime::now());
        got.extend(answers(&mut a, &mut poll, 1));
        assert_eq!(got[0].0.conn.key, 1);
        assert_eq!(
            got[0].0.verdict,
            Verdict::Ok {
                user: "alice".into()
            }
        );
        assert_eq!(got[1].0.verdict, Verdict::Bad);
        assert!(!got[1].0.banned);
        assert!(got[1].1 >= t0 + delay, "a failure is held for the delay");
        // Two more failures: the third bans; then the right password is refused too.
        for k in 3..5 {
            a.submit(
                req(k, "192.0.2.1", b"wrong"),
                Instant::now(),
                SystemTime::now(),
            );
        }
        let got = answers(&mut a, &mut poll, 2);
        assert_eq!(got.iter().filter(|(x, _)| x.banned).count(), 1);
        assert!(a.is_banned("192.0.2.1".parse().unwrap(), SystemTime::now()));
        a.submit(
            req(5, "192.0.2.1", b"right"),
            Instant::now(),
            SystemTime::now(),
        );
        a.submit(
            req(6, "192.0.2.2", b"right"),
            Instant::now(),
            SystemTime::now(),
        );
        let got = answers(&mut a, &mut poll, 2);
        let by_key = |k| got.iter().find(|(x, _)| x.conn.key == k).unwrap().0.clone();
        assert_eq!(by_key(5).verdict, Verdict::Bad);
        assert!(by_key(5).banned);
        assert_eq!(
            by_key(6).verdict,
            Verdict::Ok {
                user: "alice".into()
            }
        );
        assert_eq!(a.in_flight(), 0);
        drop(a);
        // The ban was saved, and a new pool starts with it.
        let saved = ban_file::load(&ban_file::path(&dir.0)).unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].ip.to_string(), "192.0.2.1");
    }
}
