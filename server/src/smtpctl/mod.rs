//! `smtpctl`: the operator's command for a running smtpd, over its control socket
//! ([`crate::control::wire`] is the protocol).
//!
//! Owns: the command line, the connection to the socket, and the output (for people by
//! default, the server's JSON lines with `--json`). `show queue` reads the queue itself with
//! smtp-relay's listing code (`relay_queue::queue::list`), so it works without smtpd or the
//! relay running. Must not: change anything but through the socket.

pub mod human;
pub mod top;

use std::io::{self, BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};

use crate::control::wire::{Message, Request, SessionView, StatsView};

/// Command line of smtpctl.
#[derive(Debug, Parser)]
#[command(
    name = "smtpctl",
    version,
    about = "Control a running smtpd through its control socket"
)]
pub struct Args {
    /// The control socket [default: MAILDIR/.smtpd/control].
    #[arg(long, value_name = "PATH", global = true)]
    pub control: Option<PathBuf>,
    /// smtpd's --maildir: finds the socket, and the queue for `show queue`.
    #[arg(long, value_name = "DIR", global = true)]
    pub maildir: Option<PathBuf>,
    /// Print the server's JSON lines instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// smtpctl's commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show counters, sessions or the queue.
    Show {
        /// What to show.
        what: Show,
    },
    /// One line per second with what changed, until interrupted.
    Monitor,
    /// The live transaction stream: one line per SMTP command and reply.
    Trace {
        /// Follow only the sessions of this client address.
        #[arg(long, value_name = "IP")]
        client: Option<IpAddr>,
    },
    /// Stop accepting new connections (sessions in progress go on).
    Pause {
        /// The service (`smtp`).
        what: Service,
    },
    /// Accept new connections again.
    Resume {
        /// The service (`smtp`).
        what: Service,
    },
    /// Change the log level.
    Log {
        /// `level`.
        what: LogWhat,
        /// off, error, warn, info, debug or trace.
        level: log::LevelFilter,
    },
    /// Reload the configuration (what SIGHUP does).
    Reload,
    /// Full-screen console: counters, sessions and the live stream (keys: p pause, f filter,
    /// q quit).
    Top,
}

/// What `show` shows.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Show {
    /// Counters since start.
    Stats,
    /// The open sessions.
    Sessions,
    /// The queued mail (what `smtp-relay --list` prints).
    Queue,
}

/// A service to pause or resume.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Service {
    /// New SMTP connections.
    Smtp,
}

/// `log level`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogWhat {
    /// The log level.
    Level,
}

/// Runs smtpctl; the exit status is 1 on any failure.
pub fn main(args: Args) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtpctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<()> {
    // Buffered: a busy trace is written in large pieces, flushed whenever the socket has
    // nothing more for the moment.
    let out = &mut io::BufWriter::new(io::stdout().lock());
    command(args, out)?;
    out.flush()
}

fn command(args: &Args, out: &mut impl Write) -> io::Result<()> {
    match &args.command {
        Cmd::Show { what: Show::Queue } => {
            let maildir = args.maildir.as_ref().ok_or_else(|| {
                io::Error::other("show queue needs --maildir (the queue smtpd writes to)")
            })?;
            let text =
                relay_queue::queue::list(maildir, SystemTime::now()).map_err(io::Error::other)?;
            out.write_all(text.as_bytes())
        }
        Cmd::Show { what: Show::Stats } => one_shot(args, &Request::ShowStats, out),
        Cmd::Show {
            what: Show::Sessions,
        } => one_shot(args, &Request::ShowSessions, out),
        Cmd::Pause { .. } => one_shot(args, &Request::Pause, out),
        Cmd::Resume { .. } => one_shot(args, &Request::Resume, out),
        Cmd::Log { level, .. } => one_shot(args, &Request::LogLevel(*level), out),
        Cmd::Reload => one_shot(args, &Request::Reload, out),
        Cmd::Trace { client } => trace(args, *client, out),
        Cmd::Monitor => monitor(args, out),
        Cmd::Top => top::run(socket_path(args)?),
    }
}

/// The socket path from `--control` or `--maildir`.
pub fn socket_path(args: &Args) -> io::Result<PathBuf> {
    match (&args.control, &args.maildir) {
        (Some(c), _) => Ok(c.clone()),
        (None, Some(m)) => Ok(crate::config::default_control(m)),
        (None, None) => Err(io::Error::other(
            "give --control PATH or --maildir DIR to find smtpd's control socket",
        )),
    }
}

