//! The control socket's wire protocol, shared by smtpd (the server side, [`super`]) and
//! `smtpctl` (the client).
//!
//! A client connects to the Unix socket and sends **one request line** (UTF-8, ending in LF,
//! at most [`MAX_REQUEST`] octets):
//!
//! | request | answer |
//! |---|---|
//! | `show stats` | one [`Message::Stats`] line |
//! | `show sessions` | one [`Message::Sessions`] line |
//! | `trace` or `trace IP` | [`Message::Ok`], then [`Message::Trace`] lines (one per SMTP command and reply of every session, or of the sessions of client `IP`) and [`Message::Dropped`] lines, until the client hangs up |
//! | `pause smtp` / `resume smtp` | [`Message::Ok`] (stop / start accepting connections) |
//! | `log level LEVEL` | [`Message::Ok`] (`off`, `error`, `warn`, `info`, `debug`, `trace`) |
//! | `reload` | [`Message::Ok`] or [`Message::Error`] (what SIGHUP does) |
//!
//! Every answer is **JSON lines**: one JSON object per line, tagged by `"type"`. A request
//! that cannot be parsed gets one [`Message::Error`] line. After a one-line answer the server
//! closes the connection.
//!
//! Owns: the request grammar and the answer types (serde). Must not: do I/O.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::stats::StatsSnapshot;

/// Longest request line, LF included.
pub const MAX_REQUEST: usize = 1024;

/// A request line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `show stats`.
    ShowStats,
    /// `show sessions`.
    ShowSessions,
    /// `trace [IP]`: follow the transaction stream (of one client address).
    Trace(Option<IpAddr>),
    /// `pause smtp`.
    Pause,
    /// `resume smtp`.
    Resume,
    /// `log level LEVEL`.
    LogLevel(log::LevelFilter),
    /// `reload`.
    Reload,
}

impl Request {
    /// Parses one request line (without its line end).
    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["show", "stats"] => Ok(Request::ShowStats),
            ["show", "sessions"] => Ok(Request::ShowSessions),
            ["trace"] => Ok(Request::Trace(None)),
            ["trace", ip] => ip
                .parse()
                .map(|ip| Request::Trace(Some(ip)))
                .map_err(|_| format!("trace: '{ip}' is not an IP address")),
            ["pause", "smtp"] => Ok(Request::Pause),
            ["resume", "smtp"] => Ok(Request::Resume),
            ["log", "level", level] => level.parse().map(Request::LogLevel).map_err(|_| {
                format!("log level: '{level}' is not off, error, warn, info, debug or trace")
            }),
            ["reload"] => Ok(Request::Reload),
            _ => Err(format!("unknown request '{}'", line.trim())),
        }
    }

    /// The request line, LF included.
    pub fn line(&self) -> String {
        match self {
            Request::ShowStats => "show stats\n".into(),
            Request::ShowSessions => "show sessions\n".into(),
            Request::Trace(None) => "trace\n".into(),
            Request::Trace(Some(ip)) => format!("trace {ip}\n"),
            Request::Pause => "pause smtp\n".into(),
            Request::Resume => "resume smtp\n".into(),
            Request::LogLevel(l) => format!("log level {}\n", l.as_str().to_ascii_lowercase()),
            Request::Reload => "reload\n".into(),
        }
    }
}

/// One line of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The request was carried out; `message` says what was done.
    Ok {
        /// For people.
        message: String,
    },
    /// The request was refused or failed.
    Error {
        /// Why.
        message: String,
    },
    /// The counters.
    Stats(Box<StatsView>),
    /// The sessions open now.
    Sessions {
        /// In the order they began.
        sessions: Vec<SessionView>,
    },
    /// One SMTP command or reply.
    Trace(TraceEvent),
    /// `count` trace events were not sent to this subscriber (it read too slowly).
    Dropped {
        /// How many since the last such line.
        count: u64,
    },
}

impl Message {
    /// The JSON line, LF included.
    pub fn to_line(&self) -> String {
        // Serialising these types cannot fail (string keys, no maps with other keys).
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","message":"cannot encode the answer: {e}"}}"#)
        });
        s.push('\n');
        s
    }
}

/// The counters since start (`show stats`): the server's [`StatsSnapshot`] and whether it
/// accepts connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    /// Accepting new connections (false after `pause smtp` and while stopping).
    pub accepting: bool,
    /// The counters.
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}

/// One open session (`show sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Session id (the one trace events carry).
    pub id: u64,
    /// Client address and port.
    pub client: SocketAddr,
    /// Protocol state: `idle`, `mail`, `data`, `bdat`, `committing`, `starttls`, `closed`, ...
    pub state: String,
    /// Seconds since it connected.
    pub age_secs: u64,
    /// Octets received so far.
    pub bytes_in: u64,
    /// Octets sent so far.
    pub bytes_out: u64,
    /// TLS protocol and cipher, once the handshake finished.
    pub tls: Option<String>,
    /// The authenticated user, if any.
    pub user: Option<String>,
}

/// Who sent a traced line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A command from the client.
    Client,
    /// A reply line from the server.
    Server,
}

/// One SMTP command or reply line of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Milliseconds since the Unix epoch when the reactor saw it.
    pub time_ms: u64,
    /// Session id.
    pub session: u64,
    /// Client address and port.
    pub client: SocketAddr,
    /// Command or reply.
    pub dir: Direction,
    /// The line without its line end (AUTH arguments are masked).
    pub line: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::ShowStats,
            Request::ShowSessions,
            Request::Trace(None),
            Request::Trace(Some("192.0.2.7".parse().unwrap())),
            Request::Trace(Some("2001:db8::1".parse().unwrap())),
            Request::Pause,
            Request::Resume,
            Request::LogLevel(log::LevelFilter::Debug),
            Request::Reload,
        ] {
            let line = r.line();
            assert!(line.ends_with('\n') && line.len() <= MAX_REQUEST);
            assert_eq!(Request::parse(line.trim_end()), Ok(r));
        }
        assert!(Request::parse("show").is_err());
        assert!(Request::parse("trace not-an-ip").is_err());
        assert!(Request::parse("log level loud").is_err());
        assert!(Request::parse("").is_err());
    }

    #[test]
    fn messages_are_one_json_line_each() {
        let m = Message::Trace(TraceEvent {
            time_ms: 1,
            session: 2,
            client: "127.0.0.1:25".parse().unwrap(),
            dir: Direction::Client,
            line: "MAIL FROM:<a\"b@x>\n".into(),
        });
        let line = m.to_line();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(r#""type":"trace""#), "{line}");
        let back: Message = serde_json::from_str(&line).unwrap();
        assert_eq!(back, m);
        let d: Message = serde_json::from_str(r#"{"type":"dropped","count":3}"#).unwrap();
        assert_eq!(d, Message::Dropped { count: 3 });
        let stats = crate::stats::Stats::new();
        stats.commit_batch(2);
        let m = Message::Stats(Box::new(StatsView {
            accepting: true,
            stats: stats.snapshot(std::time::Instant::now()),
        }));
        let line = m.to_line();
        assert!(line.contains(r#""commit_batches":1"#), "{line}");
        let mut back: Message = serde_json::from_str(&line).unwrap();
        if let (Message::Stats(b), Message::Stats(a)) = (&mut back, &m) {
            // Histogram buckets are not serialised (JSON has no infinity).
            b.stats.commit_latency.buckets = a.stats.commit_latency.buckets.clone();
            b.stats.tx_duration.buckets = a.stats.tx_duration.buckets.clone();
        }
        assert_eq!(back, m);
    }
}
