//! The control socket: a Unix socket (mode 0600) served by the reactor, that `smtpctl` speaks
//! to. The wire protocol (one request line, JSON-lines answers) is in [`wire`].
//!
//! Owns: the listening socket and its file, the control clients (non-blocking; each with a
//! request buffer of at most [`wire::MAX_REQUEST`] octets and an output buffer), and the trace
//! subscribers: every trace event is offered to each subscriber's output buffer, which is
//! bounded ([`TRACE_BUFFER`]); an event that does not fit is dropped and counted, and the
//! subscriber gets a `dropped` line with the count once there is room again. A control client
//! that never reads therefore costs at most its buffer and never holds up the reactor.
//! Must not: carry out requests (the reactor does, `reactor::operator`), or block.
//!
//! Limits: at most [`MAX_CLIENTS`] control clients at a time (more are closed at once); one-off
//! answers are written whole into the buffer (their size is bounded by the number of sessions).

pub mod wire;

use std::fs;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use wire::{Message, Request, TraceEvent};

/// Token of the listening socket; clients follow it.
pub const LISTENER: usize = 1 << 19;
/// Reads of one client's socket per readiness event.
const READS_PER_TURN: usize = 16;
/// Most control clients at a time.
pub const MAX_CLIENTS: usize = 64;
/// Trace output a subscriber may have unread before events to it are dropped.
pub const TRACE_BUFFER: usize = 256 * 1024;

/// True if `token` belongs to the control socket.
pub fn owns(token: usize) -> bool {
    (LISTENER..=LISTENER + MAX_CLIENTS).contains(&token)
}

enum Kind {
    /// Waiting for its request line.
    Request,
    /// Answered: closed once the answer is written.
    Answered,
    /// Subscribed to the trace (of one client address).
    Trace {
        client: Option<IpAddr>,
        dropped: u64,
    },
}

struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    kind: Kind,
}

/// The control socket and its clients.
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
    clients: Slab<Client>,
    subscribers: usize,
}

