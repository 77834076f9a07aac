//! The operator's requests carried out on the reactor: control-socket requests (`smtpctl`)
//! (`reload` is the very call SIGHUP makes: [`Server::reload`]).
//!
//! Owns: answering `show stats` / `show sessions` from the reactor's state, turning the trace
//! on for every session when the first subscriber arrives (and off after the last), pausing
//! and resuming the listeners, the log level, and the answer to a reload.
//! Must not: parse or write the control socket's bytes (`crate::control` does).
//!
//! `pause smtp` deregisters the listening sockets: the kernel still completes TCP handshakes
//! into the listen backlog (up to its size), so new clients connect but get no greeting until
//! `resume smtp`, which registers them again and accepts what waited; sessions in progress go
//! on as usual.

use std::time::Instant;

use mio::{Interest, Token};

use super::{FIRST_LISTENER, Server};
use crate::control::wire::{Message, Request, SessionView, StatsView};
use crate::trace;

impl Server {
    /// Readiness on a control-socket token.
    pub(super) fn control_ready(&mut self, token: usize, now: Instant) {
        let Some(control) = self.control.as_mut() else {
            return;
        };
        let was_tracing = control.tracing();
        let requests = control.ready(token, self.poll.registry());
        for (key, request) in requests {
            self.operator_request(key, request, now);
        }
        self.trace_switch(was_tracing);
        self.flush_control();
    }

    /// Writes what the control clients have pending; a subscriber whose socket failed is
    /// closed there, and when it was the last one the sessions' transcripts go off.
    pub(super) fn flush_control(&mut self) {
        let Some(control) = self.control.as_mut() else {
            return;
        };
        let was_tracing = control.tracing();
        control.flush_all(self.poll.registry());
        self.trace_switch(was_tracing);
    }

    /// Turns the sessions' command transcripts on or off when tracing began or ended.
    fn trace_switch(&mut self, was_tracing: bool) {
        let tracing = self.control.as_ref().is_some_and(|c| c.tracing());
        if tracing == was_tracing {
            return;
        }
        for (_, conn) in self.conns.iter_mut() {
            conn.session.set_transcript(tracing);
            conn.trace = trace::Cursor::skipping(&conn.session);
        }
    }

    fn operator_request(&mut self, key: usize, request: Request, now: Instant) {
        let answer = match request {
            Request::ShowStats => Message::Stats(Box::new(self.stats_view(now))),
            Request::ShowSessions => Message::Sessions {
                sessions: self.sessions_view(now),
            },
            Request::Trace(filter) => {
                if let Some(control) = self.control.as_mut() {
                    control.subscribe(key, filter);
                }
                return;
            }
            Request::Pause => self.pause(),
            Request::Resume => self.resume(now),
            Request::LogLevel(level) => {
                maildir_core::logging::set_level(level);
                log::warn!("log level set to {level} (smtpctl)");
                Message::Ok {
                    message: format!("log level {level}"),
                }
            }
            // The same call as SIGHUP (it logs its outcome itself).
            Request::Reload => match self.reload() {
                Ok(warnings) if warnings.is_empty() => Message::Ok {
                    message: "configuration reloaded".into(),
                },
                Ok(warnings) => Message::Ok {
                    message: format!(
                        "configuration reloaded; needs a restart: {}",
                        warnings.join("; ")
                    ),
                },
                Err(e) => Message::Error {
                    message: format!("reload refused, the configuration in force stays: {e}"),
                },
            },
        };
        if let Some(control) = self.control.as_mut() {
            control.answer(key, &answer);
        }
    }

    fn pause(&mut self) -> Message {
        if self.shutdown_deadline.is_some() {
            return Message::Error {
                message: "stopping: the listeners are already closed".into(),
            };
        }
        if !self.paused {
            self.paused = true;
            for (l, _) in self.listeners.iter_mut() {
                let _ = self.poll.registry().deregister(l);
            }
            log::warn!("smtp paused: new connections wait in the listen backlog (smtpctl)");
        }
        Message::Ok {
            message: "smtp paused: new connections wait until resume".into(),
        }
    }

    fn resume(&mut self, now: Instant) -> Message {
        if self.shutdown_deadline.is_some() {
            return Message::Error {
                message: "stopping: the listeners are closed".into(),
            };
        }
        if self.paused {
            self.paused = false;
            for (i, (l, _)) in self.listeners.iter_mut().enumerate() {
                let token = Token(FIRST_LISTENER + i);
                if let Err(e) = self.poll.registry().register(l, token, Interest::READABLE) {
                    log::error!("cannot listen again: {e}");
                }
            }
            log::warn!("smtp resumed (smtpctl)");
            for i in 0..self.listeners.len() {
                self.accept(i, now);
            }
        }
        Message::Ok {
            message: "smtp resumed".into(),
        }
    }

    fn stats_view(&self, now: Instant) -> StatsView {
        StatsView {
            accepting: !self.paused && self.shutdown_deadline.is_none(),
            stats: self.stats.snapshot(now),
        }
    }

    fn sessions_view(&self, now: Instant) -> Vec<SessionView> {
        let mut v: Vec<SessionView> = self
            .conns
            .iter()
            .map(|(_, c)| {
                let counts = c.session.counts();
                SessionView {
                    id: c.generation,
                    client: c.session.peer(),
                    state: c.session.state_name().to_owned(),
                    age_secs: now.saturating_duration_since(c.started).as_secs(),
                    bytes_in: counts.bytes_in,
                    bytes_out: counts.bytes_out,
                    tls: c
                        .session
                        .tls_info()
                        .map(|t| format!("{} {}", t.version, t.cipher)),
                    user: c.session.auth_user().map(str::to_owned),
                }
            })
            .collect();
        v.extend(self.pop3.views().into_iter().map(|c| SessionView {
            id: c.id,
            client: c.client,
            state: c.state.to_owned(),
            age_secs: now.saturating_duration_since(c.started).as_secs(),
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            tls: c.tls,
            user: c.user,
        }));
        v.sort_by_key(|s| s.id);
        v
    }
}
