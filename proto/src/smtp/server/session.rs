//! The SMTP server session as a pure state machine (sans-io): bytes and events in, reply bytes
//! and actions out, time passed in.
//!
//! Inputs: [`Session::handle_input`] (bytes from the client), [`Session::handle_begun`] and
//! [`Session::handle_stored`] (answers to the `Begin` and `Commit` actions),
//! [`Session::handle_tls_started`] and [`Session::handle_tls_established`],
//! [`Session::handle_auth`] (answer to `Authenticate`, SMTP AUTH) and
//! [`Session::handle_user_lookup`] (answer to `LookupUser`, a recipient in LDAP),
//! [`Session::handle_timeout`], [`Session::handle_eof`], [`Session::begin_shutdown`].
//! Outputs: [`Session::poll_output`] (replies to send, in order), [`Session::poll_action`]
//! (queue-file work, STARTTLS, a login or a user look-up to do for the session),
//! [`Session::poll_timeout`] and [`Session::wants_read`] (the session, not the reactor, decides
//! when more input is welcome), [`Session::is_closed`] (the caller closes the connection once
//! the output is sent: there is no close action). It never touches a socket, a file, the clock
//! or the log. AUTH's SASL exchange is in [`super::auth`].
//! Reports: [`Session::poll_event`] (typed [`Event`]s: connect, transaction begin, recipient
//! accepted or refused, commit or failure, TLS, timeout, close) and [`Session::counts`]; the
//! caller turns them into log lines and counters.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use maildir_core::directory::{DeliveredTo, LocalDelivery, LocalRecipient, copy_header};
use maildir_core::{Envelope, ForwardPath, Mailbox, RcptParams, ReversePath};

use super::auth::{self, AuthOutcome, AuthSettings, Exchange, Step, UserLookup};
use super::command::{self, Command, MailParams};
use super::data::{ChunkDecoder, DataDecoder, HopCounter};
use super::policy::{self, Decision, LocalPolicy};
use super::reply::{self, Reply};
use crate::sasl::{self, Secret};

/// What the session records of a TLS connection (for the trace header and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// Longest command line, CR LF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Default [`SessionConfig::output_limit`].
pub const OUTPUT_LIMIT: usize = 8 * 1024;
/// Recipients over the limit answered `452` without counting as errors, per transaction (as
/// Postfix's `smtpd_recipient_overshoot_limit`); those beyond count.
pub const RECIPIENT_OVERSHOOT: usize = 1000;

/// Settings every session of a server shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our host name, in the greeting and trace headers.
    pub hostname: String,
    /// Largest message accepted, in octets.
    pub max_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// How long to wait for each line from the client.
    pub timeout: Duration,
    /// Error replies after which the session is closed.
    pub max_errors: u32,
    /// STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
    /// Most `Received:` fields a message may carry (loop detection).
    pub max_hops: usize,
    /// Where `RCPT TO:<postmaster>` goes; without it that recipient is refused.
    pub postmaster: Option<Mailbox>,
    /// Replies waiting beyond this many octets stop input processing until the client reads.
    pub output_limit: usize,
    /// Local delivery (users, aliases, quota); `None`: every recipient is relayed.
    pub local: Option<LocalPolicy>,
    /// SMTP AUTH: whether and where it is offered.
    pub auth: AuthSettings,
}

/// Work the caller must do on the session's behalf.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Create a queue file; answer with [`Session::handle_begun`].
    Begin,
    /// Append these bytes to the queue file.
    Write(Vec<u8>),
    /// Make the queue file durable, with the users' copies when there are local recipients
    /// (and the queue file only if `LocalDelivery::queue`); answer with
    /// [`Session::handle_stored`].
    Commit(Option<LocalDelivery>),
    /// Discard the queue file.
    Abort,
    /// Send the pending `220`, then start the TLS handshake; answer with
    /// [`Session::handle_tls_started`].
    StartTls,
    /// Does user `name` exist in the external user directory (LDAP)? A local recipient the
    /// users file does not know waits for it; answer with [`Session::handle_user_lookup`].
    LookupUser {
        /// The user name (lower case, tag removed).
        name: String,
    },
    /// Verify this login (SMTP AUTH) off the session's thread; answer with
    /// [`Session::handle_auth`].
    Authenticate {
        /// The user name as the client gave it.
        user: String,
        /// The password as the client gave it.
        password: Secret,
    },
}

/// Why storing a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// No space left (or quota): a temporary failure.
    Full,
    /// Any other write, sync or rename failure.
    Failed,
}

/// Something that happened in the session, for logs and counters: polled with
/// [`Session::poll_event`] like actions, but nothing has to be done about it. Events come in
/// the order things happened; a driver that does not poll them only loses their report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The session began: the greeting is queued.
    Connected,
    /// A command was handled; the session went from state `from` to state `to` (`idle`,
    /// `mail`, `begin`, `data`, `bdat`, `committing`, `starttls`, `closed`).
    Transition {
        /// State before the command.
        from: &'static str,
        /// State after it.
        to: &'static str,
    },
    /// MAIL accepted: a transaction began.
    TxBegin,
    /// RCPT accepted.
    RcptAccepted,
    /// RCPT refused, and why.
    RcptRefused(RcptRefusal),
    /// The message is durable and `250 ... queued as <id>` is queued.
    TxCommitted {
        /// Queue file id.
        id: String,
        /// The envelope sender.
        from: ReversePath,
        /// How many recipients.
        rcpts: usize,
        /// Message size in octets, as received (dot-unstuffed).
        size: u64,
    },
    /// The transaction ended after DATA without the message being stored.
    TxFailed(TxFailure),
    /// Input pipelined after STARTTLS (`n` octets) was discarded, never executed.
    DiscardedAfterStartTls(usize),
    /// The TLS handshake finished with this protocol and cipher.
    TlsEstablished(TlsInfo),
    /// An HTTP verb: the session ends at once.
    NotSmtp,
    /// Too many erroneous commands: `421`, and the session ends.
    TooManyErrors,
    /// The idle deadline passed in state `state`: `421`, and the session ends.
    Timeout {
        /// The state the session was in.
        state: &'static str,
    },
    /// AUTH succeeded: the client is logged in as `user`.
    Authenticated {
        /// The canonical user name.
        user: String,
    },
    /// AUTH was refused after verification (wrong credentials, banned address, or the check
    /// could not be made).
    AuthRefused(AuthOutcome),
    /// The client went away in the middle of state `state` (not reported when idle).
    LostConnection {
        /// The state the session was in.
        state: &'static str,
    },
    /// The session ended (QUIT, `421`, end of input): nothing more is read.
    Closed,
}

/// Why a recipient was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptRefusal {
    /// RCPT without MAIL first.
    NoTransaction,
    /// Over `max_recipients` (`452 4.5.3`).
    TooMany,
    /// A UTF-8 address without the SMTPUTF8 parameter.
    NeedSmtputf8,
    /// `RCPT TO:<postmaster>` with no postmaster address configured.
    NoPostmaster,
    /// An untrusted client asked to relay to this recipient.
    RelayDenied(ForwardPath),
    /// A local domain, nobody there (`550 5.1.1`).
    UnknownUser(ForwardPath),
    /// A local user at or over quota (`452 4.2.2`).
    MailboxFull(ForwardPath),
}

/// An accepted recipient, and its expansion when it is local.
type Accepted = (ForwardPath, Option<LocalRecipient>);

/// Why a transaction failed after DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxFailure {
    /// No queue file could be created.
    Begin(StoreError),
    /// The message was larger than `max_size`.
    TooBig {
        /// Queue file id (discarded).
        id: String,
        /// Octets received.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// More `Received:` fields than `max_hops`: a mail loop.
    TooManyHops {
        /// Queue file id (discarded).
        id: String,
        /// `Received:` fields counted.
        hops: usize,
        /// The limit.
        limit: usize,
        /// The envelope sender.
        from: ReversePath,
    },
    /// The message already carries `Delivered-To:` for a local recipient: a loop.
    DeliveredToLoop {
        /// Queue file id (discarded).
        id: String,
        /// The address found in `Delivered-To:`.
        address: String,
        /// The envelope sender.
        from: ReversePath,
    },
    /// A local user's copy would take it past its quota (and grace): the whole message is
    /// refused with `452 4.2.2`, the client retries later.
    MailboxFull {
        /// Queue file id (discarded).
        id: String,
        /// The `Delivered-To:` address of each user concerned.
        addresses: Vec<String>,
        /// Octets received.
        size: u64,
    },
    /// Writing or committing the queue file failed.
    Store {
        /// Queue file id.
        id: String,
        /// What failed.
        error: StoreError,
    },
}

/// One mail transaction, from MAIL to the end of DATA.
#[derive(Debug, Clone)]
struct Transaction {
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<ForwardPath>,
    /// DSN parameters of each accepted recipient, index for index with `rcpts`.
    rcpt_params: Vec<RcptParams>,
    /// The accepted recipients for the relay (all of them without local delivery).
    remote: Vec<ForwardPath>,
    /// The accepted local recipients, expanded.
    locals: Vec<LocalRecipient>,
    /// Recipients refused for being over the limit.
    overshoot: usize,
}

impl Transaction {
    /// The envelope to store: DSN parameters only when the client gave some, so a message
    /// without them is stored exactly as before the DSN extension.
    /// `recipients` are the ones queued for the relay (all of them, or with local delivery
    /// the remote and forwarded ones); each keeps the parameters its RCPT gave (a forwarded
    /// alias target has none).
    fn envelope(&self, recipients: Vec<ForwardPath>) -> Envelope {
        let params: Vec<RcptParams> = recipients
            .iter()
            .map(|r| {
                self.rcpts
                    .iter()
                    .position(|x| x == r)
                    .and_then(|i| self.rcpt_params.get(i))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let mut e = Envelope::new(self.from.clone(), recipients);
        e.ret = self.params.ret;
        e.envid = self.params.envid.clone();
        if params.iter().any(|p| !p.is_empty()) {
            e.rcpt_params = params;
        }
        e
    }
}

/// A message whose content comes in BDAT chunks (RFC 3030), between or inside chunks.
#[derive(Debug)]
struct Chunked {
    txn: Transaction,
    /// Queue file id.
    id: String,
    decoder: ChunkDecoder,
    hops: HopCounter,
    /// Octets of the current chunk still to come (0 between chunks).
    remaining: u64,
    /// Size of the current chunk, for its reply.
    chunk: u64,
    /// The current chunk is the last one.
    last: bool,
    /// The users' copies to write at the end, if any.
    local: Option<LocalDelivery>,
    /// `Delivered-To:` fields of the message (loop check for local copies).
    delivered_to: DeliveredTo,
}

/// A BDAT command waiting for its queue file: its chunk size and whether it is the last.
#[derive(Debug, Clone, Copy)]
struct PendingChunk {
    size: u64,
    last: bool,
}

/// What the session is doing. Data lives in the state that needs it.
#[derive(Debug)]
enum State {
    /// No transaction (before MAIL, or after one ended).
    Idle,
    /// MAIL accepted; RCPTs being collected.
    Mail(Transaction),
    /// DATA (no chunk) or the first BDAT accepted; waiting for the queue file to be created.
    Begin(Transaction, Option<PendingChunk>),
    /// Receiving message content into queue file `id`.
    Data {
        txn: Transaction,
        id: String,
        decoder: DataDecoder,
        hops: HopCounter,
        /// The users' copies to write at the end, if any.
        local: Option<LocalDelivery>,
        /// `Delivered-To:` fields of the message (loop check for local copies).
        delivered_to: DeliveredTo,
    },
    /// Receiving BDAT chunks into a queue file (or between two of them).
    Bdat(Box<Chunked>),
    /// End of data seen; waiting for the queue file to be durable.
    Committing {
        txn: Transaction,
        id: String,
        size: u64,
    },
    /// STARTTLS accepted; waiting for the transport to switch to TLS.
    StartingTls,
    /// AUTH under way: waiting for the client's next SASL line.
    Auth(Exchange),
    /// AUTH credentials handed to the driver; waiting for [`Session::handle_auth`].
    Authenticating,
    /// QUIT, 421 or end of input: nothing more is read.
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Mail(_) => "mail",
            State::Begin(..) => "begin",
            State::Data { .. } => "data",
            State::Bdat(_) => "bdat",
            State::Committing { .. } => "committing",
            State::StartingTls => "starttls",
            State::Auth(_) => "auth",
            State::Authenticating => "authenticating",
            State::Closed => "closed",
        }
    }
}

