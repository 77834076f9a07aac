//! The POP3 server session (RFC 1939, RFC 2449, RFC 5034, RFC 2595, RFC 3206) as a pure state
//! machine, driven like the SMTP session (see the crate's "One vocabulary for every session"):
//! bytes in, replies and actions out, time passed in.
//!
//! Inputs: [`Session::handle_input`], the answers to actions ([`Session::handle_authenticated`],
//! [`Session::handle_opened`], [`Session::handle_read_started`],
//! [`Session::handle_message_data`] and [`Session::handle_message_end`],
//! [`Session::handle_updated`]), [`Session::handle_tls_started`], [`Session::handle_timeout`],
//! [`Session::handle_eof`], [`Session::begin_shutdown`], [`Session::force_close`].
//! Outputs: [`Session::poll_output`], [`Session::poll_action`], [`Session::poll_event`],
//! [`Session::poll_timeout`], [`Session::wants_read`], [`Session::wants_message_data`],
//! [`Session::is_closed`].
//!
//! States (`State`): AUTHORIZATION (with the USER given, or waiting for an AUTH PLAIN
//! response, or waiting for the password check and the maildrop), TRANSACTION (the maildrop's
//! listing and the deletion marks; streaming a message is a sub-state) and UPDATE (the caller
//! removes the marked messages). Deletions happen only through the `Update` action after QUIT
//! in TRANSACTION: a timeout, a lost connection or a shutdown never removes anything.
//!
//! Owns: the protocol, the maildrop listing and marks, the error count and the idle deadline
//! (RFC 1939's autologout). Must not: touch files, sockets, the clock or the log, or check a
//! password: those are actions for the caller.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::command::{self, Command, ParseError};
use super::multiline::DotStuffer;
use super::reply;

/// Longest command or SASL response line, CR LF included (RFC 2449 asks for 255; AUTH
/// PLAIN responses with long passwords need more).
pub const MAX_LINE: usize = 1024;
/// RFC 1939 §3: the autologout timer is at least 10 minutes.
pub const AUTOLOGOUT: Duration = Duration::from_secs(600);
/// Default [`Pop3Config::output_limit`]: replies waiting beyond this stop input and message
/// reading until the client reads.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Settings every POP3 session of a server shares.
#[derive(Debug, Clone)]
pub struct Pop3Config {
    /// Our host name, in the greeting.
    pub hostname: String,
    /// The idle (autologout) timer.
    pub timeout: Duration,
    /// Error replies after which the session is closed.
    pub max_errors: u32,
    /// STLS is offered (a certificate is configured).
    pub stls: bool,
    /// USER/PASS and AUTH also on plaintext connections that are not loopback.
    pub allow_plaintext_auth: bool,
    /// Replies waiting beyond this many octets stop input processing and message reading.
    pub output_limit: usize,
}

/// One message of a maildrop, as the caller listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Size in octets as RETR sends it (CR LF line ends, before dot-stuffing).
    pub size: u64,
    /// The unique id (UIDL): stable across sessions.
    pub uid: String,
}

/// The outcome of an [`Action::Authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// The password is right; the maildrop of this user is to be opened.
    Accepted(String),
    /// Unknown user or wrong password.
    Rejected,
    /// The password could not be checked now (LDAP unreachable, ...): `[SYS/TEMP]`.
    Unavailable,
    /// The client's address is banned: `[AUTH]` and the session is closed.
    Banned,
}

/// Why [`Action::Open`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Another session holds this maildrop: `[IN-USE]`.
    InUse,
    /// The maildrop could not be read: `[SYS/TEMP]`.
    Failed,
}

/// Why [`Action::Read`] failed before the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The file is gone (another client deleted it).
    Gone,
    /// It could not be opened.
    Failed,
}