impl Control {
    /// Binds `path` (its directory is created mode 0700 if missing; a stale socket left by a
    /// previous run is replaced, a live one is an error) and registers it.
    pub fn bind(path: &Path, registry: &Registry) -> io::Result<Control> {
        let ctx = |e: io::Error, what: &str| {
            io::Error::new(
                e.kind(),
                format!("control socket {}: {what}: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| ctx(e, "cannot create its directory"))?;
        }
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "control socket {}: another smtpd is listening on it",
                            path.display()
                        ),
                    ));
                }
                fs::remove_file(path).map_err(|e| ctx(e, "cannot remove the stale socket"))?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "control socket {}: exists and is not a socket",
                        path.display()
                    ),
                ));
            }
            Err(_) => {}
        }
        let mut listener = UnixListener::bind(path).map_err(|e| ctx(e, "cannot bind"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| ctx(e, "cannot set mode 0600"))?;
        registry.register(&mut listener, Token(LISTENER), Interest::READABLE)?;
        Ok(Control {
            listener,
            path: path.to_owned(),
            clients: Slab::new(),
            subscribers: 0,
        })
    }

    /// True while a trace subscriber is connected: only then does the reactor collect events.
    pub fn tracing(&self) -> bool {
        self.subscribers > 0
    }

    /// Handles readiness of `token`; returns the requests that arrived (client key, request).
    pub fn ready(&mut self, token: usize, registry: &Registry) -> Vec<(usize, Request)> {
        if token == LISTENER {
            self.accept(registry);
            return Vec::new();
        }
        let key = token - LISTENER - 1;
        let mut requests = Vec::new();
        if let Some(r) = self.read(key, registry) {
            requests.push((key, r));
        }
        self.write(key, registry);
        requests
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS {
                        let line = Message::Error {
                            message: format!("too many control clients (at most {MAX_CLIENTS})"),
                        }
                        .to_line();
                        let _ = stream.write(line.as_bytes());
                        continue;
                    }
                    let entry = self.clients.vacant_entry();
                    let token = Token(LISTENER + 1 + entry.key());
                    if let Err(e) = registry.register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("cannot register a control client: {e}");
                        continue;
                    }
                    entry.insert(Client {
                        stream,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        kind: Kind::Request,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("control socket: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads what the client sent: its request line once complete (a subscriber's further
    /// input is discarded). Closes the client at end of input or on error.
    fn read(&mut self, key: usize, registry: &Registry) -> Option<Request> {
        let client = self.clients.get_mut(key)?;
        let mut buf = [0u8; 1024];
        let mut gone = false;
        // A client that keeps writing gets a bounded share of this turn (more input means
        // another readiness event), and at most one request's worth is kept.
        for _ in 0..READS_PER_TURN {
            match client.stream.read(&mut buf) {
                Ok(0) => {
                    gone = true;
                    break;
                }
                Ok(n) => {
                    if matches!(client.kind, Kind::Request) {
                        let room = (wire::MAX_REQUEST + 1).saturating_sub(client.inbuf.len());
                        client.inbuf.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        let mut request = None;
        if matches!(client.kind, Kind::Request) {
            if let Some(end) = client.inbuf.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&client.inbuf[..end]).into_owned();
                client.inbuf = Vec::new();
                match Request::parse(&line) {
                    Ok(r) => request = Some(r),
                    Err(message) => self.answer(key, &Message::Error { message }),
                }
            } else if client.inbuf.len() >= wire::MAX_REQUEST {
                let message = format!("request longer than {} octets", wire::MAX_REQUEST);
                self.answer(key, &Message::Error { message });
            } else if gone {
                self.close(key, registry);
                return None;
            }
        } else if gone {
            self.close(key, registry);
            return None;
        }
        request
    }

    /// Queues a one-off answer; the client is closed once it is written.
    pub fn answer(&mut self, key: usize, message: &Message) {
        if let Some(client) = self.clients.get_mut(key) {
            client.out.extend_from_slice(message.to_line().as_bytes());
            client.kind = Kind::Answered;
        }
    }

    /// Makes the client a trace subscriber (of the sessions of `filter`, or all).
    pub fn subscribe(&mut self, key: usize, filter: Option<IpAddr>) {
        if let Some(client) = self.clients.get_mut(key) {
            let what = filter.map_or("every session".to_owned(), |ip| format!("client {ip}"));
            let ok = Message::Ok {
                message: format!("tracing {what}"),
            };
            client.out.extend_from_slice(ok.to_line().as_bytes());
            client.kind = Kind::Trace {
                client: filter,
                dropped: 0,
            };
            self.subscribers += 1;
        }
    }

    /// Offers one event to every subscriber that follows its client; a full buffer drops it.
    pub fn publish(&mut self, event: TraceEvent) {
        let mut line: Option<String> = None;
        let ip = event.client.ip();
        let message = Message::Trace(event);
        for (_, client) in self.clients.iter_mut() {
            let Kind::Trace {
                client: filter,
                dropped,
            } = &mut client.kind
            else {
                continue;
            };
            if filter.is_some_and(|f| f != ip) {
                continue;
            }
            let text = line.get_or_insert_with(|| message.to_line());
            if *dropped > 0 {
                let note = Message::Dropped { count: *dropped }.to_line();
                if client.out.len() + note.len() + text.len() > TRACE_BUFFER {
                    *dropped += 1;
                    continue;
                }
                client.out.extend_from_slice(note.as_bytes());
                *dropped = 0;
            }
            if client.out.len() + text.len() > TRACE_BUFFER {
                *dropped += 1;
                continue;
            }
            client.out.extend_from_slice(text.as_bytes());
        }
    }

    /// Writes what every client has pending (after a reactor turn that published events, and
    /// after answers). Never blocks: what the socket does not take stays buffered.
    pub fn flush_all(&mut self, registry: &Registry) {
        let keys: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.out.is_empty() || matches!(c.kind, Kind::Answered))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.write(key, registry);
        }
    }

    fn write(&mut self, key: usize, registry: &Registry) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let mut written = 0;
        let mut broken = false;
        while written < client.out.len() {
            match client.stream.write(&client.out[written..]) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        client.out.drain(..written);
        if client.out.capacity() > TRACE_BUFFER && client.out.len() < TRACE_BUFFER / 4 {
            client.out.shrink_to(TRACE_BUFFER / 4);
        }
        let done = matches!(client.kind, Kind::Answered) && client.out.is_empty();
        if broken || done {
            self.close(key, registry);
        }
    }

    fn close(&mut self, key: usize, registry: &Registry) {
        if !self.clients.contains(key) {
            return;
        }
        let mut client = self.clients.remove(key);
        if matches!(client.kind, Kind::Trace { .. }) {
            self.subscribers -= 1;
        }
        let _ = registry.deregister(&mut client.stream);
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::io::BufRead;
    use std::time::Duration;

    fn event(n: u64) -> TraceEvent {
        TraceEvent {
            time_ms: n,
            session: 1,
            client: "192.0.2.1:1000".parse().unwrap(),
            dir: wire::Direction::Client,
            line: format!("NOOP {n} {}", "x".repeat(200)),
        }
    }

    /// Serves the poll until `control` has handed out a request.
    fn next_request(poll: &mut Poll, control: &mut Control) -> (usize, Request) {
        let mut events = Events::with_capacity(8);
        for _ in 0..100 {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for e in events.iter() {
                if let Some(r) = control.ready(e.token().0, poll.registry()).pop() {
                    return r;
                }
            }
        }
        panic!("no request");
    }

    /// A subscriber that does not read holds at most TRACE_BUFFER; what did not fit is
    /// counted and announced in one `dropped` line before the next event it gets.
    #[test]
    fn a_subscriber_that_does_not_read_loses_events_and_is_told_how_many() {
        let dir = std::env::temp_dir().join(format!("smtpd-control-{}", std::process::id()));
        let path = dir.join("control");
        let mut poll = Poll::new().unwrap();
        let mut control = Control::bind(&path, poll.registry()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        client.write_all(b"trace\n").unwrap();
        let (key, request) = next_request(&mut poll, &mut control);
        assert_eq!(request, Request::Trace(None));
        control.subscribe(key, None);
        assert!(control.tracing());
        let total = 20_000;
        for n in 0..total {
            control.publish(event(n));
            control.flush_all(poll.registry());
        }
        let buffered = control.clients.get(key).unwrap().out.len();
        assert!(buffered <= TRACE_BUFFER, "{buffered}");

        // The client reads everything there is, then one more event comes.
        client.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            control.flush_all(poll.registry());
            match client.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ if control.clients.get(key).unwrap().out.is_empty() => break,
                _ => {}
            }
        }
        control.publish(event(total));
        control.flush_all(poll.registry());
        client.set_nonblocking(false).unwrap();
        let mut reader = std::io::BufReader::new(&client);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let Ok(Message::Dropped { count }) = serde_json::from_str::<Message>(&line) else {
            panic!("{line}");
        };
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains(r#""time_ms":20000"#), "{line}");
        let received = got
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(br#"{"type":"trace""#))
            .count() as u64;
        assert_eq!(
            received + count,
            total,
            "every event was either sent or counted"
        );
        assert!(count > 0);

        // Gone: the subscriber is forgotten, and the socket file removed with the server.
        drop(reader);
        drop(client);
        let mut events = Events::with_capacity(8);
        for _ in 0..100 {
            if !control.tracing() {
                break;
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for e in events.iter() {
                control.ready(e.token().0, poll.registry());
            }
        }
        assert!(!control.tracing());
        drop(control);
        assert!(!path.exists());
        let _ = fs::remove_dir(&dir);
    }
}
