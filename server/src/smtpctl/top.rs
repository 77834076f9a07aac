//! `smtpctl top`: a full-screen console (ratatui over crossterm) showing a running smtpd: a
//! header with the counters and a msg/s sparkline of the last minute, the sessions table, and
//! the live transaction stream.
//!
//! Keys: `p` pauses / resumes the stream (the events that arrive meanwhile are counted, not
//! shown), `f` filters the stream by client address (type an IP, Enter; an empty line shows
//! every client; Esc cancels), `q` (or Ctrl-C) quits and restores the terminal.
//!
//! Owns: the console's state ([`Top`], unit-tested without a terminal), its drawing, and its
//! two sources: a reader thread on a `trace` connection feeding a bounded channel (a full
//! channel drops lines and counts them, like the server does), and `show stats` / `show
//! sessions` once a second. Must not: change anything in smtpd.

use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError, bounded};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Sparkline, Table};
use ratatui::{DefaultTerminal, Frame};

use super::{Connection, human};
use crate::control::wire::{Message, Request, SessionView, StatsView, TraceEvent};

/// Stream lines kept for display.
const KEEP: usize = 2000;
/// Trace lines that may wait between the reader thread and the screen.
const CHANNEL: usize = 8192;
/// Seconds of msg/s history in the sparkline.
const HISTORY: usize = 60;

/// What the reader thread passes on.
enum Feed {
    Event(TraceEvent),
    /// Lines the server dropped for us, or that our own channel could not take.
    Dropped(u64),
    /// The trace connection ended (with why).
    Gone(String),
}

/// The console's state, apart from the terminal.
#[derive(Debug, Default)]
pub struct Top {
    /// The latest counters.
    pub stats: Option<StatsView>,
    /// The latest sessions.
    pub sessions: Vec<SessionView>,
    /// Messages accepted per second, oldest first.
    pub rate: VecDeque<u64>,
    /// Stream lines (newest last).
    pub stream: VecDeque<TraceEvent>,
    /// The stream is paused: new lines are counted in `held`.
    pub paused: bool,
    /// Lines not shown because the stream was paused.
    pub held: u64,
    /// Lines lost on the way (server or channel full).
    pub dropped: u64,
    /// Only this client's lines are shown.
    pub filter: Option<IpAddr>,
    /// The filter being typed (`f` pressed), if any.
    pub typing: Option<String>,
    /// A problem to show in the status line.
    pub status: String,
    /// `q` was pressed.
    pub quit: bool,
    last_accepted: Option<u64>,
}

impl Top {
    /// A key was pressed.
    pub fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) {
        if modifiers.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if let Some(text) = &mut self.typing {
            match code {
                KeyCode::Enter => {
                    let text = text.trim().to_owned();
                    self.typing = None;
                    if text.is_empty() {
                        self.filter = None;
                        self.status.clear();
                    } else {
                        match text.parse() {
                            Ok(ip) => {
                                self.filter = Some(ip);
                                self.status.clear();
                            }
                            Err(_) => self.status = format!("'{text}' is not an IP address"),
                        }
                    }
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if text.len() < 64 => text.push(c),
                _ => {}
            }
            return;
        }
        match code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('p') => {
                self.paused = !self.paused;
                if !self.paused {
                    self.held = 0;
                }
            }
            KeyCode::Char('f') => self.typing = Some(String::new()),
            _ => {}
        }
    }

    /// A trace event arrived.
    pub fn event(&mut self, e: TraceEvent) {
        if self.paused {
            self.held += 1;
            return;
        }
        if self.stream.len() == KEEP {
            self.stream.pop_front();
        }
        self.stream.push_back(e);
    }

    /// New counters (about once a second): the sparkline gets the accepted messages since the
    /// last ones.
    pub fn counters(&mut self, stats: StatsView) {
        if let Some(last) = self.last_accepted {
            let n = stats
                .stats
                .messages_accepted
                .checked_sub(last)
                .unwrap_or(stats.stats.messages_accepted);
            if self.rate.len() == HISTORY {
                self.rate.pop_front();
            }
            self.rate.push_back(n);
        }
        self.last_accepted = Some(stats.stats.messages_accepted);
        self.stats = Some(stats);
    }

    /// The stream lines to show (filtered), newest last.
    pub fn visible(&self) -> impl Iterator<Item = &TraceEvent> {
        self.stream
            .iter()
            .filter(|e| self.filter.is_none_or(|ip| e.client.ip() == ip))
    }

    /// The header's counter lines.
    pub fn header(&self) -> Vec<String> {
        let Some(v) = &self.stats else {
            return vec!["waiting for smtpd's counters".into()];
        };
        let s = &v.stats;
        vec![
            format!(
                "up {}  {}  connections {}  active {}  accepted {}  refused {}",
                human::duration(s.uptime_secs),
                if v.accepting {
                    "accepting"
                } else {
                    "PAUSED (smtp)"
                },
                s.connections,
                s.sessions_active,
                s.messages_accepted,
                human::total(&s.messages_refused)
            ),
            format!(
                "rcpt ok {}  rcpt refused {}  local {}  bytes in {}  out {}  tls {}  timeouts {}",
                s.rcpts_accepted,
                human::total(&s.rcpts_refused),
                s.local_deliveries,
                s.bytes_in,
                s.bytes_out,
                s.tls_handshakes,
                s.timeouts
            ),
            format!(
                "commit batches {} (mean {})  auth ok {} failed {}  bans {}  conn refused {}",
                s.commit_batches,
                s.commit_batch_mean
                    .map_or("-".into(), |m| format!("{m:.2}")),
                s.auth_successes,
                s.auth_failures,
                s.bans_active,
                human::total(&s.connections_refused)
            ),
        ]
    }
}

