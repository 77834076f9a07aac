//! The queue: messages waiting in `Maildir/new/`, read back with their envelopes and relay state.
//!
//! Owns: scanning `new/` in arrival order, parsing each envelope (maildir-core), finding where
//! the transmitted part starts (after `Return-Path` / `X-Original-To`), the 8-bit check, which
//! messages are due, the count of files in `new/` that are not queued messages (or whose
//! relay state cannot be read: left out of the run), and the
//! `--list` output. Must not: send, resolve, or change any file.
//!
//! A scan reads only each file's envelope (its first few KiB) and its state file: never the
//! body, so a run over a queue of deferred messages that sends nothing reads next to nothing.
//! The 8-bit check reads the body, and only of messages about to be sent ([`check_bodies`]).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::SystemTime;

use maildir_core::{EnvelopeReader, ForwardPath, Maildir, RcptParams, Ret, ReversePath, XText};

use crate::state::{MsgState, RcptState, StateDir, epoch_secs};

/// One queued message.
#[derive(Debug, Clone)]
pub struct Message {
    /// File name in `new/`: the queue id.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Envelope sender.
    pub sender: ReversePath,
    /// Envelope recipients, in RCPT order.
    pub rcpts: Vec<ForwardPath>,
    /// DSN `RET=` (RFC 3461), if given.
    pub ret: Option<Ret>,
    /// DSN `ENVID=` (xtext), if given.
    pub envid: Option<XText>,
    /// DSN `NOTIFY=` / `ORCPT=` per recipient (shorter when the last gave none: see
    /// [`Message::rcpt_dsn`]).
    pub rcpt_dsn: Vec<RcptParams>,
    /// Offset of the first byte after the envelope lines.
    pub body_offset: u64,
    /// Octets from there to the end of the file.
    pub body_len: u64,
    /// The transmitted part holds octets above 127 (known after [`check_bodies`]; false before).
    pub eight_bit: bool,
    /// When it was queued (file modification time).
    pub arrival: SystemTime,
    /// History from the state directory.
    pub state: MsgState,
    /// A state file exists for it (removed once the message is moved to `cur/`).
    pub has_state_file: bool,
}

impl Message {
    /// The DSN parameters of recipient `i` (defaults when it gave none).
    pub fn rcpt_dsn(&self, i: usize) -> RcptParams {
        self.rcpt_dsn.get(i).cloned().unwrap_or_default()
    }

    /// Indexes of recipients that still need an attempt.
    pub fn open_rcpts(&self) -> Vec<usize> {
        (0..self.rcpts.len())
            .filter(|&i| !self.state.rcpts.get(i).is_some_and(|r| r.0.is_final()))
            .collect()
    }

    /// Due at `now` by the retry schedule.
    pub fn is_due(&self, now: SystemTime) -> bool {
        self.state.next <= epoch_secs(now)
    }
}

/// A file in `new/` that could not be read as a queued message (its envelope, or its relay
/// state: then it is left alone until the state can be read).
#[derive(Debug)]
pub struct Unreadable {
    pub name: String,
    pub error: String,
}

/// Reads every message in `new/` with its state.
pub fn scan(md: &Maildir, states: &StateDir) -> io::Result<(Vec<Message>, Vec<Unreadable>)> {
    let entries = md.scan_new().map_err(|e| io::Error::other(e.to_string()))?;
    let with_state = states.names()?;
    let mut msgs = Vec::with_capacity(entries.len());
    let mut bad = Vec::new();
    for e in entries {
        match read_message(&e.name, e.path.clone()) {
            Ok(Some(mut m)) => {
                if with_state.contains(&m.name) {
                    // Without its state, who has the message already is unknown: leave it
                    // alone (the others go on), never send it blind.
                    match states.load(&m.name, m.rcpts.len()) {
                        Ok(st) => m.state = st,
                        Err(e) => {
                            bad.push(Unreadable {
                                name: m.name,
                                error: format!("cannot read its relay state: {e}"),
                            });
                            continue;
                        }
                    }
                    m.has_state_file = true;
                }
                msgs.push(m);
            }
            Ok(None) => {} // vanished since the scan
            Err(error) => bad.push(Unreadable {
                name: e.name,
                error,
            }),
        }
    }
    Ok((msgs, bad))
}