/// What one session did, counted as it goes (read with [`Session::counts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// HELO commands.
    pub helo: u32,
    /// EHLO commands.
    pub ehlo: u32,
    /// MAIL commands.
    pub mail: u32,
    /// RCPT commands.
    pub rcpt: u32,
    /// DATA commands.
    pub data: u32,
    /// BDAT commands.
    pub bdat: u32,
    /// RSET commands.
    pub rset: u32,
    /// QUIT commands.
    pub quit: u32,
    /// Every other command, and lines that are no command.
    pub other: u32,
    /// Error replies (4xx and 5xx) to commands and messages.
    pub errors: u32,
    /// Messages stored (`250 ... queued as`).
    pub accepted: u32,
    /// Messages refused after DATA (size, hops, storage).
    pub refused: u32,
    /// Recipients accepted.
    pub rcpts_accepted: u32,
    /// Recipients refused.
    pub rcpts_refused: u32,
    /// Octets of client input consumed.
    pub bytes_in: u64,
    /// Octets of replies sent.
    pub bytes_out: u64,
}

/// An SMTP server session with one client.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    peer: SocketAddr,
    trusted: bool,
    /// HELO/EHLO name and whether it was EHLO.
    helo: Option<(String, bool)>,
    state: State,
    out: Vec<u8>,
    out_pos: usize,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    /// Decoded message content not yet handed out as `Action::Write`.
    body: Vec<u8>,
    /// Discarding the rest of an overlong command line.
    discarding: bool,
    /// Octets of refused BDAT chunk data still to discard (RFC 3030: the data of a refused
    /// chunk is still read, so the session stays in sync).
    skip: u64,
    deadline: Option<Instant>,
    shutting_down: bool,
    counts: Counts,
    /// Errors since the session began or since the last message it delivered: the
    /// `max_errors` limit applies to these.
    recent_errors: u32,
    /// The connection is encrypted.
    tls: bool,
    /// Protocol and cipher, once the handshake finished.
    tls_info: Option<TlsInfo>,
    /// The user the client logged in as (SMTP AUTH).
    auth_user: Option<String>,
    /// A submission listener's session (RFC 6409): MAIL needs AUTH first.
    submission: bool,
    /// A RCPT waiting for `Action::LookupUser`'s answer: the recipient, its parameters, the
    /// user name and the domain.
    rcpt_lookup: Option<(ForwardPath, RcptParams, String, String)>,
    /// Command lines kept for [`Session::poll_command`] while a trace is on (None: off, the
    /// default, and nothing is kept).
    transcript: Option<VecDeque<Vec<u8>>>,
}

impl Session {
    /// A new session: the greeting is queued and the idle timer starts at `now`.
    pub fn new(
        config: Arc<SessionConfig>,
        peer: SocketAddr,
        trusted: bool,
        now: Instant,
    ) -> Session {
        let mut s = Session::blank(config, peer, trusted);
        reply::greeting(&s.config.hostname).write_to(&mut s.out);
        s.events.push_back(Event::Connected);
        s.deadline = Some(now + s.config.timeout);
        s
    }

    fn blank(config: Arc<SessionConfig>, peer: SocketAddr, trusted: bool) -> Session {
        Session {
            config,
            peer,
            trusted,
            helo: None,
            state: State::Idle,
            out: Vec::new(),
            out_pos: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            body: Vec::new(),
            discarding: false,
            skip: 0,
            deadline: None,
            shutting_down: false,
            counts: Counts::default(),
            recent_errors: 0,
            tls: false,
            tls_info: None,
            auth_user: None,
            submission: false,
            rcpt_lookup: None,
            transcript: None,
        }
    }

    /// Answer to `Action::LookupUser`: the recipient waiting for it is accepted as that
    /// user's (quota permitting), or refused.
    pub fn handle_user_lookup(&mut self, found: UserLookup, now: Instant) {
        let Some((to, params, name, domain)) = self.rcpt_lookup.take() else {
            return;
        };
        if !matches!(self.state, State::Mail(_)) {
            return; // The transaction ended meanwhile.
        }
        self.deadline = Some(now + self.config.timeout);
        let size = match &self.state {
            State::Mail(txn) => txn.params.size.unwrap_or(0),
            _ => 0,
        };
        let result = match found {
            UserLookup::Found => {
                let fits = self
                    .config
                    .local
                    .as_ref()
                    .and_then(|p| p.quota.as_ref())
                    .is_none_or(|q| q.fits(&name, size));
                if fits {
                    let original = match &to {
                        ForwardPath::Mailbox(m) => m.to_string(),
                        ForwardPath::Postmaster => "postmaster".to_owned(),
                    };
                    let address = format!("{name}@{domain}");
                    let r = LocalRecipient {
                        original,
                        users: vec![maildir_core::directory::LocalUser { name, address }],
                        forward: Vec::new(),
                    };
                    Ok((to, Some(r)))
                } else {
                    let r = reply::mailbox_full(&to.to_string());
                    Err((RcptRefusal::MailboxFull(to), r, false))
                }
            }
            UserLookup::Missing => {
                let r = reply::unknown_user(&to.to_string());
                Err((RcptRefusal::UnknownUser(to), r, true))
            }
            UserLookup::TempFail => {
                let r = reply::lookup_failed(&to.to_string());
                Err((RcptRefusal::UnknownUser(to), r, false))
            }
        };
        self.rcpt_result(result, params);
    }

    /// The user an unknown local recipient would be in the external directory, with the
    /// domain: the local part in lower case without its tag; `None` when it cannot be a user
    /// name (or there is no external directory).
    fn external_user(&self, to: &ForwardPath) -> Option<(String, String)> {
        let policy = self.config.local.as_ref()?;
        let ForwardPath::Mailbox(m) = to else {
            return None;
        };
        if !self.config.auth.external_users || !policy.directory.is_local_domain(m.domain()) {
            return None;
        }
        let key = maildir_core::directory::lookup_key(m.local_part());
        let name = match policy.directory.delimiter() {
            Some(d) => key.split(d).next().unwrap_or_default().to_owned(),
            None => key,
        };
        let bad = name.is_empty()
            || name.starts_with('.')
            || name.chars().any(|c| c.is_control() || c == '/');
        let domain = m.domain().normalized().trim_end_matches('.').to_lowercase();
        (!bad).then_some((name, domain))
    }

    /// Makes this a submission session (RFC 6409, port 587 style): MAIL before AUTH gets
    /// `530 5.7.0`.
    pub fn set_submission(&mut self) {
        self.submission = true;
    }

    /// The user the client logged in as, if it did.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// Answer to `Action::Authenticate`.
    pub fn handle_auth(&mut self, outcome: AuthOutcome, now: Instant) {
        if !matches!(self.state, State::Authenticating) {
            return; // The session ended meanwhile.
        }
        self.state = State::Idle;
        self.deadline = Some(now + self.config.timeout);
        match outcome {
            AuthOutcome::Ok(user) => {
                self.reply(&reply::AUTH_OK);
                self.events
                    .push_back(Event::Authenticated { user: user.clone() });
                self.auth_user = Some(user);
            }
            AuthOutcome::Bad => {
                self.events.push_back(Event::AuthRefused(AuthOutcome::Bad));
                self.error(reply::AUTH_FAILED);
            }
            AuthOutcome::Banned => {
                self.events
                    .push_back(Event::AuthRefused(AuthOutcome::Banned));
                self.counts.errors += 1;
                self.reply(&reply::AUTH_FAILED);
                let r = reply::banned(&self.config.hostname);
                self.reply(&r);
                self.close();
            }
            AuthOutcome::TempFail => {
                self.events
                    .push_back(Event::AuthRefused(AuthOutcome::TempFail));
                self.reply(&reply::AUTH_TEMP_FAILURE);
            }
        }
        self.after_transaction();
    }

    /// True when AUTH is offered on this connection: there are accounts, and it is encrypted,
    /// or from loopback, or plaintext logins are allowed.
    fn auth_offered(&self) -> bool {
        let a = &self.config.auth;
        a.enabled && (self.tls || a.allow_plaintext || self.peer.ip().to_canonical().is_loopback())
    }