/// Work the caller must do on the session's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Check this password (off the reactor thread); answer with
    /// [`Session::handle_authenticated`].
    Authenticate {
        /// The user name as the client gave it.
        user: String,
        /// The password.
        password: Vec<u8>,
    },
    /// Lock and list this user's maildrop; answer with [`Session::handle_opened`].
    Open {
        /// Whose.
        user: String,
    },
    /// Open message `message` (0-based index into the listing) for RETR or TOP; answer with
    /// [`Session::handle_read_started`], then feed its bytes with
    /// [`Session::handle_message_data`] while [`Session::wants_message_data`], and
    /// [`Session::handle_message_end`] at the end of the file.
    Read {
        /// Index into the listing.
        message: usize,
    },
    /// Message `message` was sent whole by RETR: mark it seen (`new/` → `cur/`, flag `S`).
    Seen {
        /// Index into the listing.
        message: usize,
    },
    /// QUIT in TRANSACTION (the UPDATE state): remove these messages (indexes into the
    /// listing), then answer with [`Session::handle_updated`].
    Update {
        /// Indexes of the messages marked deleted.
        deleted: Vec<usize>,
    },
    /// STLS accepted: start TLS once the `+OK` is sent, then call
    /// [`Session::handle_tls_started`].
    StartTls,
}

/// What happened, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A login succeeded and the maildrop is open.
    LoggedIn {
        /// Who.
        user: String,
        /// Messages listed.
        messages: usize,
        /// Their total size.
        octets: u64,
    },
    /// A login failed.
    LoginFailed {
        /// The name given.
        user: String,
        /// Why (`password`, `unavailable`, `banned`, `in-use`, `maildrop`).
        reason: &'static str,
    },
    /// A message was sent whole (RETR or TOP).
    Sent {
        /// Index into the listing.
        message: usize,
        /// RETR (true) or TOP.
        retr: bool,
    },
    /// The UPDATE state ended.
    Updated {
        /// Who.
        user: String,
        /// Messages asked to be removed.
        deleted: usize,
        /// All of them are gone.
        ok: bool,
    },
    /// Reading a message failed midway: the session was closed without the terminator.
    ReadFailed,
    /// The idle timer ran out.
    Timeout,
    /// Too many errors: closed.
    TooManyErrors,
    /// Input pipelined after STLS was dropped (octets).
    DiscardedAfterStls(usize),
}

/// The maildrop as the session knows it: the listing and the deletion marks.
#[derive(Debug, Clone)]
struct Maildrop {
    user: String,
    messages: Vec<MessageInfo>,
    deleted: Vec<bool>,
}

impl Maildrop {
    fn live(&self) -> impl Iterator<Item = (usize, &MessageInfo)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
    }

    fn stat(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size))
    }

    /// The 0-based index of live message `n` (1-based), or the reply refusing it.
    fn index(&self, n: u32) -> Result<usize, &'static str> {
        let i = n as usize - 1;
        match self.deleted.get(i) {
            None => Err(reply::NO_SUCH_MESSAGE),
            Some(true) => Err(reply::NO_SUCH_MESSAGE),
            Some(false) => Ok(i),
        }
    }
}

/// The session's state (RFC 1939 §3: AUTHORIZATION, TRANSACTION, UPDATE), with its data.
#[derive(Debug)]
enum State {
    /// AUTHORIZATION: waiting for USER/PASS or AUTH (with the USER name given so far).
    Authorization { user: Option<String> },
    /// AUTHORIZATION: `+ ` sent after `AUTH PLAIN`, waiting for the client's response line.
    SaslResponse,
    /// AUTHORIZATION: the password is being checked (`Authenticate` given).
    Authenticating { user: String },
    /// AUTHORIZATION: the password was right; the maildrop is being locked and listed.
    Opening { user: String },
    /// STLS answered; waiting for the TLS handshake to start.
    StartingTls,
    /// TRANSACTION, waiting for a command.
    Transaction(Box<Maildrop>),
    /// TRANSACTION: the message file is being opened for RETR/TOP.
    Reading {
        drop: Box<Maildrop>,
        message: usize,
        top: Option<u64>,
    },
    /// TRANSACTION: the message streams out.
    Sending {
        drop: Box<Maildrop>,
        message: usize,
        retr: bool,
        stuffer: DotStuffer,
    },
    /// UPDATE: the marked messages are being removed.
    Updating { user: String, deleted: usize },
    /// Over: nothing more is read; close once the output is sent.
    Closed,
}