/// A connection to the control socket with one request sent.
pub struct Connection {
    reader: BufReader<UnixStream>,
}

impl Connection {
    /// Connects to `path` and sends `request`.
    pub fn open(path: &std::path::Path, request: &Request) -> io::Result<Connection> {
        let mut stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot connect to {} (is smtpd running?): {e}",
                    path.display()
                ),
            )
        })?;
        stream.write_all(request.line().as_bytes())?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// The next answer line, raw and parsed; None at the end.
    pub fn read_message(&mut self) -> io::Result<Option<(String, Message)>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let message = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable answer from smtpd ({e}): {}", line.trim_end()),
            )
        })?;
        Ok(Some((line, message)))
    }

    /// True when answer octets already read wait in the buffer.
    pub fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// The read side, for a reader thread.
    pub fn into_stream(self) -> BufReader<UnixStream> {
        self.reader
    }
}

/// Sends `request` and returns its one answer.
pub fn ask(path: &std::path::Path, request: &Request) -> io::Result<Message> {
    let mut c = Connection::open(path, request)?;
    match c.read_message()? {
        Some((_, m)) => Ok(m),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "smtpd closed the control connection without an answer",
        )),
    }
}

/// Fetches the counters.
pub fn stats(path: &std::path::Path) -> io::Result<StatsView> {
    match ask(path, &Request::ShowStats)? {
        Message::Stats(s) => Ok(*s),
        other => Err(unexpected(&other)),
    }
}

/// Fetches the sessions.
pub fn sessions(path: &std::path::Path) -> io::Result<Vec<SessionView>> {
    match ask(path, &Request::ShowSessions)? {
        Message::Sessions { sessions } => Ok(sessions),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(m: &Message) -> io::Error {
    match m {
        Message::Error { message } => io::Error::other(format!("smtpd: {message}")),
        other => io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected answer from smtpd: {}",
                other.to_line().trim_end()
            ),
        ),
    }
}

fn one_shot(args: &Args, request: &Request, out: &mut impl Write) -> io::Result<()> {
    let mut c = Connection::open(&socket_path(args)?, request)?;
    let Some((line, message)) = c.read_message()? else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "smtpd closed the control connection without an answer",
        ));
    };
    if args.json {
        out.write_all(line.as_bytes())?;
    } else {
        match &message {
            Message::Error { .. } => {}
            Message::Stats(s) => out.write_all(human::stats(s).as_bytes())?,
            Message::Sessions { sessions } => {
                out.write_all(human::sessions(sessions).as_bytes())?
            }
            Message::Ok { message } => writeln!(out, "{message}")?,
            other => return Err(unexpected(other)),
        }
    }
    if let Message::Error { message } = message {
        return Err(io::Error::other(format!("smtpd: {message}")));
    }
    Ok(())
}

fn trace(args: &Args, client: Option<IpAddr>, out: &mut impl Write) -> io::Result<()> {
    let mut c = Connection::open(&socket_path(args)?, &Request::Trace(client))?;
    while let Some((line, message)) = c.read_message()? {
        if args.json {
            out.write_all(line.as_bytes())?;
        } else {
            match &message {
                Message::Trace(e) => writeln!(out, "{}", human::trace_line(e))?,
                Message::Dropped { count } => {
                    writeln!(out, "-- dropped {count} events (smtpctl read too slowly)")?
                }
                Message::Ok { message } => writeln!(out, "-- {message}")?,
                Message::Error { message } => {
                    return Err(io::Error::other(format!("smtpd: {message}")));
                }
                other => return Err(unexpected(other)),
            }
        }
        if !c.has_buffered() {
            out.flush()?;
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "smtpd closed the control connection",
    ))
}

fn monitor(args: &Args, out: &mut impl Write) -> io::Result<()> {
    let path = socket_path(args)?;
    let mut last = stats(&path)?;
    let mut next = Instant::now();
    for n in 0u64.. {
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = stats(&path)?;
        if args.json {
            let line =
                serde_json::to_string(&human::delta(&last, &now)).map_err(io::Error::other)?;
            writeln!(out, "{line}")?;
        } else {
            if n % 20 == 0 {
                writeln!(out, "{}", human::MONITOR_HEADER)?;
            }
            writeln!(out, "{}", human::monitor_line(&last, &now))?;
        }
        out.flush()?;
        last = now;
    }
    Ok(())
}