    /// The longest line accepted now: SASL lines (and AUTH with an initial response) may be
    /// longer than commands (RFC 4954 §4).
    fn line_limit(&self, line: &[u8]) -> usize {
        let auth = matches!(self.state, State::Auth(_))
            || line
                .get(..5)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"AUTH "));
        if auth {
            sasl::MAX_LINE
        } else {
            MAX_COMMAND_LINE
        }
    }

    /// Processes client bytes; returns how many were consumed. Unconsumed bytes (a partial
    /// line, or input that must wait for an answer or for the client to read) are offered again.
    pub fn handle_input(&mut self, input: &[u8], now: Instant) -> usize {
        let mut pos = 0;
        while pos < input.len() {
            if matches!(self.state, State::Closed) {
                pos = input.len();
                break;
            }
            if !self.wants_read() {
                break;
            }
            if self.skip > 0 {
                let n = self.skip.min((input.len() - pos) as u64);
                self.skip -= n;
                pos += n as usize;
                self.deadline = Some(now + self.config.timeout);
                continue;
            }
            if let State::Bdat(c) = &mut self.state
                && c.remaining > 0
            {
                let n = c.remaining.min((input.len() - pos) as u64) as usize;
                let start = self.body.len();
                c.decoder.feed(&input[pos..pos + n], &mut self.body);
                c.hops.feed(&self.body[start..]);
                if c.local.is_some() && !c.delivered_to.header_done() {
                    c.delivered_to.feed(&self.body[start..]);
                }
                c.remaining -= n as u64;
                pos += n;
                self.deadline = Some(now + self.config.timeout);
                if c.remaining == 0 {
                    self.chunk_end(now);
                }
                continue;
            }
            if let State::Data {
                decoder,
                hops,
                local,
                delivered_to,
                ..
            } = &mut self.state
            {
                let start = self.body.len();
                let fed = decoder.feed(&input[pos..], &mut self.body);
                hops.feed(&self.body[start..]);
                if local.is_some() && !delivered_to.header_done() {
                    delivered_to.feed(&self.body[start..]);
                }
                pos += fed.consumed;
                if fed.line_ended {
                    self.deadline = Some(now + self.config.timeout);
                }
                if fed.done {
                    self.end_of_data(now);
                }
                continue;
            }
            let rest = &input[pos..];
            let newline = rest.iter().position(|&b| b == b'\n');
            if self.discarding {
                match newline {
                    Some(i) => {
                        pos += i + 1;
                        self.discarding = false;
                        self.deadline = Some(now + self.config.timeout);
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
                    if line.len() + 2 > self.line_limit(line) {
                        if matches!(self.state, State::Auth(_)) {
                            self.state = State::Idle;
                        }
                        self.error(reply::LINE_TOO_LONG);
                    } else if let State::Auth(exchange) = &self.state {
                        let exchange = exchange.clone();
                        self.sasl_line(exchange, line);
                    } else {
                        self.command(line, now);
                    }
                    if matches!(self.state, State::StartingTls) {
                        // RFC 3207 §4.2: anything pipelined after STARTTLS is plaintext
                        // injection; it is dropped, never executed after the handshake.
                        if pos < input.len() {
                            let n = input.len() - pos;
                            self.events.push_back(Event::DiscardedAfterStartTls(n));
                        }
                        pos = input.len();
                    }
                }
                None if rest.len() >= self.line_limit(rest) => {
                    // No line end within the limit: drop what we have and the rest of the line.
                    // An AUTH exchange it was part of is over.
                    if matches!(self.state, State::Auth(_)) {
                        self.state = State::Idle;
                    }
                    self.discarding = true;
                    pos = input.len();
                }
                None => break,
            }
        }
        self.flush_body();
        self.counts.bytes_in += pos as u64;
        pos
    }

    /// Answer to `Action::Begin`: the queue file `id` exists (or could not be created).
    /// `wall` is the time written into the trace header.
    pub fn handle_begun(
        &mut self,
        result: Result<String, StoreError>,
        now: Instant,
        wall: SystemTime,
    ) {
        let (txn, chunk) = match std::mem::replace(&mut self.state, State::Idle) {
            State::Begin(txn, chunk) => (txn, chunk),
            other => {
                self.state = other;
                return;
            }
        };
        match result {
            Ok(id) => {
                // With local recipients the queue envelope lists only the remote and forwarded
                // ones (none: no envelope, the spool is not queued); the copies start at the
                // Received: header.
                let (recipients, mut local) = if txn.locals.is_empty() {
                    (txn.rcpts.clone(), None)
                } else {
                    let (r, l) = policy::plan(&txn.from, &txn.locals, &txn.remote);
                    (r, Some(l))
                };
                let start = self.body.len();
                if !recipients.is_empty() {
                    txn.envelope(recipients).write_to(&mut self.body).ok();
                }
                if let Some(l) = &mut local {
                    // Nothing to queue: the spool is the first user's copy when a rename can
                    // move it (one file written instead of two).
                    let spool_is_copy = self.config.local.as_ref().is_some_and(|p| p.spool_is_copy);
                    if !l.queue
                        && spool_is_copy
                        && let Some(first) = l.copies.first()
                    {
                        let head = copy_header(&txn.from, first);
                        self.body.extend_from_slice(head.as_bytes());
                        l.spool_is_copy = true;
                    }
                    l.content_at = (self.body.len() - start) as u64;
                }
                self.received_header(&id, &txn, wall);
                self.flush_body();
                if let Some(chunk) = chunk {
                    self.state = State::Bdat(Box::new(Chunked {
                        txn,
                        id,
                        decoder: ChunkDecoder::new(self.config.max_size),
                        hops: HopCounter::default(),
                        remaining: chunk.size,
                        chunk: chunk.size,
                        last: chunk.last,
                        local,
                        delivered_to: DeliveredTo::default(),
                    }));
                    self.deadline = Some(now + self.config.timeout);
                    if chunk.size == 0 {
                        self.chunk_end(now);
                    }
                    return;
                }
                self.reply(&reply::START_DATA);
                self.state = State::Data {
                    txn,
                    id,
                    decoder: DataDecoder::new(self.config.max_size),
                    hops: HopCounter::default(),
                    local,
                    delivered_to: DeliveredTo::default(),
                };
            }
            Err(e) => {
                self.counts.refused += 1;
                self.events.push_back(Event::TxFailed(TxFailure::Begin(e)));
                // The chunk that asked for the file still comes: read and drop it.
                self.skip = chunk.map_or(0, |c| c.size);
                self.error(store_reply(e));
                self.after_transaction();
            }
        }
        self.deadline = Some(now + self.config.timeout);
    }

    /// Answer to `Action::Commit`: the message is durable in the Maildir, or storing failed.
    pub fn handle_stored(&mut self, result: Result<(), StoreError>, now: Instant) {
        let (txn, id, size) = match std::mem::replace(&mut self.state, State::Idle) {
            State::Committing { txn, id, size } => (txn, id, size),
            other => {
                self.state = other;
                return;
            }
        };
        match result {
            Ok(()) => {
                self.counts.accepted += 1;
                self.recent_errors = 0;
                self.reply(&reply::queued(&id));
                self.events.push_back(Event::TxCommitted {
                    id,
                    from: txn.from,
                    rcpts: txn.rcpts.len(),
                    size,
                });
            }
            Err(e) => {
                self.counts.refused += 1;
                self.events
                    .push_back(Event::TxFailed(TxFailure::Store { id, error: e }));
                self.error(store_reply(e));
            }
        }
        self.deadline = Some(now + self.config.timeout);
        self.after_transaction();
    }

    /// The transport now speaks TLS (after STARTTLS, or from the start on an implicit TLS
    /// listener). After STARTTLS the session starts over, as RFC 3207 requires: a new EHLO.
    pub fn handle_tls_started(&mut self, now: Instant) {
        self.tls = true;
        self.auth_user = None;
        if matches!(self.state, State::StartingTls) {
            self.state = State::Idle;
            self.helo = None;
        }
        self.deadline = Some(now + self.config.timeout);
        self.after_transaction();
    }

    /// The TLS handshake finished with this protocol and cipher.
    pub fn handle_tls_established(&mut self, info: TlsInfo) {
        self.events.push_back(Event::TlsEstablished(info.clone()));
        self.tls_info = Some(info);
    }

    /// The idle deadline passed (the caller checks [`Session::poll_timeout`] first).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.deadline {
            Some(d) if d <= now && !matches!(self.state, State::Closed) => {
                let state = self.state.name();
                self.events.push_back(Event::Timeout { state });
                self.abort_transaction();
                let r = reply::timeout(&self.config.hostname);
                self.reply(&r);
                self.close();
            }
            _ => {}
        }
    }

    /// The client closed its side.
    pub fn handle_eof(&mut self) {
        if matches!(self.state, State::Closed) {
            return; // Already over (and reported).
        }
        if !matches!(self.state, State::Idle) {
            let state = self.state.name();
            self.events.push_back(Event::LostConnection { state });
        }
        self.abort_transaction();
        self.close();
    }

    /// The server is stopping: idle sessions get 421 now; busy ones after their transaction.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        if matches!(self.state, State::Idle) {
            let r = reply::shutting_down(&self.config.hostname);
            self.reply(&r);
            self.close();
        }
    }

    /// Force-closes a session still busy at the shutdown deadline.
    pub fn force_close(&mut self) {
        if !matches!(self.state, State::Closed) {
            self.abort_transaction();
            let r = reply::shutting_down(&self.config.hostname);
            self.reply(&r);
            self.close();
        }
    }

    /// Reply bytes waiting to be sent.
    pub fn poll_output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` octets of [`Session::poll_output`] were sent.
    pub fn output_written(&mut self, n: usize) {
        let before = self.out_pos;
        self.out_pos = (self.out_pos + n).min(self.out.len());
        self.counts.bytes_out += (self.out_pos - before) as u64;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > 4 * self.config.output_limit {
                self.out.shrink_to(self.config.output_limit);
            }
        }
    }

    /// The next action for the caller.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to report (logs, counters). Poll until `None` after each input, or they
    /// pile up.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if self.events.is_empty() && self.events.capacity() > 0 {
            // An idle session holds no event buffer: thousands of idle connections would
            // otherwise each keep one (about 0.4 KiB) after their first report.
            self.events = VecDeque::new();
        }
        event
    }

    /// When the session times out. Every state that waits for the client has one, including
    /// `StartingTls` (a client that does not read the `220`) and states whose replies the
    /// client does not read (the deadline only moves when a line arrives). Only the states that
    /// wait for the server's own disk work (creating or committing the queue file) and the
    /// closed session (the reactor bounds its linger) have none.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Committing { .. } | State::Begin(..) | State::Authenticating | State::Closed => {
                None
            }
            _ if self.rcpt_lookup.is_some() => None,
            _ => self.deadline,
        }
    }

    /// True when more client input is welcome now.
    pub fn wants_read(&self) -> bool {
        !matches!(
            self.state,
            State::Begin(..)
                | State::Committing { .. }
                | State::StartingTls
                | State::Authenticating
                | State::Closed
        ) && self.rcpt_lookup.is_none()
            && self.out.len() - self.out_pos < self.config.output_limit
    }

    /// True once the session has ended (QUIT, 421, end of input).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True while a transaction is under way (MAIL given, not yet finished).
    pub fn in_transaction(&self) -> bool {
        !matches!(self.state, State::Idle | State::Closed)
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// What this session did so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The state's name (`idle`, `mail`, `begin`, `data`, `bdat`, `committing`, `starttls`,
    /// `closed`), as in [`Event::Transition`].
    pub fn state_name(&self) -> &'static str {
        self.state.name()
    }

    /// Protocol and cipher, once a TLS handshake finished.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls_info.as_ref()
    }

    /// Turns the command transcript on or off: while on, every command line the session
    /// handles (without CR LF; never message content or BDAT chunk data) is kept for
    /// [`Session::poll_command`]. Off (the default) keeps nothing.
    pub fn set_transcript(&mut self, on: bool) {
        match (on, self.transcript.is_some()) {
            (true, false) => self.transcript = Some(VecDeque::new()),
            (false, true) => self.transcript = None,
            _ => {}
        }
    }

    /// The next command line of the transcript (see [`Session::set_transcript`]), in the
    /// order handled. Poll until `None` after each input while the transcript is on.
    pub fn poll_command(&mut self) -> Option<Vec<u8>> {
        self.transcript.as_mut()?.pop_front()
    }

    fn command(&mut self, line: &[u8], now: Instant) {
        if let Some(t) = &mut self.transcript {
            t.push_back(line.to_vec());
        }
        let cmd = match command::parse(line) {
            Ok(cmd) => cmd,
            Err(r) => {
                self.counts.other += 1;
                return self.error(r);
            }
        };
        let before = self.state.name();
        match cmd {
            Command::Helo(name) => {
                self.counts.helo += 1;
                self.hello(name, false);
            }
            Command::Ehlo(name) => {
                self.counts.ehlo += 1;
                self.hello(name, true);
            }
            Command::Mail(from, params) => {
                self.counts.mail += 1;
                self.mail(from, params);
            }
            Command::Rcpt(to, params) => {
                self.counts.rcpt += 1;
                self.rcpt(to, params);
            }
            Command::Data => {
                self.counts.data += 1;
                self.data();
            }
            Command::Bdat { size, last } => {
                self.counts.bdat += 1;
                self.bdat(size, last, now);
            }
            Command::Rset => {
                self.counts.rset += 1;
                self.abort_transaction();
                self.state = State::Idle;
                self.reply(&reply::OK);
                self.after_transaction();
            }
            Command::Noop => self.other_ok(&reply::OK),
            Command::Vrfy => self.other_ok(&reply::VRFY),
            Command::Help => self.other_ok(&reply::HELP),
            Command::StartTls => {
                self.counts.other += 1;
                self.starttls();
            }
            Command::Auth { mechanism, initial } => {
                self.counts.other += 1;
                self.auth(&mechanism, initial.as_deref());
            }
            Command::Quit => {
                self.counts.quit += 1;
                self.abort_transaction();
                self.state = State::Idle;
                self.reply(&reply::BYE);
                self.close();
            }
            Command::Forbidden => {
                self.counts.other += 1;
                self.events.push_back(Event::NotSmtp);
                self.reply(&reply::NOT_SMTP);
                self.close();
            }
        }
        let to = self.state.name();
        self.events
            .push_back(Event::Transition { from: before, to });
    }

    fn other_ok(&mut self, r: &Reply) {
        self.counts.other += 1;
        self.reply(r);
    }

    fn hello(&mut self, name: String, esmtp: bool) {
        // A second HELO/EHLO resets the transaction (RFC 5321 §4.1.4).
        self.abort_transaction();
        self.state = State::Idle;
        self.helo = Some((name, esmtp));
        let host = &self.config.hostname;
        if esmtp {
            let starttls = self.config.starttls && !self.tls;
            let auth = self.auth_offered() && self.auth_user.is_none();
            reply::write_ehlo(&mut self.out, host, self.config.max_size, starttls, auth);
        } else {
            reply::helo(host).write_to(&mut self.out);
        }
        // A stopping server takes no new transaction: HELO/EHLO ended the one in progress.
        self.after_transaction();
    }

    fn starttls(&mut self) {
        if !self.config.starttls {
            return self.error(reply::NOT_IMPLEMENTED);
        }
        if self.tls {
            return self.error(reply::TLS_ACTIVE);
        }
        if !matches!(self.state, State::Idle) {
            return self.error(reply::TRANSACTION_IN_PROGRESS);
        }
        self.reply(&reply::READY_TLS);
        self.state = State::StartingTls;
        self.actions.push_back(Action::StartTls);
    }

    /// `AUTH mechanism [initial-response]` (RFC 4954).
    fn auth(&mut self, mechanism: &str, initial: Option<&str>) {
        if !self.config.auth.enabled {
            return self.error(reply::AUTH_NOT_ENABLED);
        }
        if !self.auth_offered() {
            return self.error(reply::AUTH_NEEDS_TLS);
        }
        if !matches!(self.helo, Some((_, true))) {
            return self.error(reply::AUTH_NEEDS_EHLO);
        }
        if self.auth_user.is_some() {
            return self.error(reply::AUTH_ALREADY);
        }
        if !matches!(self.state, State::Idle) {
            return self.error(reply::TRANSACTION_IN_PROGRESS);
        }
        self.auth_step(auth::start(mechanism, initial));
    }

    /// A line of the client's in a SASL exchange.
    fn sasl_line(&mut self, exchange: Exchange, line: &[u8]) {
        self.state = State::Idle;
        let step = match std::str::from_utf8(line) {
            Ok(l) => auth::respond(exchange, l),
            Err(_) => Step::Fail(reply::AUTH_BAD_RESPONSE),
        };
        self.auth_step(step);
    }

    fn auth_step(&mut self, step: Step) {
        match step {
            Step::Challenge(text, exchange) => {
                self.reply(&reply::challenge(text));
                self.state = State::Auth(exchange);
            }
            Step::Verify(c) => {
                self.state = State::Authenticating;
                self.actions.push_back(Action::Authenticate {
                    user: c.user,
                    password: c.password,
                });
            }
            Step::Fail(r) => {
                self.state = State::Idle;
                self.error(r);
                self.after_transaction();
            }
        }
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) {
        if self.helo.is_none() {
            return self.error(reply::NEED_HELO);
        }
        if !matches!(self.state, State::Idle) {
            return self.error(reply::NESTED_MAIL);
        }
        if params.size.is_some_and(|s| s > self.config.max_size) {
            return self.error(reply::TOO_BIG);
        }
        if from.is_utf8() && !params.smtputf8 {
            return self.error(reply::NEED_SMTPUTF8);
        }
        if self.submission && self.auth_user.is_none() {
            return self.error(reply::AUTH_REQUIRED);
        }
        if let (Some(user), ReversePath::Mailbox(m)) = (&self.auth_user, &from) {
            let owned = self.config.local.as_ref().is_some_and(|p| p.owns(user, m));
            if !owned {
                let r = reply::sender_not_owned(&from.to_string(), user);
                return self.error(r);
            }
        }
        self.state = State::Mail(Transaction {
            from,
            params,
            rcpts: Vec::new(),
            rcpt_params: Vec::new(),
            remote: Vec::new(),
            locals: Vec::new(),
            overshoot: 0,
        });
        self.reply(&reply::MAIL_OK);
        self.events.push_back(Event::TxBegin);
    }

    fn rcpt(&mut self, to: ForwardPath, params: RcptParams) {
        let result = self.check_rcpt(to);
        if let Err((RcptRefusal::UnknownUser(to), ..)) = &result
            && let Some((name, domain)) = self.external_user(to)
        {
            // Perhaps a user of the external directory: ask the driver first.
            self.actions
                .push_back(Action::LookupUser { name: name.clone() });
            self.rcpt_lookup = Some((to.clone(), params, name, domain));
            return;
        }
        self.rcpt_result(result, params);
    }

    fn rcpt_result(
        &mut self,
        result: Result<Accepted, (RcptRefusal, Reply, bool)>,
        params: RcptParams,
    ) {
        match result {
            Ok((to, local)) => {
                if let State::Mail(txn) = &mut self.state {
                    match local {
                        Some(r) => txn.locals.push(r),
                        None => txn.remote.push(to.clone()),
                    }
                    txn.rcpts.push(to);
                    txn.rcpt_params.push(params);
                }
                self.counts.rcpts_accepted += 1;
                self.events.push_back(Event::RcptAccepted);
                self.reply(&reply::RCPT_OK);
            }
            Err((refusal, r, counts_as_error)) => {
                self.counts.rcpts_refused += 1;
                self.events.push_back(Event::RcptRefused(refusal));
                if counts_as_error {
                    self.error(r);
                } else {
                    self.reply(&r);
                }
            }
        }
    }

    /// The recipient to add (with its expansion when it is local), or why not: the refusal, its
    /// reply, and whether the reply counts toward the error limit.
    fn check_rcpt(&mut self, to: ForwardPath) -> Result<Accepted, (RcptRefusal, Reply, bool)> {
        let State::Mail(txn) = &mut self.state else {
            return Err((RcptRefusal::NoTransaction, reply::NEED_MAIL, true));
        };
        if txn.rcpts.len() >= self.config.max_recipients {
            // Not an error of the client's: clients send every recipient and retry the rest
            // later (RFC 5321 §4.5.3.1.8), so it does not count toward the error limit, up to
            // a large overshoot.
            txn.overshoot += 1;
            let counts = txn.overshoot > RECIPIENT_OVERSHOOT;
            return Err((RcptRefusal::TooMany, reply::TOO_MANY_RECIPIENTS, counts));
        }
        if to.is_utf8() && !txn.params.smtputf8 {
            return Err((RcptRefusal::NeedSmtputf8, reply::NEED_SMTPUTF8, true));
        }
        // Our own domains, from any client: a user or alias, nobody, or a full mailbox.
        if let Some(policy) = &self.config.local {
            match policy.decide(&to, txn.params.size.unwrap_or(0)) {
                Decision::Local(r) => return Ok((to, Some(r))),
                Decision::Unknown => {
                    let r = reply::unknown_user(&to.to_string());
                    return Err((RcptRefusal::UnknownUser(to), r, true));
                }
                Decision::OverQuota => {
                    // Not the client's error: it retries later.
                    let r = reply::mailbox_full(&to.to_string());
                    return Err((RcptRefusal::MailboxFull(to), r, false));
                }
                Decision::Remote => {}
            }
        }
        // Not local: the bare postmaster goes to the configured address (from any client, as
        // RFC 5321 §4.5.1 requires), or is refused.
        let (to, postmaster) = match (to, &self.config.postmaster) {
            (ForwardPath::Postmaster, Some(m)) => (ForwardPath::Mailbox(m.clone()), true),
            (ForwardPath::Postmaster, None) => {
                return Err((RcptRefusal::NoPostmaster, reply::NO_POSTMASTER, true));
            }
            (to, _) => (to, false),
        };
        if !self.trusted && !postmaster && self.auth_user.is_none() {
            let r = reply::relay_denied(&to.to_string());
            return Err((RcptRefusal::RelayDenied(to), r, true));
        }
        Ok((to, None))
    }

    fn data(&mut self) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Mail(txn) if !txn.rcpts.is_empty() => {
                self.state = State::Begin(txn, None);
                self.actions.push_back(Action::Begin);
            }
            State::Mail(txn) => {
                self.state = State::Mail(txn);
                self.error(reply::NEED_RCPT);
            }
            State::Bdat(c) => {
                // RFC 3030 §3: DATA and BDAT do not mix in one transaction.
                self.state = State::Bdat(c);
                self.error(reply::DATA_AFTER_BDAT);
            }
            other => {
                self.state = other;
                self.error(reply::NEED_MAIL);
            }
        }
    }

    /// `BDAT size [LAST]`: the chunk data (`size` octets) follows the command line at once,
    /// and is read whatever the answer, so the session stays in sync.
    fn bdat(&mut self, size: u64, last: bool, now: Instant) {
        let max = self.config.max_size;
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Mail(txn) if !txn.rcpts.is_empty() => {
                if size > max {
                    // Line ends only grow in normalising: this chunk alone is too big.
                    self.skip = size;
                    return self.chunk_too_big(None, size);
                }
                self.state = State::Begin(txn, Some(PendingChunk { size, last }));
                self.actions.push_back(Action::Begin);
            }
            State::Bdat(mut c) => {
                let total = c.decoder.size().saturating_add(size);
                if total > max {
                    self.skip = size;
                    return self.chunk_too_big(Some(c.id), total);
                }
                c.remaining = size;
                c.chunk = size;
                c.last = last;
                self.state = State::Bdat(c);
                if size == 0 {
                    self.chunk_end(now);
                }
            }
            other => {
                // No transaction (or none left after a failed chunk: RFC 3030 §2, the chunks
                // already pipelined are read and dropped), or no recipient yet.
                let r = match &other {
                    State::Mail(_) => reply::NEED_RCPT,
                    _ => reply::NEED_MAIL,
                };
                self.state = other;
                self.skip = size;
                self.error(r);
            }
        }
    }

    /// A chunk made the message larger than `max_size`: the transaction is over (RFC 3030:
    /// a failed chunk fails the transaction), its queue file (if any) discarded.
    fn chunk_too_big(&mut self, id: Option<String>, size: u64) {
        self.counts.refused += 1;
        if let Some(id) = id {
            self.body.clear();
            self.actions.push_back(Action::Abort);
            self.events.push_back(Event::TxFailed(TxFailure::TooBig {
                id,
                size,
                limit: self.config.max_size,
            }));
        }
        self.state = State::Idle;
        self.error(reply::TOO_BIG);
        self.after_transaction();
    }

    /// The current chunk's data has all arrived: answer it, or end the message after LAST.
    fn chunk_end(&mut self, now: Instant) {
        let State::Bdat(c) = &mut self.state else {
            return;
        };
        if c.decoder.too_big() {
            let (id, size) = (c.id.clone(), c.decoder.size());
            return self.chunk_too_big(Some(id), size);
        }
        if !c.last {
            let r = reply::chunk_received(c.chunk);
            return self.reply(&r);
        }
        let start = self.body.len();
        c.decoder.finish(&mut self.body);
        c.hops.feed(&self.body[start..]);
        self.flush_body();
        let State::Bdat(c) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let Chunked {
            txn,
            id,
            decoder,
            hops,
            local,
            delivered_to,
            ..
        } = *c;
        if decoder.too_big() {
            // The CR LF added at the end went over the limit.
            return self.chunk_too_big(Some(id), decoder.size());
        }
        self.finish_message(txn, id, decoder.size(), &hops, (local, &delivered_to), now);
    }

    fn end_of_data(&mut self, now: Instant) {
        self.flush_body();
        let (txn, id, decoder, hops, local, delivered_to) =
            match std::mem::replace(&mut self.state, State::Idle) {
                State::Data {
                    txn,
                    id,
                    decoder,
                    hops,
                    local,
                    delivered_to,
                } => (txn, id, decoder, hops, local, delivered_to),
                other => {
                    self.state = other;
                    return;
                }
            };
        if decoder.too_big() {
            self.counts.refused += 1;
            self.events.push_back(Event::TxFailed(TxFailure::TooBig {
                id,
                size: decoder.size(),
                limit: self.config.max_size,
            }));
            self.actions.push_back(Action::Abort);
            self.error(reply::TOO_BIG);
            self.deadline = Some(now + self.config.timeout);
            self.after_transaction();
            return;
        }
        self.finish_message(txn, id, decoder.size(), &hops, (local, &delivered_to), now);
    }

    /// The whole message (DATA or BDAT) is in the queue file: refuse a mail loop, or commit.
    fn finish_message(
        &mut self,
        txn: Transaction,
        id: String,
        size: u64,
        hops: &HopCounter,
        (local, delivered_to): (Option<LocalDelivery>, &DeliveredTo),
        now: Instant,
    ) {
        if hops.count() > self.config.max_hops {
            self.counts.refused += 1;
            self.events
                .push_back(Event::TxFailed(TxFailure::TooManyHops {
                    id,
                    hops: hops.count(),
                    limit: self.config.max_hops,
                    from: txn.from,
                }));
            self.actions.push_back(Action::Abort);
            self.error(reply::TOO_MANY_HOPS);
            self.deadline = Some(now + self.config.timeout);
            self.after_transaction();
            return;
        }
        if let Some(c) = local
            .iter()
            .flat_map(|l| &l.copies)
            .find(|c| delivered_to.contains(&c.delivered_to))
        {
            self.counts.refused += 1;
            self.events
                .push_back(Event::TxFailed(TxFailure::DeliveredToLoop {
                    id,
                    address: c.delivered_to.clone(),
                    from: txn.from,
                }));
            self.actions.push_back(Action::Abort);
            self.error(reply::DELIVERED_TO_LOOP);
            self.deadline = Some(now + self.config.timeout);
            self.after_transaction();
            return;
        }
        // The real size against each user's quota (SIZE= was checked at RCPT, if declared):
        // no copy goes past it silently. One reply for the message, so the message waits
        // (452) when any of its copies does not fit.
        let full: Vec<String> = match (&self.config.local, &local) {
            (Some(p), Some(l)) => p
                .over_quota(l, size)
                .iter()
                .map(|c| c.delivered_to.clone())
                .collect(),
            _ => Vec::new(),
        };
        if !full.is_empty() {
            self.counts.refused += 1;
            let r = reply::message_mailbox_full(&full);
            self.events
                .push_back(Event::TxFailed(TxFailure::MailboxFull {
                    id,
                    addresses: full,
                    size,
                }));
            self.actions.push_back(Action::Abort);
            // Not the client's error: it retries later.
            self.reply(&r);
            self.deadline = Some(now + self.config.timeout);
            self.after_transaction();
            return;
        }
        self.actions.push_back(Action::Commit(local));
        self.state = State::Committing { txn, id, size };
    }

    fn received_header(&mut self, id: &str, txn: &Transaction, wall: SystemTime) {
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let proto = match (esmtp, txn.params.smtputf8) {
            (true, true) => "UTF8SMTP",
            (true, false) => "ESMTP",
            (false, _) => "SMTP",
        };
        let s = match (self.tls, self.auth_user.is_some()) {
            (true, true) => "SA",
            (true, false) => "S",
            (false, true) => "A",
            (false, false) => "",
        };
        let auth = match &self.auth_user {
            Some(u) if self.config.auth.received_user => {
                format!("\t(Authenticated sender: {u})\r\n")
            }
            _ => String::new(),
        };
        let using = match &self.tls_info {
            Some(t) => format!("\t(using {} with cipher {})\r\n", t.version, t.cipher),
            None => String::new(),
        };
        let header = format!(
            "Received: from {helo} (unknown [{}])\r\n{using}{auth}\tby {} with {proto}{s} id {id};\r\n\t{}\r\n",
            self.peer.ip(),
            self.config.hostname,
            maildir_core::date::rfc5322(wall)
        );
        self.body.extend_from_slice(header.as_bytes());
    }

    /// After a transaction ends: a stopping server closes the session now.
    fn after_transaction(&mut self) {
        if self.shutting_down && matches!(self.state, State::Idle) {
            let r = reply::shutting_down(&self.config.hostname);
            self.reply(&r);
            self.close();
        }
    }

    fn abort_transaction(&mut self) {
        self.rcpt_lookup = None;
        if matches!(self.state, State::Data { .. } | State::Bdat(_)) {
            self.body.clear();
            self.actions.push_back(Action::Abort);
        }
        if !matches!(self.state, State::Committing { .. }) {
            // An AUTH exchange ends too (its answer, if one is due, finds the session idle).
            self.state = State::Idle;
        }
    }

    fn flush_body(&mut self) {
        if !self.body.is_empty() {
            let chunk = std::mem::take(&mut self.body);
            self.actions.push_back(Action::Write(chunk));
        }
    }

    fn reply(&mut self, r: &Reply) {
        r.write_to(&mut self.out);
    }

    fn error(&mut self, r: Reply) {
        self.counts.errors += 1;
        self.recent_errors += 1;
        self.reply(&r);
        if self.recent_errors >= self.config.max_errors && !matches!(self.state, State::Closed) {
            self.events.push_back(Event::TooManyErrors);
            self.abort_transaction();
            let r = reply::too_many_errors(&self.config.hostname);
            self.reply(&r);
            self.close();
        }
    }

    fn close(&mut self) {
        if !matches!(self.state, State::Closed) {
            self.events.push_back(Event::Closed);
        }
        self.state = State::Closed;
    }
}

fn store_reply(e: StoreError) -> Reply {
    match e {
        StoreError::Full => reply::STORE_FULL,
        StoreError::Failed => reply::STORE_FAILED,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read the clock to drive the session
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(0);

    fn config() -> Arc<SessionConfig> {
        Arc::new(SessionConfig {
            hostname: "mx.test".into(),
            max_size: 1000,
            max_recipients: 3,
            timeout: Duration::from_secs(300),
            max_errors: 20,
            starttls: true,
            max_hops: 3,
            postmaster: None,
            output_limit: OUTPUT_LIMIT,
            local: None,
            auth: Default::default(),
        })
    }

    /// What a driven session produced: reply bytes and stored messages.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Outcome {
        pub(super) replies: String,
        pub(super) stored: Vec<Vec<u8>>,
        pub(super) closed: bool,
        /// Every event but `DiscardedAfterStartTls` (whose count depends on the split).
        pub(super) events: Vec<Event>,
        pub(super) counts: Counts,
        /// The command transcript ([`Session::set_transcript`]).
        pub(super) commands: Vec<String>,
    }

    /// Feeds `input` in pieces cut at `cuts`, acting like the reactor (store always succeeds).
    fn drive(input: &[u8], cuts: &[usize], trusted: bool) -> Outcome {
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        drive_session(
            Session::new(config(), peer, trusted, Instant::now()),
            input,
            cuts,
        )
    }

    /// The test driver's password check: `right` logs in as the (lower-cased) user, the user
    /// `banned` is banned, `temp` cannot be checked, anything else is wrong.
    fn check_login(user: &str, password: &[u8]) -> AuthOutcome {
        match (user, password) {
            ("banned", _) => AuthOutcome::Banned,
            ("temp", _) => AuthOutcome::TempFail,
            (u, b"right") => AuthOutcome::Ok(u.to_lowercase()),
            _ => AuthOutcome::Bad,
        }
    }

    /// [`drive`] for a session made by the test.
    pub(super) fn drive_session(mut s: Session, input: &[u8], cuts: &[usize]) -> Outcome {
        let now = Instant::now();
        s.set_transcript(true);
        let mut commands = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut stored = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        let mut events = Vec::new();
        let mut start = 0;
        let mut n = 0;
        let mut pieces: Vec<&[u8]> = Vec::new();
        for &c in cuts.iter().chain([input.len()].iter()) {
            let c = c.clamp(start, input.len());
            pieces.push(&input[start..c]);
            start = c;
        }
        for piece in pieces {
            pending.extend_from_slice(piece);
            loop {
                let used = s.handle_input(&pending, now + T0);
                pending.drain(..used);
                while let Some(c) = s.poll_command() {
                    commands.push(String::from_utf8_lossy(&c).into_owned());
                }
                let mut acted = false;
                while let Some(a) = s.poll_action() {
                    acted = true;
                    match a {
                        Action::Begin => {
                            n += 1;
                            current = Some(Vec::new());
                            s.handle_begun(Ok(format!("ID{n}")), now, SystemTime::UNIX_EPOCH);
                        }
                        Action::Write(b) => current.as_mut().unwrap().extend_from_slice(&b),
                        Action::Commit(_) => {
                            stored.push(current.take().unwrap());
                            s.handle_stored(Ok(()), now);
                        }
                        Action::Abort => current = None,
                        Action::StartTls => s.handle_tls_started(now),
                        Action::Authenticate { user, password } => {
                            s.handle_auth(check_login(&user, &password.0), now);
                        }
                        Action::LookupUser { name } => {
                            let found = match name.as_str() {
                                "dave" => UserLookup::Found,
                                "down" => UserLookup::TempFail,
                                _ => UserLookup::Missing,
                            };
                            s.handle_user_lookup(found, now);
                        }
                    }
                }
                out.extend_from_slice(s.poll_output());
                let k = s.poll_output().len();
                s.output_written(k);
                while let Some(e) = s.poll_event() {
                    if !matches!(e, Event::DiscardedAfterStartTls(_)) {
                        events.push(e);
                    }
                }
                if used == 0 && !acted {
                    break;
                }
            }
        }
        Outcome {
            replies: String::from_utf8(out).unwrap(),
            stored,
            closed: s.is_closed(),
            events,
            counts: *s.counts(),
            commands,
        }
    }

    /// The command transcript holds every command line once, in order, and never message
    /// content or BDAT chunk data, however the input is split; off, it keeps nothing.
    #[test]
    fn transcript_has_commands_only_any_split() {
        let input = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
            DATA\r\nMAIL FROM:<in@body>\r\n.\r\n\
            MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nBDAT 12 LAST\r\nQUIT\r\nbody\r\n\
            NOOP\r\nQUIT\r\n";
        let o = check_splits(input, true);
        assert_eq!(
            o.commands,
            [
                "EHLO c.test",
                "MAIL FROM:<a@x.test>",
                "RCPT TO:<b@y.test>",
                "DATA",
                "MAIL FROM:<a@x.test>",
                "RCPT TO:<c@y.test>",
                "BDAT 12 LAST",
                "NOOP",
                "QUIT"
            ]
        );
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let mut s = Session::new(config(), peer, true, Instant::now());
        s.handle_input(b"EHLO c.test\r\n", Instant::now());
        assert_eq!(s.poll_command(), None, "off by default");
        s.set_transcript(true);
        s.handle_input(b"NOOP\r\n", Instant::now());
        s.set_transcript(false);
        assert_eq!(s.poll_command(), None, "turning it off drops what was kept");
    }

    /// The outcome must not depend on how the input is split.
    fn check_splits(input: &[u8], trusted: bool) -> Outcome {
        let whole = drive(input, &[], trusted);
        for i in 0..=input.len() {
            assert_eq!(drive(input, &[i], trusted), whole, "split at {i}");
        }
        let bytes: Vec<usize> = (1..input.len()).collect();
        assert_eq!(drive(input, &bytes, trusted), whole, "byte by byte");
        whole
    }

    fn codes(replies: &str) -> Vec<String> {
        replies
            .split("\r\n")
            .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
            .map(|l| l[..3].to_owned())
            .collect()
    }

    #[test]
    fn pipelined_transaction_any_split() {
        let input = b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@z.test>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
        let o = check_splits(input, true);
        assert_eq!(
            codes(&o.replies),
            ["220", "250", "250", "250", "250", "354", "250", "221"]
        );
        assert!(o.replies.contains("250 2.0.0 Ok: queued as ID1\r\n"));
        assert!(o.closed);
        assert_eq!(o.stored.len(), 1);
        let msg = String::from_utf8(o.stored[0].clone()).unwrap();
        assert!(msg.starts_with(
            "Return-Path: <a@x.test>\r\nX-Original-To: <b@y.test>\r\nX-Original-To: <c@z.test>\r\nReceived: from client.test (unknown [192.0.2.1])\r\n\tby mx.test with ESMTP id ID1;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        ), "{msg}");
        assert!(msg.ends_with("\r\nSubject: hi\r\n\r\n.dot\r\n"), "{msg}");
    }

    #[test]
    fn events_and_counts_from_a_transcript() {
        let input = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<b@\xc3\xa9.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n";
        let o = check_splits(input, true);
        let t = |from, to| Event::Transition { from, to };
        assert_eq!(
            o.events,
            [
                Event::Connected,
                t("idle", "idle"),
                Event::TxBegin,
                t("idle", "mail"),
                Event::RcptAccepted,
                t("mail", "mail"),
                Event::RcptRefused(RcptRefusal::NeedSmtputf8),
                t("mail", "mail"),
                t("mail", "begin"),
                Event::TxCommitted {
                    id: "ID1".into(),
                    from: ReversePath::parse("<a@x.test>").unwrap(),
                    rcpts: 1,
                    size: 4,
                },
                Event::Closed,
                t("idle", "closed"),
            ]
        );
        let c = o.counts;
        assert_eq!((c.ehlo, c.mail, c.rcpt, c.data, c.quit), (1, 1, 2, 1, 1));
        assert_eq!((c.errors, c.accepted, c.refused), (1, 1, 0));
        assert_eq!((c.rcpts_accepted, c.rcpts_refused), (1, 1));
        assert_eq!(c.bytes_in, input.len() as u64);
        assert_eq!(c.bytes_out, o.replies.len() as u64);

        // Refusals: relay, a message over the size limit, and a timeout mid-transaction.
        let input = b"HELO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n";
        let o = check_splits(input, false);
        assert!(
            o.events
                .contains(&Event::RcptRefused(RcptRefusal::RelayDenied(
                    ForwardPath::parse("<b@y.test>").unwrap()
                )))
        );
        let big = format!(
            "HELO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n{}\r\n.\r\n",
            "x".repeat(1200)
        );
        let o = drive(big.as_bytes(), &[], true);
        assert!(
            o.events.contains(&Event::TxFailed(TxFailure::TooBig {
                id: "ID1".into(),
                size: 1202,
                limit: 1000,
            })),
            "{:?}",
            o.events
        );
        assert_eq!((o.counts.accepted, o.counts.refused), (0, 1));

        let now = Instant::now();
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let mut s = Session::new(config(), peer, true, now);
        s.handle_input(b"HELO c\r\nMAIL FROM:<a@x.test>\r\n", now);
        s.handle_timeout(now + Duration::from_secs(301));
        s.handle_eof();
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            events.ends_with(&[Event::Timeout { state: "mail" }, Event::Closed]),
            "{events:?}"
        );
    }

    #[test]
    fn every_error_class_then_success() {
        let long = format!("NOOP {}\r\n", "x".repeat(600));
        let mut input = Vec::new();
        for l in [
            "MAIL FROM:<a@x.test>\r\n", // 503 before HELO
            "EHLO c\r\n",
            "RCPT TO:<b@y.test>\r\n",             // 503 need MAIL
            "DATA\r\n",                           // 503 need MAIL
            "BOGUS\r\n",                          // 500
            "MAIL FROM\r\n",                      // 501 syntax
            "MAIL FROM:<a b@x.test>\r\n",         // 501 5.1.7
            "MAIL FROM:<a@x.test> SIZE=5000\r\n", // 552
            "MAIL FROM:<a@x.test> FOO\r\n",       // 555
            "MAIL FROM:<ü@x.test>\r\n",           // 553
            "MAIL FROM:<a@x.test>\r\n",
            "MAIL FROM:<a@x.test>\r\n", // 503 nested
            "DATA\r\n",                 // 503 need RCPT
            "RCPT TO:<b c@y.test>\r\n", // 501 5.1.3
            "RCPT TO:<postmaster>\r\n", // 550: no --postmaster
            "RCPT TO:<b@y.test>\r\n",
            "RCPT TO:<c@y.test>\r\n",
            "RCPT TO:<d@y.test>\r\n",
            "RCPT TO:<e@y.test>\r\n", // 452 (max 3)
        ] {
            input.extend_from_slice(l.as_bytes());
        }
        input.extend_from_slice(long.as_bytes()); // 500 line too long
        input.extend_from_slice(b"DATA\r\nhello\r\n.\r\nQUIT\r\n");
        let o = check_splits(&input, true);
        assert_eq!(
            codes(&o.replies),
            [
                "220", "503", "250", "503", "503", "500", "501", "501", "552", "555", "553", "250",
                "503", "503", "501", "550", "250", "250", "250", "452", "500", "354", "250", "221"
            ]
        );
        assert!(o.replies.contains("501 5.1.7 "));
        assert!(o.replies.contains("501 5.1.3 "));
        assert!(o.replies.contains("452 4.5.3 "));
        assert!(
            o.replies
                .contains("550 5.1.1 <postmaster>: no local delivery")
        );
        assert!(o.replies.contains("500 5.5.2 Error: line too long"));
        assert_eq!(o.stored.len(), 1);
    }

    #[test]
    fn untrusted_client_cannot_relay() {
        let o = check_splits(
            b"HELO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
            false,
        );
        assert_eq!(codes(&o.replies), ["220", "250", "250", "554", "503"]);
        assert!(
            o.replies
                .contains("554 5.7.1 <b@y.test>: Relay access denied")
        );
        assert!(o.stored.is_empty());
    }

    #[test]
    fn oversize_message_is_refused_after_the_dot() {
        let mut input =
            b"HELO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".to_vec();
        for _ in 0..30 {
            input.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        input.extend_from_slice(b".\r\nRSET\r\n");
        let o = drive(&input, &[], true);
        assert_eq!(
            codes(&o.replies),
            ["220", "250", "250", "250", "354", "552", "250"]
        );
        assert!(o.stored.is_empty());
    }

    /// The stored message after the envelope and the 3-line `Received:` header.
    fn content(stored: &[u8]) -> String {
        let msg = String::from_utf8_lossy(stored).into_owned();
        let i = msg
            .find("\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n")
            .unwrap();
        msg[i + "\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n".len()..].to_owned()
    }

    #[test]
    fn bdat_chunks_pipelined_any_split() {
        let input = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
            BDAT 13\r\nSubject: hi\r\nBDAT 17 LAST\r\n\r\n.\r\nQUIT\r\nbody\r\n\
            MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nBDAT 0 LAST\r\n\
            MAIL FROM:<a@x.test>\r\nRCPT TO:<d@y.test>\r\nBDAT 5\r\nx\ny\rzBDAT 0\r\nBDAT 1 last\r\n\n\
            QUIT\r\n";
        let o = check_splits(input, true);
        assert_eq!(
            codes(&o.replies),
            [
                "220", "250", "250", "250", "250", "250", "250", "250", "250", "250", "250", "250",
                "250", "250", "221"
            ]
        );
        assert!(
            o.replies.contains("250 2.0.0 Ok: 13 octets\r\n"),
            "{}",
            o.replies
        );
        assert!(
            o.replies.contains("250 2.0.0 Ok: 0 octets\r\n"),
            "{}",
            o.replies
        );
        assert!(o.replies.contains("250 2.0.0 Ok: queued as ID1\r\n"));
        assert!(o.replies.contains("250 2.0.0 Ok: queued as ID3\r\n"));
        assert_eq!(o.stored.len(), 3);
        let msg = String::from_utf8(o.stored[0].clone()).unwrap();
        assert!(msg.starts_with(
            "Return-Path: <a@x.test>\r\nX-Original-To: <b@y.test>\r\nReceived: from c.test (unknown [192.0.2.1])\r\n\tby mx.test with ESMTP id ID1;\r\n"
        ), "{msg}");
        // Exact octets: no dot-unstuffing, no end-of-data search.
        assert_eq!(
            content(&o.stored[0]),
            "Subject: hi\r\n\r\n.\r\nQUIT\r\nbody\r\n"
        );
        assert_eq!(content(&o.stored[1]), "");
        // Bare LF and CR normalised as DATA does; the missing final line end added.
        assert_eq!(content(&o.stored[2]), "x\r\ny\r\nz\r\n");
        let c = o.counts;
        assert_eq!((c.bdat, c.data, c.accepted, c.errors), (6, 0, 3, 0));
        assert_eq!(c.bytes_in, input.len() as u64);
        assert!(o.events.contains(&Event::TxCommitted {
            id: "ID3".into(),
            from: ReversePath::parse("<a@x.test>").unwrap(),
            rcpts: 1,
            size: 9,
        }));
    }

    #[test]
    fn bdat_refusals_keep_the_session_in_sync() {
        let mut input = b"EHLO c.test\r\n\
            BDAT 6\r\nQUIT\r\n\
            MAIL FROM:<a@x.test>\r\nBDAT 6 LAST\r\nRSET\r\n\
            RCPT TO:<b@y.test>\r\nBDAT 4 LAST\r\nab\r\n\
            MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 600\r\n"
            .to_vec();
        input.extend_from_slice(&[b'x'; 600]);
        // Over the limit (1000) by the declared size: refused, data read and dropped; the
        // chunk after it in the pipeline has no transaction any more (its data is dropped too).
        input.extend_from_slice(b"BDAT 600\r\n");
        input.extend_from_slice(&[b'y'; 600]);
        input.extend_from_slice(b"BDAT 6 LAST\r\nQUIT\r\nQUIT\r\n");
        let o = check_splits(&input, true);
        assert_eq!(
            codes(&o.replies),
            [
                "220", "250", // EHLO
                "503", // BDAT without MAIL: its "QUIT" is data, dropped
                "250", "503", // MAIL, BDAT without RCPT: its "RSET" is data, dropped
                "250", "250", // RCPT (the transaction went on), BDAT LAST: stored
                "250", "250", "250", "552", "503", // 552 fails the transaction
                "221",
            ],
            "{}",
            o.replies
        );
        assert!(o.closed);
        assert_eq!(o.stored.len(), 1);
        assert_eq!(content(&o.stored[0]), "ab\r\n");
        assert!(o.events.contains(&Event::TxFailed(TxFailure::TooBig {
            id: "ID2".into(),
            size: 1200,
            limit: 1000,
        })));
        assert_eq!(o.counts.bytes_in, input.len() as u64);

        // DATA after BDAT in one transaction: 503, the transaction goes on with BDAT.
        let input = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
            BDAT 4\r\nab\r\nDATA\r\nBDAT 4 LAST\r\ncd\r\n\
            MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 600 LAST\r\n";
        let mut input = input.to_vec();
        input.extend_from_slice(&[b'\n'; 600]);
        input.extend_from_slice(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 1001\r\n");
        input.extend_from_slice(&[b'z'; 1001]);
        input.extend_from_slice(b"BDAT 2 LAST\r\nzz");
        input.extend_from_slice(
            b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 3 LAST\r\nok\nQUIT\r\n",
        );
        let o = check_splits(&input, true);
        assert_eq!(
            codes(&o.replies),
            [
                "220", "250", "250", "250", "250", "503", "250", // first message
                "250", "250", "552", // bare LFs: 1200 octets stored form
                "250", "250", "552",
                "503", // declared 1001: refused at once, LAST has no MAIL
                "250", "250", "250", "221"
            ],
            "{}",
            o.replies
        );
        assert!(o.replies.contains("503 5.5.1 Error: DATA after BDAT"));
        assert!(o.replies.contains("552 5.3.4 "));
        assert_eq!(o.stored.len(), 2);
        assert_eq!(content(&o.stored[0]), "ab\r\ncd\r\n");
        assert_eq!(content(&o.stored[1]), "ok\r\n");
        assert_eq!(o.counts.refused, 2);
        assert!(o.events.contains(&Event::TxFailed(TxFailure::TooBig {
            id: "ID2".into(),
            size: 1200,
            limit: 1000,
        })));
    }

    #[test]
    fn bdat_aborted_by_rset_ehlo_quit_and_too_many_hops() {
        for end in ["RSET\r\n", "EHLO c.test\r\n", "QUIT\r\n"] {
            let input = format!(
                "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 4\r\nab\r\n{end}"
            );
            let now = Instant::now();
            let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
            let mut s = Session::new(config(), peer, true, now);
            s.handle_input(input.as_bytes(), now);
            let mut actions = Vec::new();
            while let Some(a) = s.poll_action() {
                if a == Action::Begin {
                    s.handle_begun(Ok("ID1".into()), now, SystemTime::UNIX_EPOCH);
                    s.handle_input(&input.as_bytes()[input.find("ab").unwrap()..], now);
                }
                actions.push(a);
            }
            assert_eq!(actions.last(), Some(&Action::Abort), "{end}: {actions:?}");
            assert!(!s.in_transaction() || s.is_closed(), "{end}");
        }
        // Over max_hops (3) in a BDAT message: 554 after LAST, nothing stored.
        let input = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
            BDAT 26\r\nReceived: a\r\nReceived: b\r\nBDAT 27 LAST\r\nReceived: c\nReceived: d\r\n\r\nQUIT\r\n";
        let o = check_splits(input, true);
        assert_eq!(
            codes(&o.replies),
            ["220", "250", "250", "250", "250", "554", "221"]
        );
        assert!(o.replies.contains("554 5.4.6 "));
        assert!(o.stored.is_empty());
    }

    #[test]
    fn bdat_store_failure_and_timeout() {
        // No queue file: 452, and the chunk's data ("QUIT") is read and dropped.
        let now = Instant::now();
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let mut s = Session::new(config(), peer, true, now);
        let input = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n";
        let used = s.handle_input(input, now);
        assert_eq!(s.poll_action(), Some(Action::Begin));
        s.handle_begun(Err(StoreError::Full), now, SystemTime::UNIX_EPOCH);
        assert_eq!(s.handle_input(&input[used..], now), input.len() - used);
        assert_eq!(s.poll_action(), None);
        let out = String::from_utf8_lossy(s.poll_output()).into_owned();
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "452", "250"],
            "{out}"
        );
        assert!(!s.is_closed());

        // A timeout between chunks discards the queue file.
        let mut s = Session::new(config(), peer, true, now);
        let used = s.handle_input(
            b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 2\r\nab",
            now,
        );
        assert_eq!(s.poll_action(), Some(Action::Begin));
        s.handle_begun(Ok("ID1".into()), now, SystemTime::UNIX_EPOCH);
        assert!(matches!(s.poll_action(), Some(Action::Write(_))));
        s.handle_input(b"ab", now);
        assert!(used > 0 && s.in_transaction());
        s.handle_timeout(now + Duration::from_secs(301));
        let actions: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
        assert_eq!(actions, [Action::Write(b"ab".to_vec()), Action::Abort]);
        assert!(s.is_closed());
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            events.contains(&Event::Timeout { state: "bdat" }),
            "{events:?}"
        );
    }

    #[test]
    fn dsn_parameters_are_stored_in_the_envelope() {
        let input = b"EHLO c.test\r\nMAIL FROM:<a@x.test> RET=HDRS ENVID=QQ+2Bxyz\r\n\
            RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40y.test\r\n\
            RCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test> notify=never\r\n\
            RCPT TO:<e@y.test> NOTIFY=NEVER,DELAY\r\n\
            DATA\r\nhi\r\n.\r\n\
            MAIL FROM:<a@x.test> ENVID=x ENVID=y\r\n\
            MAIL FROM:<a@x.test> RET=FULL\r\nRCPT TO:<b@y.test>\r\nBDAT 4 LAST\r\nhi\r\nQUIT\r\n";
        let o = check_splits(input, true);
        assert_eq!(
            codes(&o.replies),
            [
                "220", "250", "250", "250", "250", "250", "501", "354", "250", "501", "250", "250",
                "250", "221"
            ]
        );
        assert!(o.replies.contains("501 5.5.4 Bad NOTIFY parameter"));
        assert!(o.replies.contains("501 5.5.4 Duplicate ENVID parameter"));
        assert_eq!(o.stored.len(), 2);
        let msg = String::from_utf8(o.stored[0].clone()).unwrap();
        assert!(msg.starts_with(
            "Return-Path: <a@x.test>\r\nX-Envelope-Params: RET=HDRS ENVID=QQ+2Bxyz\r\n\
             X-Original-To: <b@y.test>\r\nX-Rcpt-Params: NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40y.test\r\n\
             X-Original-To: <c@y.test>\r\nX-Original-To: <d@y.test>\r\nX-Rcpt-Params: NOTIFY=NEVER\r\n\
             Received: "
        ), "{msg}");
        let (env, _) = maildir_core::EnvelopeReader::open(&o.stored[0][..]).unwrap();
        assert_eq!(env.envid.as_ref().unwrap().decode(), b"QQ+xyz");
        assert_eq!(env.rcpt_params(1), &RcptParams::default());
        let msg = String::from_utf8(o.stored[1].clone()).unwrap();
        assert!(msg.starts_with(
            "Return-Path: <a@x.test>\r\nX-Envelope-Params: RET=FULL\r\nX-Original-To: <b@y.test>\r\nReceived: "
        ), "{msg}");
    }

    #[test]
    fn smuggled_transaction_stays_inside_the_first_message() {
        for seq in [&b"\n.\n"[..], b"\r.\r", b"\n.\r\n", b"\r\n.\n"] {
            let mut input =
                b"HELO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nbody".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nforged\r\n.\r\nQUIT\r\n");
            let o = check_splits(&input, true);
            assert_eq!(o.stored.len(), 1, "{seq:?}");
            assert_eq!(
                codes(&o.replies),
                ["220", "250", "250", "250", "354", "250", "221"],
                "{seq:?}"
            );
            let msg = String::from_utf8(o.stored[0].clone()).unwrap();
            assert!(msg.contains("MAIL FROM:<evil@x.test>"), "{msg}");
        }
    }

    #[test]
    fn timeout_and_too_many_errors() {
        let now = Instant::now();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut s = Session::new(config(), peer, true, now);
        s.handle_timeout(now + Duration::from_secs(299));
        assert!(!s.is_closed());
        s.handle_input(b"NOOP\r\n", now + Duration::from_secs(100));
        s.handle_timeout(now + Duration::from_secs(301));
        assert!(!s.is_closed(), "the clock restarts at each line");
        s.handle_timeout(now + Duration::from_secs(400));
        assert!(s.is_closed());
        assert!(
            String::from_utf8_lossy(s.poll_output())
                .contains("421 4.4.2 mx.test Error: timeout exceeded")
        );

        let mut s = Session::new(config(), peer, true, now);
        let junk = "X\r\n".repeat(25);
        s.handle_input(junk.as_bytes(), now);
        let out = String::from_utf8_lossy(s.poll_output()).into_owned();
        assert_eq!(out.matches("500 5.5.2").count(), 20);
        assert!(out.ends_with("421 4.7.0 mx.test Error: too many errors\r\n"));
        assert!(s.is_closed());
    }

    /// Issue 10 item 14: recipients over the limit are not errors, and a delivered message
    /// starts the error count again.
    #[test]
    fn recipients_over_the_limit_and_delivered_messages_do_not_exhaust_the_error_limit() {
        let mut input = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n".to_vec();
        for i in 0..120 {
            input.extend_from_slice(format!("RCPT TO:<r{i}@y.test>\r\n").as_bytes());
        }
        input.extend_from_slice(b"DATA\r\nhi\r\n.\r\n");
        // 19 errors before each of three messages: 57 in all, never 20 in a row.
        for _ in 0..3 {
            input.extend_from_slice(&b"BOGUS\r\n".repeat(19));
            input.extend_from_slice(
                b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\n",
            );
        }
        input.extend_from_slice(b"QUIT\r\n");
        let o = drive(&input, &[], true);
        assert_eq!(o.stored.len(), 4, "{}", o.replies);
        assert_eq!(o.replies.matches("452 4.5.3 ").count(), 117);
        assert!(!o.replies.contains("421"), "{}", o.replies);
        assert!(o.replies.ends_with("221 2.0.0 Bye\r\n"));
        // Still 20 errors without a delivery in between close the session.
        let mut input = b"EHLO c\r\n".to_vec();
        input.extend_from_slice(&b"BOGUS\r\n".repeat(20));
        let o = drive(&input, &[], true);
        assert!(
            o.replies
                .ends_with("421 4.7.0 mx.test Error: too many errors\r\n")
        );
    }

    /// Recipients over the limit stop being free after `RECIPIENT_OVERSHOOT` of them.
    #[test]
    fn recipient_overshoot_is_bounded() {
        let mut input = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n".to_vec();
        for i in 0..3 + RECIPIENT_OVERSHOOT + 30 {
            input.extend_from_slice(format!("RCPT TO:<r{i}@y.test>\r\n").as_bytes());
        }
        let o = drive(&input, &[], true);
        assert_eq!(
            o.replies.matches("452 4.5.3 ").count(),
            RECIPIENT_OVERSHOOT + 20
        );
        assert!(
            o.replies
                .ends_with("421 4.7.0 mx.test Error: too many errors\r\n")
        );
        assert!(o.closed);
    }

    /// Issue 10 item 6: more than `max_hops` (3 here) `Received:` fields in the header section
    /// is a loop: 554 5.4.6 after the dot, nothing stored; `Received:` in the body is content.
    #[test]
    fn too_many_hops_is_refused_after_the_dot() {
        let head = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";
        let mut looped = head.to_vec();
        looped.extend_from_slice(&b"Received: from a by b; date\r\n".repeat(4));
        looped.extend_from_slice(b"Subject: s\r\n\r\nbody\r\n.\r\nNOOP\r\n");
        let o = check_splits(&looped, true);
        assert_eq!(
            codes(&o.replies),
            ["220", "250", "250", "250", "354", "554", "250"]
        );
        assert!(o.replies.contains("554 5.4.6 "), "{}", o.replies);
        assert!(o.stored.is_empty());
        let mut fine = head.to_vec();
        fine.extend_from_slice(&b"received: from a by b; date\r\n".repeat(3));
        fine.extend_from_slice(b"\r\n");
        fine.extend_from_slice(&b"Received: quoted in the body\r\n".repeat(5));
        fine.extend_from_slice(b".\r\n");
        let o = check_splits(&fine, true);
        assert_eq!(
            codes(&o.replies),
            ["220", "250", "250", "250", "354", "250"]
        );
        assert_eq!(o.stored.len(), 1);
    }

    /// Issue 10 item 17: the bare postmaster goes to `--postmaster`, from any client.
    #[test]
    fn postmaster_is_rewritten_to_the_configured_address() {
        let config = Arc::new(SessionConfig {
            postmaster: Some(Mailbox::parse("ops@example.org").unwrap()),
            ..(*config()).clone()
        });
        let now = Instant::now();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut s = Session::new(config, peer, false, now);
        s.handle_input(
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
            now,
        );
        let out = String::from_utf8_lossy(s.poll_output()).into_owned();
        assert_eq!(codes(&out), ["220", "250", "250", "250", "554"], "{out}");
        assert_eq!(s.poll_action(), Some(Action::Begin));
        s.handle_begun(Ok("ID".into()), now, SystemTime::UNIX_EPOCH);
        match s.poll_action() {
            Some(Action::Write(b)) => {
                let head = String::from_utf8_lossy(&b).into_owned();
                assert!(
                    head.starts_with(
                        "Return-Path: <a@x.test>\r\nX-Original-To: <ops@example.org>\r\nReceived"
                    ),
                    "{head}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// Issue 10 item 16: HELO/EHLO during a transaction after the stop signal ends it with
    /// 421, never back to idle for another message.
    #[test]
    fn hello_after_shutdown_closes() {
        let now = Instant::now();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        for hello in ["EHLO again\r\n", "HELO again\r\n"] {
            let mut s = Session::new(config(), peer, true, now);
            s.handle_input(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n", now);
            s.begin_shutdown();
            assert!(!s.is_closed());
            s.output_written(s.poll_output().len());
            s.handle_input(hello.as_bytes(), now);
            s.handle_input(b"MAIL FROM:<a@x.test>\r\n", now);
            assert!(s.is_closed());
            let out = String::from_utf8_lossy(s.poll_output()).into_owned();
            assert!(
                out.ends_with("421 4.3.2 mx.test Service shutting down\r\n"),
                "{out}"
            );
            assert!(!out.contains("250 2.1.0"), "{out}");
        }
    }

    #[test]
    fn client_that_does_not_read_is_not_served() {
        let now = Instant::now();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut s = Session::new(config(), peer, true, now);
        let noops = "NOOP\r\n".repeat(10_000);
        let used = s.handle_input(noops.as_bytes(), now);
        assert!(used < noops.len());
        assert!(!s.wants_read());
        assert!(s.poll_output().len() < OUTPUT_LIMIT + 100);
    }

    #[test]
    fn shutdown_waits_for_the_transaction() {
        let now = Instant::now();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut s = Session::new(config(), peer, true, now);
        s.handle_input(b"HELO c\r\nMAIL FROM:<a@x.test>\r\n", now);
        s.begin_shutdown();
        assert!(!s.is_closed());
        s.handle_input(b"RSET\r\n", now);
        assert!(s.is_closed());
        assert!(
            String::from_utf8_lossy(s.poll_output())
                .ends_with("421 4.3.2 mx.test Service shutting down\r\n")
        );
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read the clock to drive the session
mod starttls_tests {
    use super::*;

    fn session(starttls: bool) -> Session {
        let config = Arc::new(SessionConfig {
            hostname: "mx.test".into(),
            max_size: 1000,
            max_recipients: 3,
            timeout: Duration::from_secs(300),
            max_errors: 20,
            starttls,
            max_hops: 50,
            postmaster: None,
            output_limit: OUTPUT_LIMIT,
            local: None,
            auth: Default::default(),
        });
        Session::new(config, "192.0.2.1:1".parse().unwrap(), true, Instant::now())
    }

    fn take(s: &mut Session) -> String {
        let out = String::from_utf8_lossy(s.poll_output()).into_owned();
        s.output_written(out.len());
        out
    }

    #[test]
    fn pipelined_commands_after_starttls_are_discarded() {
        let now = Instant::now();
        let mut s = session(true);
        let input = b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\n";
        assert_eq!(s.handle_input(input, now), input.len());
        let out = take(&mut s);
        assert!(out.contains("250-STARTTLS\r\n"));
        assert!(out.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{out}");
        assert_eq!(s.poll_action(), Some(Action::StartTls));
        assert!(!s.wants_read());
        s.handle_tls_started(now);
        // The injected MAIL was never executed: a new EHLO is required and STARTTLS is gone.
        s.handle_input(b"MAIL FROM:<a@x.test>\r\nEHLO c\r\nSTARTTLS\r\n", now);
        let out = take(&mut s);
        assert!(
            out.starts_with("503 5.5.1 Error: send HELO/EHLO first\r\n"),
            "{out}"
        );
        assert!(!out.contains("STARTTLS\r\n"), "{out}");
        assert!(
            out.ends_with("554 5.5.1 Error: TLS already active\r\n"),
            "{out}"
        );
    }

    /// Issue 10 item 13: a client that never reads the `220 Ready to start TLS` is timed out.
    #[test]
    fn starttls_waiting_for_the_client_has_a_deadline() {
        let now = Instant::now();
        let mut s = session(true);
        s.handle_input(b"EHLO c\r\nSTARTTLS\r\n", now);
        assert_eq!(s.poll_action(), Some(Action::StartTls));
        let d = s.poll_timeout().expect("a deadline while STARTTLS waits");
        assert!(d <= now + Duration::from_secs(300));
        s.handle_timeout(d);
        assert!(s.is_closed());
        assert!(take(&mut s).ends_with("421 4.4.2 mx.test Error: timeout exceeded\r\n"));
    }

    /// Issue 10 item 16: the end of a TLS handshake after the stop signal closes the session.
    #[test]
    fn tls_start_after_shutdown_closes() {
        let now = Instant::now();
        let mut s = session(true);
        s.handle_input(b"EHLO c\r\nSTARTTLS\r\n", now);
        take(&mut s);
        s.begin_shutdown();
        assert!(!s.is_closed());
        s.handle_tls_started(now);
        assert!(s.is_closed());
        assert!(take(&mut s).ends_with("421 4.3.2 mx.test Service shutting down\r\n"));
    }

    #[test]
    fn starttls_refused_when_not_offered_or_in_a_transaction() {
        let now = Instant::now();
        let mut s = session(false);
        s.handle_input(b"EHLO c\r\nSTARTTLS\r\n", now);
        let out = take(&mut s);
        assert!(!out.contains("STARTTLS"));
        assert!(out.ends_with("502 5.5.1 Error: command not implemented\r\n"));
        let mut s = session(true);
        s.handle_input(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nSTARTTLS\r\n", now);
        assert!(take(&mut s).ends_with("503 5.5.1 Error: MAIL transaction in progress\r\n"));
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read the clock to drive the session
mod local_tests {
    use super::*;
    use crate::smtp::server::policy::QuotaView;
    use maildir_core::aliases::Aliases;
    use maildir_core::directory::{Directory, LocalCopy};
    use maildir_core::users::Users;

    /// `self.0` is full; everyone else has room for 100 octets.
    #[derive(Debug)]
    struct Full(&'static str);

    impl QuotaView for Full {
        fn fits(&self, user: &str, size: u64) -> bool {
            user != self.0 && size <= 100
        }
    }

    fn session(trusted: bool, full: &'static str) -> Session {
        session_with(trusted, full, false)
    }

    fn session_with(trusted: bool, full: &'static str, spool_is_copy: bool) -> Session {
        let users = Users::parse("alice:*::::\nbob:*::::\ncarol:*::::\n").unwrap();
        let aliases =
            Aliases::parse("postmaster: alice\nsales: carol, partner@far.test\nteam: alice, bob\n")
                .unwrap();
        let dir = Directory::new(users, aliases, &["example.test".into()], Some('+')).unwrap();
        let config = Arc::new(SessionConfig {
            hostname: "mx.test".into(),
            max_size: 10_000,
            max_recipients: 10,
            timeout: Duration::from_secs(300),
            max_errors: 20,
            starttls: false,
            max_hops: 50,
            postmaster: None,
            output_limit: OUTPUT_LIMIT,
            local: Some(LocalPolicy {
                directory: Arc::new(dir),
                quota: Some(Arc::new(Full(full))),
                spool_is_copy,
            }),
            auth: Default::default(),
        });
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        Session::new(config, peer, trusted, Instant::now())
    }

    /// A committed spool with its local delivery.
    type Committed = (Vec<u8>, Option<LocalDelivery>);

    /// Feeds `input` in pieces cut at every `step` octets, acting like the reactor: the replies,
    /// and each committed spool with its local delivery.
    fn drive(s: &mut Session, input: &[u8], step: usize) -> (String, Vec<Committed>) {
        let now = Instant::now();
        let mut pending = Vec::new();
        let (mut out, mut commits, mut current) = (Vec::new(), Vec::new(), None::<Vec<u8>>);
        for piece in input.chunks(step.max(1)) {
            pending.extend_from_slice(piece);
            loop {
                let used = s.handle_input(&pending, now);
                pending.drain(..used);
                let mut acted = false;
                while let Some(a) = s.poll_action() {
                    acted = true;
                    match a {
                        Action::Begin => {
                            current = Some(Vec::new());
                            s.handle_begun(Ok("ID1".into()), now, SystemTime::UNIX_EPOCH);
                        }
                        Action::Write(b) => current.as_mut().unwrap().extend_from_slice(&b),
                        Action::Commit(local) => {
                            commits.push((current.take().unwrap(), local));
                            s.handle_stored(Ok(()), now);
                        }
                        Action::Abort => current = None,
                        Action::StartTls => s.handle_tls_started(now),
                        Action::Authenticate { .. } | Action::LookupUser { .. } => {
                            unreachable!("no AUTH or external users in these tests")
                        }
                    }
                }
                out.extend_from_slice(s.poll_output());
                let k = s.poll_output().len();
                s.output_written(k);
                while s.poll_event().is_some() {}
                if used == 0 && !acted {
                    break;
                }
            }
        }
        (String::from_utf8(out).unwrap(), commits)
    }

    fn copy(user: &str, to: &str, orig: &str) -> LocalCopy {
        LocalCopy {
            user: user.into(),
            delivered_to: to.into(),
            original_to: orig.into(),
        }
    }

    /// From an untrusted client: local users and aliases 250, unknown 550 5.1.1 with the
    /// address, over quota 452 4.2.2 (an alias too, when it reaches a full user), remote
    /// 554 5.7.1; the spool's envelope lists only the
    /// forwarded address, and the commit names one copy per user; the same for any split.
    #[test]
    fn rcpt_policy_envelope_and_plan_any_split() {
        let input = b"EHLO c.test\r\nMAIL FROM:<s@far.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<x@far.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<Alice+tag@Example.Test>\r\nRCPT TO:<sales@example.test>\r\nRCPT TO:<team@example.test>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n";
        let mut whole = None;
        for step in [input.len(), 1, 7] {
            let mut s = session(false, "bob");
            let got = drive(&mut s, input, step);
            let (replies, commits) = &got;
            // The replies after EHLO's (whatever extensions it lists).
            let all: Vec<&str> = replies.lines().collect();
            let ehlo_end = all
                .iter()
                .position(|l| l.starts_with("250 "))
                .expect("EHLO");
            let lines = &all[ehlo_end - 6..];
            assert_eq!(lines[7], "250 2.1.0 Ok");
            assert_eq!(
                lines[8],
                "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown"
            );
            assert!(lines[9].starts_with("554 5.7.1 <x@far.test>"), "{replies}");
            assert!(lines[10].starts_with("452 4.2.2 <bob@"), "{replies}");
            assert!(lines[11].starts_with("250 2.1.5") && lines[12].starts_with("250 2.1.5"));
            // team reaches bob, who is full.
            assert!(lines[13].starts_with("452 4.2.2 <team@"), "{replies}");
            assert!(lines[14].starts_with("354 "), "{replies}");
            assert!(lines[15].starts_with("250 2.0.0"), "{replies}");
            assert_eq!(lines.len(), 16, "{replies}");
            assert_eq!(commits.len(), 1);
            let (spool, local) = &commits[0];
            let local = local.as_ref().expect("a local delivery");
            let spool = String::from_utf8(spool.clone()).unwrap();
            let envelope = "Return-Path: <s@far.test>\r\nX-Original-To: <partner@far.test>\r\n";
            assert!(spool.starts_with(envelope), "{spool}");
            assert_eq!(local.content_at, envelope.len() as u64);
            assert!(spool[envelope.len()..].starts_with("Received: from c.test"));
            assert!(local.queue);
            assert_eq!(
                local.copies,
                [
                    copy("alice", "alice@example.test", "Alice+tag@Example.Test"),
                    copy("carol", "carol@example.test", "sales@example.test"),
                ]
            );
            match &whole {
                None => whole = Some(got),
                Some(w) => assert_eq!(&got, w, "step {step}"),
            }
        }
    }

    /// Only local recipients: no envelope in the spool and no queue file; a trusted client's
    /// remote recipient is queued beside the copy.
    #[test]
    fn queue_envelope_only_for_remote_recipients() {
        let mut s = session(false, "");
        let (replies, commits) = drive(
            &mut s,
            b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\nx\r\n.\r\n",
            1000,
        );
        assert!(
            replies.ends_with("250 2.0.0 Ok: queued as ID1\r\n"),
            "{replies}"
        );
        let (spool, local) = &commits[0];
        let local = local.as_ref().unwrap();
        assert!(!local.queue && local.content_at == 0);
        assert!(spool.starts_with(b"Received: "));
        assert_eq!(
            local.copies,
            [copy("alice", "alice@example.test", "postmaster")]
        );

        let mut s = session(true, "");
        let (_, commits) = drive(
            &mut s,
            b"EHLO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<y@far.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\nx\r\n.\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<y@far.test>\r\nDATA\r\nx\r\n.\r\n",
            1000,
        );
        assert_eq!(commits.len(), 2);
        let (spool, local) = &commits[0];
        assert!(
            spool.starts_with(
                b"Return-Path: <s@x.test>\r\nX-Original-To: <y@far.test>\r\nReceived: "
            )
        );
        assert!(local.as_ref().unwrap().queue);
        assert!(
            commits[1].1.is_none(),
            "no local recipient: a plain queue file"
        );
    }

    /// `Delivered-To:` for a local user in the header section: 554 5.4.6, the spool aborted;
    /// in the body, or for someone else, it is no loop.
    #[test]
    fn delivered_to_loop_is_refused() {
        let mut s = session(true, "");
        let (replies, commits) = drive(
            &mut s,
            b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<team@example.test>\r\nDATA\r\nSubject: x\r\ndelivered-to: BOB@example.test\r\n\r\nb\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nDelivered-To: bob@other.test\r\n\r\nDelivered-To: bob@example.test\r\n.\r\n",
            3,
        );
        assert!(replies.contains("\r\n554 5.4.6 "), "{replies}");
        assert_eq!(commits.len(), 1, "{replies}");
        assert!(replies.ends_with("250 2.0.0 Ok: queued as ID1\r\n"));
    }

    /// With nothing to queue and `spool_is_copy`, the spool starts with the first copy's header
    /// lines (the store renames it into that user's Maildir); with a remote recipient it keeps
    /// the queue envelope.
    #[test]
    fn spool_is_the_first_copy_when_nothing_is_queued() {
        let mut s = session_with(false, "", true);
        let (_, commits) = drive(
            &mut s,
            b"EHLO c\r\nMAIL FROM:<s@far.test>\r\nRCPT TO:<Team@example.test>\r\nDATA\r\nx\r\n.\r\n",
            5,
        );
        let (spool, local) = &commits[0];
        let local = local.as_ref().unwrap();
        let head = "Return-Path: <s@far.test>\r\nDelivered-To: alice@example.test\r\nX-Original-To: Team@example.test\r\n";
        assert!(local.spool_is_copy && !local.queue);
        assert_eq!(local.content_at, head.len() as u64);
        assert!(spool.starts_with(head.as_bytes()));
        assert!(spool[head.len()..].starts_with(b"Received: from c "));
        assert_eq!(local.copies.len(), 2);

        let mut s = session_with(true, "", true);
        let (_, commits) = drive(
            &mut s,
            b"EHLO c\r\nMAIL FROM:<s@far.test>\r\nRCPT TO:<sales@example.test>\r\nDATA\r\nx\r\n.\r\n",
            1000,
        );
        let local = commits[0].1.as_ref().unwrap();
        assert!(
            local.queue && !local.spool_is_copy,
            "sales forwards to partner@far.test"
        );
        assert!(commits[0].0.starts_with(
            b"Return-Path: <s@far.test>\r\nX-Original-To: <partner@far.test>\r\nReceived: "
        ));
    }

    /// The quota against the size: at RCPT the `SIZE=` declared on MAIL refuses only that
    /// recipient (452 4.2.2, the others accepted); at the end of DATA or BDAT LAST the real
    /// size refuses the whole message with 452 4.2.2 naming the users concerned (nothing
    /// committed, spool aborted) when any copy would not fit, whether or not every recipient
    /// is concerned; a message that fits is committed. The same for any split.
    #[test]
    fn quota_against_declared_and_real_size_any_split() {
        let big = "x".repeat(120);
        let input = format!(
            "EHLO c\r\n\
             MAIL FROM:<s@far.test> SIZE=101\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<y@far.test>\r\nRCPT TO:<carol@example.test>\r\nRSET\r\n\
             MAIL FROM:<s@far.test> SIZE=100\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n{big}\r\n.\r\n\
             MAIL FROM:<s@far.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<y@far.test>\r\nBDAT 122 LAST\r\n{big}\r\n\
             MAIL FROM:<s@far.test>\r\nRCPT TO:<Team@example.test>\r\nDATA\r\nsmall\r\n.\r\n"
        );
        let mut whole = None;
        for step in [input.len(), 1, 7] {
            let mut s = session(true, "");
            let got = drive(&mut s, input.as_bytes(), step);
            let (replies, commits) = &got;
            let lines: Vec<&str> = replies
                .lines()
                .skip_while(|l| !l.starts_with("250 "))
                .skip(1)
                .collect();
            let want = [
                "250 2.1.0",
                "452 4.2.2 <alice@example.test>: Recipient address rejected: Mailbox full",
                "250 2.1.5",
                "452 4.2.2 <carol@example.test>",
                "250 2.0.0",
                "250 2.1.0",
                "250 2.1.5",
                "354 ",
                "452 4.2.2 Mailbox full: <alice@example.test>; try again later",
                "250 2.1.0",
                "250 2.1.5",
                "250 2.1.5",
                "452 4.2.2 Mailbox full: <alice@example.test>",
                "250 2.1.0",
                "250 2.1.5",
                "354 ",
                "250 2.0.0 Ok: queued as ID1",
            ];
            assert_eq!(lines.len(), want.len(), "{replies}");
            for (l, w) in lines.iter().zip(want) {
                assert!(l.starts_with(w), "{l:?} is not {w:?}:\n{replies}");
            }
            assert_eq!(commits.len(), 1, "only the small message: {replies}");
            let local = commits[0].1.as_ref().expect("local");
            assert_eq!(local.copies.len(), 2, "team: alice and bob");
            assert_eq!(s.counts().refused, 2);
            match &whole {
                None => whole = Some(got),
                Some(w) => assert_eq!(&got, w, "step {step}"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read the clock to drive the session
#[path = "session_auth_tests.rs"]
mod auth_tests;