/// A POP3 server session with one client.
#[derive(Debug)]
pub struct Session {
    config: Arc<Pop3Config>,
    peer: SocketAddr,
    state: State,
    out: Vec<u8>,
    out_pos: usize,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    /// Discarding the rest of an overlong line.
    discarding: bool,
    deadline: Option<Instant>,
    errors: u32,
    shutting_down: bool,
    tls: bool,
}

impl Session {
    /// A new session: the greeting is queued and the idle timer starts at `now`.
    pub fn new(config: Arc<Pop3Config>, peer: SocketAddr, now: Instant) -> Session {
        let mut s = Session {
            out: reply::greeting(&config.hostname).into_bytes(),
            deadline: Some(now + config.timeout),
            config,
            peer,
            state: State::Authorization { user: None },
            out_pos: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            discarding: false,
            errors: 0,
            shutting_down: false,
            tls: false,
        };
        s.out.reserve(0);
        s
    }

    /// The client's address is banned: `-ERR [AUTH]` instead of the greeting, then close.
    pub fn refuse_banned(&mut self) {
        self.out.clear();
        self.out_pos = 0;
        self.reply(reply::BANNED);
        self.close();
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Passwords may be sent: over TLS, from loopback, or when allowed on plaintext.
    fn login_allowed(&self) -> bool {
        self.tls || self.peer.ip().is_loopback() || self.config.allow_plaintext_auth
    }

    /// Processes client bytes; returns how many were consumed (the rest is offered again).
    pub fn handle_input(&mut self, input: &[u8], now: Instant) -> usize {
        let mut pos = 0;
        while pos < input.len() {
            if matches!(self.state, State::Closed) {
                return input.len();
            }
            if !self.wants_read() {
                break;
            }
            let rest = &input[pos..];
            let newline = memchr::memchr(b'\n', rest);
            if self.discarding {
                match newline {
                    Some(i) => {
                        pos += i + 1;
                        self.discarding = false;
                        self.deadline = Some(now + self.config.timeout);
                        if matches!(self.state, State::SaslResponse) {
                            self.state = State::Authorization { user: None };
                        }
                        self.error(reply::LINE_TOO_LONG);
                    }
                    None => pos = input.len(),
                }
                continue;
            }
            match newline {
                Some(i) => {
                    pos += i + 1;
                    self.deadline = Some(now + self.config.timeout);
                    let line = rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]);
                    if line.len() + 2 > MAX_LINE {
                        if matches!(self.state, State::SaslResponse) {
                            self.state = State::Authorization { user: None };
                        }
                        self.error(reply::LINE_TOO_LONG);
                    } else if matches!(self.state, State::SaslResponse) {
                        self.sasl_response(line);
                    } else {
                        self.command(line);
                    }
                    if matches!(self.state, State::StartingTls) {
                        // RFC 2595 §4: nothing sent in plaintext after STLS is executed.
                        if pos < input.len() {
                            self.events
                                .push_back(Event::DiscardedAfterStls(input.len() - pos));
                        }
                        pos = input.len();
                    }
                }
                None if rest.len() >= MAX_LINE => {
                    self.discarding = true;
                    pos = input.len();
                }
                None => break,
            }
        }
        pos
    }

    fn command(&mut self, line: &[u8]) {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(ParseError::Unknown) => return self.error(reply::UNKNOWN_COMMAND),
            Err(ParseError::Syntax(why)) => {
                return self.error(&format!("-ERR Syntax error: {why}.\r\n"));
            }
        };
        match cmd {
            Command::Capa => {
                let authorization = matches!(self.state, State::Authorization { .. });
                let login = authorization && self.login_allowed();
                let stls = authorization && self.config.stls && !self.tls;
                let text = reply::capabilities(login, stls);
                self.reply(&text);
            }
            Command::Noop if matches!(self.state, State::Transaction(_)) => self.reply(reply::OK),
            Command::Quit => self.quit(),
            Command::Apop => self.error(reply::NO_APOP),
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } | Command::Stls => {
                self.authorization(cmd)
            }
            _ => self.transaction(cmd),
        }
    }

    fn authorization(&mut self, cmd: Command<'_>) {
        let State::Authorization { user } = &mut self.state else {
            return self.error(reply::WRONG_STATE);
        };
        if matches!(cmd, Command::Stls) {
            if !self.config.stls || self.tls {
                return self.error(reply::STLS_REFUSED);
            }
            self.reply(reply::STLS_OK);
            self.state = State::StartingTls;
            self.actions.push_back(Action::StartTls);
            return;
        }
        if !self.tls && !self.peer.ip().is_loopback() && !self.config.allow_plaintext_auth {
            return self.error(reply::PLAINTEXT_REFUSED);
        }
        match cmd {
            Command::User(name) => {
                *user = Some(name.to_owned());
                self.reply(reply::USER_OK);
            }
            Command::Pass(password) => match user.take() {
                Some(user) => self.authenticate(user, password.to_vec()),
                None => self.error(reply::USER_FIRST),
            },
            Command::Auth { mechanism, initial } => {
                *user = None;
                match mechanism {
                    None => self.reply(reply::MECHANISMS),
                    Some(m) if !m.eq_ignore_ascii_case("PLAIN") => {
                        self.error(reply::UNKNOWN_MECHANISM)
                    }
                    Some(_) => match initial {
                        None => {
                            self.reply(reply::CONTINUE);
                            self.state = State::SaslResponse;
                        }
                        Some(i) => self.sasl_response(i.as_bytes()),
                    },
                }
            }
            _ => {}
        }
    }

    /// An AUTH PLAIN response (initial or after `+ `): `*`, or base64 of
    /// `authzid NUL authcid NUL password` (RFC 4616).
    fn sasl_response(&mut self, line: &[u8]) {
        self.state = State::Authorization { user: None };
        if line == b"*" {
            return self.error(reply::AUTH_CANCELLED);
        }
        let decoded = if line == b"=" {
            Vec::new()
        } else {
            match STANDARD.decode(line) {
                Ok(d) => d,
                Err(_) => return self.error(reply::BAD_BASE64),
            }
        };
        let mut parts = decoded.splitn(3, |&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return self.auth_failed(String::new(), "password");
        };
        let Ok(authcid) = std::str::from_utf8(authcid) else {
            return self.auth_failed(String::new(), "password");
        };
        // Acting as another user (a proxy authorisation) is not offered.
        if !authzid.is_empty() && authzid != authcid.as_bytes() {
            return self.auth_failed(authcid.to_owned(), "password");
        }
        if authcid.is_empty() || password.contains(&0) {
            return self.auth_failed(authcid.to_owned(), "password");
        }
        self.authenticate(authcid.to_owned(), password.to_vec());
    }

    fn authenticate(&mut self, user: String, password: Vec<u8>) {
        self.actions.push_back(Action::Authenticate {
            user: user.clone(),
            password,
        });
        self.state = State::Authenticating { user };
    }

    fn auth_failed(&mut self, user: String, reason: &'static str) {
        self.events.push_back(Event::LoginFailed { user, reason });
        self.error(reply::AUTH_FAILED);
    }

    /// Answer to [`Action::Authenticate`].
    pub fn handle_authenticated(&mut self, result: AuthResult, now: Instant) {
        let State::Authenticating { user } = &self.state else {
            return;
        };
        let user = user.clone();
        self.deadline = Some(now + self.config.timeout);
        self.state = State::Authorization { user: None };
        match result {
            AuthResult::Accepted(name) => {
                self.actions.push_back(Action::Open { user: name.clone() });
                self.state = State::Opening { user: name };
            }
            AuthResult::Rejected => self.auth_failed(user, "password"),
            AuthResult::Unavailable => {
                self.events.push_back(Event::LoginFailed {
                    user,
                    reason: "unavailable",
                });
                self.reply(reply::AUTH_UNAVAILABLE);
                self.idle_again();
            }
            AuthResult::Banned => {
                self.events.push_back(Event::LoginFailed {
                    user,
                    reason: "banned",
                });
                self.reply(reply::BANNED);
                self.close();
            }
        }
    }

    /// Answer to [`Action::Open`]: the maildrop's listing, in arrival order.
    pub fn handle_opened(&mut self, result: Result<Vec<MessageInfo>, OpenError>, now: Instant) {
        let State::Opening { user } = &self.state else {
            return;
        };
        let user = user.clone();
        self.deadline = Some(now + self.config.timeout);
        match result {
            Ok(messages) => {
                let octets = messages.iter().map(|m| m.size).sum();
                self.events.push_back(Event::LoggedIn {
                    user: user.clone(),
                    messages: messages.len(),
                    octets,
                });
                let deleted = vec![false; messages.len()];
                self.state = State::Transaction(Box::new(Maildrop {
                    user,
                    messages,
                    deleted,
                }));
                self.reply(reply::LOGGED_IN);
            }
            Err(e) => {
                let (reason, text) = match e {
                    OpenError::InUse => ("in-use", reply::IN_USE),
                    OpenError::Failed => ("maildrop", reply::MAILDROP_FAILED),
                };
                self.events.push_back(Event::LoginFailed { user, reason });
                self.state = State::Authorization { user: None };
                self.reply(text);
            }
        }
        self.idle_again();
    }

    fn transaction(&mut self, cmd: Command<'_>) {
        let State::Transaction(drop) = &mut self.state else {
            return self.error(reply::WRONG_STATE);
        };
        match cmd {
            Command::Stat => {
                let (n, size) = drop.stat();
                self.reply(&format!("+OK {n} {size}\r\n"));
            }
            Command::List(None) | Command::Uidl(None) => {
                let list = matches!(cmd, Command::List(_));
                let (n, size) = drop.stat();
                let mut text = if list {
                    format!("+OK {n} messages ({size} octets)\r\n")
                } else {
                    "+OK\r\n".to_owned()
                };
                for (i, m) in drop.live() {
                    if list {
                        text.push_str(&format!("{} {}\r\n", i + 1, m.size));
                    } else {
                        text.push_str(&format!("{} {}\r\n", i + 1, m.uid));
                    }
                }
                text.push_str(".\r\n");
                self.reply(&text);
            }
            Command::List(Some(n)) | Command::Uidl(Some(n)) => match drop.index(n) {
                Ok(i) => {
                    let m = &drop.messages[i];
                    let text = if matches!(cmd, Command::List(_)) {
                        format!("+OK {n} {}\r\n", m.size)
                    } else {
                        format!("+OK {n} {}\r\n", m.uid)
                    };
                    self.reply(&text);
                }
                Err(r) => self.error(r),
            },
            Command::Dele(n) => {
                let i = n as usize - 1;
                match drop.deleted.get_mut(i) {
                    None => self.error(reply::NO_SUCH_MESSAGE),
                    Some(true) => self.error(reply::ALREADY_DELETED),
                    Some(d) => {
                        *d = true;
                        self.reply(reply::DELETED);
                    }
                }
            }
            Command::Rset => {
                drop.deleted.iter_mut().for_each(|d| *d = false);
                let (n, size) = drop.stat();
                self.reply(&format!("+OK {n} messages ({size} octets)\r\n"));
            }
            Command::Retr(n) | Command::Top(n, _) => match drop.index(n) {
                Ok(message) => {
                    let top = match cmd {
                        Command::Top(_, lines) => Some(lines),
                        _ => None,
                    };
                    let State::Transaction(drop) =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        return;
                    };
                    self.state = State::Reading { drop, message, top };
                    self.actions.push_back(Action::Read { message });
                }
                Err(r) => self.error(r),
            },
            _ => self.error(reply::WRONG_STATE),
        }
    }

    /// Answer to [`Action::Read`]: the file is open (the `+OK` goes out and the message
    /// streams), or it could not be.
    pub fn handle_read_started(&mut self, result: Result<(), ReadError>, now: Instant) {
        let State::Reading { .. } = &self.state else {
            return;
        };
        let State::Reading { drop, message, top } =
            std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        self.deadline = Some(now + self.config.timeout);
        match result {
            Ok(()) => {
                let text = match top {
                    None => format!("+OK {} octets\r\n", drop.messages[message].size),
                    Some(_) => "+OK\r\n".to_owned(),
                };
                self.reply(&text);
                self.state = State::Sending {
                    drop,
                    message,
                    retr: top.is_none(),
                    stuffer: DotStuffer::new(top),
                };
            }
            Err(e) => {
                self.state = State::Transaction(drop);
                self.reply(match e {
                    ReadError::Gone => reply::MESSAGE_GONE,
                    ReadError::Failed => reply::MESSAGE_FAILED,
                });
                self.idle_again();
            }
        }
    }

    /// True while a message streams out and there is room for more of it.
    pub fn wants_message_data(&self) -> bool {
        matches!(self.state, State::Sending { .. }) && self.pending() < self.config.output_limit
    }

    /// True while a message is being opened or streams out (the caller holds its file).
    pub fn is_reading_message(&self) -> bool {
        matches!(self.state, State::Sending { .. } | State::Reading { .. })
    }

    /// The next bytes of the message file (any amount; call while
    /// [`Session::wants_message_data`]). A TOP that has what it wants ends here.
    pub fn handle_message_data(&mut self, data: &[u8], now: Instant) {
        let State::Sending { stuffer, .. } = &mut self.state else {
            return;
        };
        self.deadline = Some(now + self.config.timeout);
        stuffer.feed(data, &mut self.out);
        if stuffer.is_done() {
            self.message_sent();
        }
    }

    /// The end of the message file (`Ok`), or a read error midway (`Err`: the response cannot
    /// be finished, so the session is closed without the terminator, and the client cannot
    /// take a partial message for a whole one).
    pub fn handle_message_end(&mut self, result: Result<(), ()>, now: Instant) {
        if !matches!(self.state, State::Sending { .. }) {
            return;
        }
        self.deadline = Some(now + self.config.timeout);
        match result {
            Ok(()) => self.message_sent(),
            Err(()) => {
                self.events.push_back(Event::ReadFailed);
                self.close();
            }
        }
    }

    fn message_sent(&mut self) {
        let State::Sending {
            drop,
            message,
            retr,
            mut stuffer,
        } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        stuffer.finish(&mut self.out);
        if retr {
            self.actions.push_back(Action::Seen { message });
        }
        self.events.push_back(Event::Sent { message, retr });
        self.state = State::Transaction(drop);
        self.idle_again();
    }

    fn quit(&mut self) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Transaction(drop) => {
                let deleted: Vec<usize> = (0..drop.messages.len())
                    .filter(|&i| drop.deleted[i])
                    .collect();
                if deleted.is_empty() {
                    self.reply(reply::BYE);
                    self.close();
                } else {
                    self.state = State::Updating {
                        user: drop.user,
                        deleted: deleted.len(),
                    };
                    self.actions.push_back(Action::Update { deleted });
                }
            }
            State::Authorization { .. } => {
                self.reply(reply::BYE);
                self.close();
            }
            other => {
                self.state = other;
                self.error(reply::WRONG_STATE);
            }
        }
    }

    /// Answer to [`Action::Update`]: whether every marked message is gone (or was already).
    pub fn handle_updated(&mut self, ok: bool) {
        let State::Updating { user, deleted } = &self.state else {
            return;
        };
        self.events.push_back(Event::Updated {
            user: user.clone(),
            deleted: *deleted,
            ok,
        });
        self.reply(if ok { reply::BYE } else { reply::UPDATE_FAILED });
        self.close();
    }

    /// The transport now speaks TLS (after STLS, or from the start on an implicit TLS
    /// listener). After STLS the client starts AUTHORIZATION over (RFC 2595 §4).
    pub fn handle_tls_started(&mut self, now: Instant) {
        self.tls = true;
        if matches!(self.state, State::StartingTls) {
            self.state = State::Authorization { user: None };
            self.idle_again();
        }
        self.deadline = Some(now + self.config.timeout);
    }

    /// True once TLS is on.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The idle deadline passed (the caller checks [`Session::poll_timeout`] first). Nothing
    /// marked is removed (RFC 1939 §3: autologout does not enter UPDATE).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|d| d <= now) {
            self.events.push_back(Event::Timeout);
            if !matches!(self.state, State::Sending { .. }) {
                self.reply(reply::TIMEOUT);
            }
            self.close();
        }
    }

    /// The client closed its side or the connection broke: nothing marked is removed.
    pub fn handle_eof(&mut self) {
        self.close();
    }

    /// The server is stopping: sessions waiting for a command get `-ERR [SYS/TEMP]` now;
    /// busy ones when their current work is done. Nothing marked is removed.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.idle_again();
    }

    /// Closes the session at the shutdown deadline, whatever it was doing (a message being
    /// sent stops without its terminator).
    pub fn force_close(&mut self) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if !matches!(self.state, State::Sending { .. }) {
            self.reply(reply::SHUTTING_DOWN);
        }
        self.close();
    }

    /// Back in a state that waits for the client: a pending shutdown closes the session now.
    fn idle_again(&mut self) {
        if self.shutting_down
            && matches!(
                self.state,
                State::Authorization { .. } | State::SaslResponse | State::Transaction(_)
            )
        {
            self.reply(reply::SHUTTING_DOWN);
            self.close();
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.deadline = None;
    }

    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
    }

    fn error(&mut self, text: &str) {
        self.reply(text);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.events.push_back(Event::TooManyErrors);
            self.reply(reply::TOO_MANY_ERRORS);
            self.close();
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Bytes waiting to be sent.
    pub fn poll_output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` octets of [`Session::poll_output`] were sent.
    pub fn output_written(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > 4 * self.config.output_limit {
                self.out.shrink_to(self.config.output_limit);
            }
        } else if self.out_pos >= self.config.output_limit {
            // A message streaming to a client that never quite catches up: without this the
            // buffer would grow by everything sent (sent bytes are never reused otherwise).
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Octets the output buffer holds allocated (tests: it stays bounded).
    #[cfg(test)]
    pub(crate) fn out_capacity(&self) -> usize {
        self.out.capacity()
    }

    /// The next action for the caller.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to report.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the session times out: in every state that waits for the client (reading its
    /// commands, or it reading a message), none while the caller works for it or once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Authorization { .. }
            | State::SaslResponse
            | State::StartingTls
            | State::Transaction(_)
            | State::Sending { .. } => self.deadline,
            _ => None,
        }
    }

    /// True when more client input is welcome now.
    pub fn wants_read(&self) -> bool {
        matches!(
            self.state,
            State::Authorization { .. } | State::SaslResponse | State::Transaction(_)
        ) && self.pending() < self.config.output_limit
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The protocol state in a word, for the operator (`smtpctl show sessions`).
    pub fn state_name(&self) -> &'static str {
        match &self.state {
            State::Authorization { .. } | State::SaslResponse => "pop3 authorization",
            State::Authenticating { .. } => "pop3 authenticating",
            State::Opening { .. } => "pop3 opening",
            State::StartingTls => "pop3 stls",
            State::Transaction(_) => "pop3 transaction",
            State::Reading { .. } | State::Sending { .. } => "pop3 sending",
            State::Updating { .. } => "pop3 update",
            State::Closed => "closed",
        }
    }

    /// The user whose maildrop this session holds (from the password check on), if any.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            State::Transaction(d)
            | State::Reading { drop: d, .. }
            | State::Sending { drop: d, .. } => Some(&d.user),
            State::Updating { user, .. } | State::Opening { user } => Some(user),
            _ => None,
        }
    }
}