/// Runs the console on the control socket at `socket` until `q`.
pub fn run(socket: PathBuf) -> io::Result<()> {
    // Before the screen is taken: a wrong path is an ordinary error message.
    let first = super::stats(&socket)?;
    let trace = Connection::open(&socket, &Request::Trace(None))?;
    let feed = spawn_reader(trace)?;
    let mut terminal = ratatui::try_init()?;
    let result = console(&mut terminal, &socket, first, &feed);
    let restored = ratatui::try_restore();
    result.and(restored)
}

fn spawn_reader(trace: Connection) -> io::Result<Receiver<Feed>> {
    let (tx, rx) = bounded(CHANNEL);
    let mut reader = trace.into_stream();
    std::thread::Builder::new()
        .name("trace".into())
        .spawn(move || {
            let mut lost = 0u64;
            let mut line = String::new();
            loop {
                line.clear();
                let feed = match reader.read_line(&mut line) {
                    Ok(0) => Feed::Gone("smtpd closed the trace connection".into()),
                    Err(e) => Feed::Gone(format!("trace connection: {e}")),
                    Ok(_) => match serde_json::from_str::<Message>(&line) {
                        Ok(Message::Trace(e)) => Feed::Event(e),
                        Ok(Message::Dropped { count }) => Feed::Dropped(count),
                        Ok(_) => continue,
                        Err(e) => Feed::Gone(format!("unreadable trace line: {e}")),
                    },
                };
                let gone = matches!(feed, Feed::Gone(_));
                if lost > 0 && tx.try_send(Feed::Dropped(lost)).is_ok() {
                    lost = 0;
                }
                match tx.try_send(feed) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => lost += 1,
                    Err(TrySendError::Disconnected(_)) => return,
                }
                if gone {
                    return;
                }
            }
        })?;
    Ok(rx)
}

fn console(
    terminal: &mut DefaultTerminal,
    socket: &Path,
    first: StatsView,
    feed: &Receiver<Feed>,
) -> io::Result<()> {
    let mut top = Top::default();
    top.counters(first);
    let mut next_poll = Instant::now();
    while !top.quit {
        if Instant::now() >= next_poll {
            next_poll += Duration::from_secs(1);
            match (super::stats(socket), super::sessions(socket)) {
                (Ok(stats), Ok(sessions)) => {
                    top.counters(stats);
                    top.sessions = sessions;
                }
                (Err(e), _) | (_, Err(e)) => top.status = e.to_string(),
            }
        }
        while let Ok(f) = feed.try_recv() {
            match f {
                Feed::Event(e) => top.event(e),
                Feed::Dropped(n) => top.dropped += n,
                Feed::Gone(why) => top.status = why,
            }
        }
        terminal.draw(|f| draw(f, &top))?;
        let wait = next_poll
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if event::poll(wait)?
            && let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
        {
            top.key(k.code, k.modifiers);
        }
    }
    Ok(())
}