fn read_message(name: &str, path: PathBuf) -> Result<Option<Message>, String> {
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let (env, rest) = EnvelopeReader::open(file).map_err(|e| format!("{}: {e}", path.display()))?;
    let body_offset = rest.envelope_len();
    let n = env.recipients.len();
    Ok(Some(Message {
        name: name.to_owned(),
        path,
        sender: env.sender,
        rcpts: env.recipients,
        ret: env.ret,
        envid: env.envid,
        rcpt_dsn: env.rcpt_params,
        body_offset,
        body_len: meta.len().saturating_sub(body_offset),
        eight_bit: false,
        arrival: meta.modified().unwrap_or_else(|_| SystemTime::now()),
        state: MsgState::parse("", n),
        has_state_file: false,
    }))
}

/// Reads the transmitted part of each message about to be sent, for the 8-bit check
/// (`BODY=8BITMIME`). A message whose body cannot be read is left out of this run, with a
/// warning (it stays queued and is tried again on the next run).
pub fn check_bodies(msgs: Vec<Message>) -> Vec<Message> {
    msgs.into_iter()
        .filter_map(|mut m| match has_8bit_body(&m) {
            Ok(b) => {
                m.eight_bit = b;
                Some(m)
            }
            Err(e) => {
                log::warn!("{}: skipped in this run: {e}", m.name);
                None
            }
        })
        .collect()
}

fn has_8bit_body(m: &Message) -> Result<bool, String> {
    let mut file =
        File::open(&m.path).map_err(|e| format!("cannot open {}: {e}", m.path.display()))?;
    file.seek(SeekFrom::Start(m.body_offset))
        .map_err(|e| format!("cannot seek {}: {e}", m.path.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", m.path.display())),
        };
        if proto::smtp::client::body::has_8bit(&buf[..n]) {
            return Ok(true);
        }
    }
}

/// The `--list` text of the queue in `maildir` (opened, never changed): what `smtp-relay
/// --list` and `smtpctl show queue` print.
pub fn list(maildir: &std::path::Path, now: SystemTime) -> Result<String, String> {
    let md = Maildir::open(maildir)
        .map_err(|e| format!("cannot use Maildir {}: {e}", maildir.display()))?;
    let states = StateDir::open(md.root()).map_err(|e| e.to_string())?;
    let (msgs, bad) = scan(&md, &states).map_err(|e| e.to_string())?;
    Ok(render_list(&msgs, &bad, now))
}

/// The `--list` text, like `mailq`.
pub fn render_list(msgs: &[Message], bad: &[Unreadable], now: SystemTime) -> String {
    let mut s = String::new();
    for m in msgs {
        let next = if m.state.next == 0 || m.is_due(now) {
            "now".to_owned()
        } else {
            format!(
                "{} (in {} s)",
                maildir_core::date::rfc5322(
                    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(m.state.next)
                ),
                m.state.next.saturating_sub(epoch_secs(now))
            )
        };
        s.push_str(&format!(
            "{}  {} bytes  {}  from {}\n  attempts: {}  next attempt: {}\n",
            m.name,
            m.body_len,
            maildir_core::date::rfc5322(m.arrival),
            m.sender,
            m.state.attempts,
            next
        ));
        if !m.state.error.is_empty() {
            s.push_str(&format!("  last error: {}\n", m.state.error));
        }
        if m.state.warned {
            s.push_str("  delay warning sent\n");
        }
        for (i, r) in m.rcpts.iter().enumerate() {
            let (st, text) = m
                .state
                .rcpts
                .get(i)
                .cloned()
                .unwrap_or((RcptState::Pending, String::new()));
            if text.is_empty() {
                s.push_str(&format!("    {r} {}\n", st.word()));
            } else {
                s.push_str(&format!("    {r} {} ({text})\n", st.word()));
            }
        }
    }
    for b in bad {
        s.push_str(&format!("{}  unreadable: {}\n", b.name, b.error));
    }
    let rcpts: usize = msgs.iter().map(|m| m.open_rcpts().len()).sum();
    if msgs.is_empty() && bad.is_empty() {
        s.push_str("Mail queue is empty\n");
    } else {
        s.push_str(&format!(
            "-- {} messages, {} recipients pending\n",
            msgs.len(),
            rcpts
        ));
    }
    s
}