fn draw(frame: &mut Frame, top: &Top) {
    let sessions_height = (top.sessions.len() as u16 + 3).clamp(4, 12);
    let [header, spark, table, stream, status] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(4),
        Constraint::Length(sessions_height),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let lines: Vec<Line> = top.header().into_iter().map(Line::from).collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(" smtpd ")),
        header,
    );
    let rate: Vec<u64> = top.rate.iter().copied().collect();
    let now = rate.last().copied().unwrap_or(0);
    frame.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::TOP)
                    .title(format!(" msg/s, last minute: {now} now ")),
            )
            .data(&rate),
        spark,
    );

    let rows = top.sessions.iter().map(|s| {
        Row::new(vec![
            s.id.to_string(),
            s.client.to_string(),
            s.state.clone(),
            human::duration(s.age_secs),
            s.bytes_in.to_string(),
            s.tls
                .as_deref()
                .and_then(|t| t.split(' ').next())
                .unwrap_or("-")
                .to_owned(),
            s.user.clone().unwrap_or_else(|| "-".into()),
        ])
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(28),
        Constraint::Length(11),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Min(4),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(
                Row::new(vec!["ID", "CLIENT", "STATE", "AGE", "IN", "TLS", "USER"])
                    .style(Style::default().add_modifier(Modifier::BOLD)),
            )
            .block(
                Block::default()
                    .borders(Borders::TOP)
                    .title(format!(" sessions: {} ", top.sessions.len())),
            ),
        table,
    );

    let room = stream.height.saturating_sub(1) as usize;
    let shown: Vec<&TraceEvent> = top.visible().collect();
    let from = shown.len().saturating_sub(room);
    let lines: Vec<Line> = shown[from..]
        .iter()
        .map(|e| Line::from(human::trace_line(e)))
        .collect();
    let mut title = String::from(" stream");
    if let Some(ip) = top.filter {
        title.push_str(&format!(" (client {ip})"));
    }
    if top.paused {
        title.push_str(&format!(" PAUSED, {} held", top.held));
    }
    if top.dropped > 0 {
        title.push_str(&format!(", {} dropped", top.dropped));
    }
    title.push(' ');
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(title)),
        stream,
    );

    let line = match &top.typing {
        Some(text) => format!("filter by client IP (Enter; empty: all; Esc): {text}_"),
        None if !top.status.is_empty() => top.status.clone(),
        None => "q quit  p pause stream  f filter by client".into(),
    };
    frame.render_widget(
        Paragraph::new(line).style(Style::default().add_modifier(Modifier::REVERSED)),
        status,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::wire::Direction;

    fn ev(ip: &str, line: &str) -> TraceEvent {
        TraceEvent {
            time_ms: 0,
            session: 1,
            client: format!("{ip}:1000").parse().unwrap(),
            dir: Direction::Client,
            line: line.into(),
        }
    }

    fn keys(top: &mut Top, s: &str) {
        for c in s.chars() {
            let code = match c {
                '\n' => KeyCode::Enter,
                '\x1b' => KeyCode::Esc,
                c => KeyCode::Char(c),
            };
            top.key(code, KeyModifiers::NONE);
        }
    }

    #[test]
    fn pause_holds_lines_and_filter_picks_a_client() {
        let mut top = Top::default();
        top.event(ev("192.0.2.1", "HELO a"));
        keys(&mut top, "p");
        top.event(ev("192.0.2.2", "HELO b"));
        assert_eq!((top.stream.len(), top.held), (1, 1));
        keys(&mut top, "p");
        top.event(ev("192.0.2.2", "HELO b"));
        keys(&mut top, "f192.0.2.2\n");
        let shown: Vec<&str> = top.visible().map(|e| e.line.as_str()).collect();
        assert_eq!(shown, ["HELO b"]);
        keys(&mut top, "fnot-an-ip\n");
        assert_eq!(top.filter, Some("192.0.2.2".parse().unwrap()));
        assert!(top.status.contains("not an IP"), "{}", top.status);
        keys(&mut top, "f\n");
        assert_eq!(top.visible().count(), 2);
        keys(&mut top, "fq\x1b");
        assert!(!top.quit, "q typed into the filter is text");
        keys(&mut top, "q");
        assert!(top.quit);
    }

    #[test]
    fn sparkline_gets_accepted_messages_per_poll() {
        let view = |accepted| {
            let mut stats = crate::stats::Stats::new().snapshot(Instant::now());
            stats.messages_accepted = accepted;
            StatsView {
                accepting: true,
                stats,
            }
        };
        let mut top = Top::default();
        for accepted in [5, 5, 8, 20] {
            top.counters(view(accepted));
        }
        assert_eq!(top.rate.iter().copied().collect::<Vec<_>>(), [0, 3, 12]);
        assert!(
            top.header()[0].contains("accepted 20"),
            "{:?}",
            top.header()
        );
        for _ in 0..100 {
            top.counters(view(0));
        }
        assert_eq!(top.rate.len(), HISTORY);
    }
}
