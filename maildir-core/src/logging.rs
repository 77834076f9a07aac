//! The logging thread: a `log::Log` whose callers only filter and enqueue, and a thread of its
//! own that formats and writes each record with env_logger (so `RUST_LOG` works as usual).
//!
//! The calling side does not block for ordinary records: the channel is bounded and a record
//! that does not fit is dropped and counted; the count is reported by the thread as soon as it
//! has room. **Audit records** (the delivery log: one line per recipient outcome, the audit
//! trail of what happened to each message) are never dropped: their target is [`AUDIT`] or ends
//! in `::audit` (e.g. `smtp_relay::audit`), and when the queue is full their sender waits for
//! room. A [`LogGuard`] flushes and joins the thread at exit so the last lines are not lost.
//!
//! The thread writes in batches: it formats every record waiting in the queue into one buffer
//! and writes that with one `write(2)`; after a batch of more than one record it pauses for
//! [`COALESCE`], so that under load the callers' records gather in the queue instead of waking
//! the thread for each one (a wake-up is a syscall on the caller's thread, the reactor's).

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// How many records may wait for the logging thread before new ones are dropped.
pub const LOG_QUEUE: usize = 16 * 1024;

/// How long the logging thread pauses after writing a batch of more than one record, letting
/// the next records gather. A lone record (an idle server) is written at once.
pub const COALESCE: Duration = Duration::from_millis(2);

/// Most records formatted into one batch before it is written.
const MAX_BATCH: usize = 1024;

/// The target of audit records, or the last `::` segment of one (`smtp_relay::audit`): never
/// dropped, the caller blocks until the logging thread has room.
pub const AUDIT: &str = "audit";

/// True for a target whose records are audit records ([`AUDIT`]).
pub fn is_audit(target: &str) -> bool {
    target == AUDIT
        || target
            .strip_suffix(AUDIT)
            .is_some_and(|head| head.ends_with("::"))
}

enum Msg {
    Record(OwnedRecord),
    Flush(Sender<()>),
    Stop,
}

struct OwnedRecord {
    level: Level,
    target: String,
    module_path: Option<Cow<'static, str>>,
    file: Option<Cow<'static, str>>,
    line: Option<u32>,
    args: String,
}

struct Shared {
    tx: Sender<Msg>,
    dropped: AtomicU64,
    stopped: AtomicBool,
}

struct ChannelLogger {
    /// Used here only to filter; the thread formats with the same logger.
    filter: Arc<env_logger::Logger>,
    shared: Arc<Shared>,
}

/// The level set by [`set_level`] (a `LevelFilter` as usize), or `NO_OVERRIDE`: then
/// `RUST_LOG` (or the default filter) decides.
static LEVEL_OVERRIDE: AtomicUsize = AtomicUsize::new(NO_OVERRIDE);
const NO_OVERRIDE: usize = usize::MAX;

/// From now on, records up to `level` are written, whatever `RUST_LOG` said (the operator's
/// `smtpctl log level`). Audit records below it are filtered like the others.
pub fn set_level(level: LevelFilter) {
    LEVEL_OVERRIDE.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level.max(LevelFilter::Error));
}

/// Undoes [`set_level`]: `RUST_LOG` (or the default filter) decides again; `max` is the most
/// detailed level it allows (what `log::max_level` was at start).
pub fn clear_level(max: LevelFilter) {
    LEVEL_OVERRIDE.store(NO_OVERRIDE, Ordering::Relaxed);
    log::set_max_level(max);
}

/// The level set by [`set_level`], if any.
pub fn level_override() -> Option<LevelFilter> {
    let n = LEVEL_OVERRIDE.load(Ordering::Relaxed);
    LevelFilter::iter().find(|l| *l as usize == n)
}

impl ChannelLogger {
    fn wanted(&self, metadata: &Metadata<'_>) -> bool {
        match level_override() {
            Some(max) => metadata.level() <= max,
            None => self.filter.enabled(metadata),
        }
    }
}

impl Log for ChannelLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.wanted(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.wanted(record.metadata()) || self.shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let owned = OwnedRecord {
            level: record.level(),
            target: record.target().to_owned(),
            module_path: static_or_owned(record.module_path_static(), record.module_path()),
            file: static_or_owned(record.file_static(), record.file()),
            line: record.line(),
            args: record.args().to_string(),
        };
        if is_audit(record.target()) {
            // The audit trail: wait for room rather than lose it. Fails only once the logging
            // thread is gone (after the guard stopped it).
            if self.shared.tx.send(Msg::Record(owned)).is_err() {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        match self.shared.tx.try_send(Msg::Record(owned)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {
        let (done_tx, done_rx) = bounded(1);
        if self.shared.tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }
}

/// A record's `&'static` string as it is, or a copy of its borrowed one.
fn static_or_owned(fixed: Option<&'static str>, any: Option<&str>) -> Option<Cow<'static, str>> {
    fixed
        .map(Cow::Borrowed)
        .or_else(|| any.map(|s| Cow::Owned(s.to_owned())))
}

/// Where the formatter writes: lines gather in memory until the logging thread writes them out
/// together ([`Batch::write_out`]). `flush` (which env_logger calls after each record) does
/// nothing.
#[derive(Clone, Default)]
struct Batch(Arc<Mutex<Vec<u8>>>);

impl Write for Batch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Batch {
    /// Writes the gathered lines to `out` (stderr) in one go, inside the registered
    /// [`WriteAround`].
    fn write_out(&self, out: &mut dyn Write) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() {
            return;
        }
        around(&mut || {
            // Nowhere to report a failed write to stderr: the lines are lost, as they would
            // be unbuffered.
            let _ = out.write_all(&lines).and_then(|()| out.flush());
        });
        lines.clear();
        if lines.capacity() > 1 << 20 {
            lines.shrink_to(64 * 1024);
        }
    }
}

/// Flushes and stops the logging thread when dropped (hold it in `main`).
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogGuard {
    /// Records dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // A blocking send is fine here: we are exiting and want every queued line written.
        let _ = self.shared.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.stopped.store(true, Ordering::Relaxed);
    }
}

/// Installs the channel logger as the global logger. `default_filter` applies when `RUST_LOG`
/// is not set (for example "info"). Returns `None` if a global logger is already installed.
pub fn init(default_filter: &str) -> Option<LogGuard> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.set(()).is_err() {
        return None;
    }
    let env = env_logger::Env::default().default_filter_or(default_filter);
    let filter = Arc::new(env_logger::Builder::from_env(env).build());
    let max = filter.filter();
    // The writer formats whatever the filter (or a level set later) let through.
    let mut writer = env_logger::Builder::new();
    writer.filter_level(LevelFilter::Trace);
    let batch = Batch::default();
    writer.target(env_logger::Target::Pipe(Box::new(batch.clone())));
    // env_logger chooses colours only for its own stderr target: choose as it would.
    match std::env::var("RUST_LOG_STYLE").ok().filter(|s| s != "auto") {
        Some(style) => {
            writer.parse_write_style(&style);
        }
        None => {
            writer.write_style(if std::io::stderr().is_terminal() {
                env_logger::WriteStyle::Always
            } else {
                env_logger::WriteStyle::Never
            });
        }
    }
    if journal_format() {
        writer.format(|buf, r| {
            use std::io::Write;
            writeln!(
                buf,
                "<{}>{}: {}",
                syslog_priority(r.level()),
                r.target(),
                r.args()
            )
        });
    }
    let writer = Arc::new(writer.build());
    let (tx, rx) = bounded(LOG_QUEUE);
    let shared = Arc::new(Shared {
        tx,
        dropped: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
    });
    let logger = ChannelLogger {
        filter,
        shared: shared.clone(),
    };
    let writer_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log".into())
        .spawn(move || run(rx, writer, batch, writer_shared, &mut std::io::stderr()))
        .ok()?;
    if log::set_boxed_logger(Box::new(logger)).is_err() {
        return None;
    }
    log::set_max_level(max.max(LevelFilter::Error));
    Some(LogGuard {
        shared,
        thread: Some(thread),
    })
}

/// The environment variable that chooses the log format: `journal` (syslog priority prefix,
/// no timestamp) or `plain` (env_logger's, with a timestamp); unset: `journal` when stderr is
/// the systemd journal ([`stderr_is_journal`]).
pub const LOG_FORMAT_ENV: &str = "SMTPD_LOG_FORMAT";

static CHOSEN: OnceLock<bool> = OnceLock::new();

/// Chooses the format before [`init`] (a program's `--log-format`): `true` for the journal's,
/// `false` for env_logger's. Overrides the environment.
pub fn choose_journal_format(journal: bool) {
    let _ = CHOSEN.set(journal);
}

/// True when log lines are written for the journal: `<N>target: message` with the syslog
/// priority N (journald reads it, and stamps the time itself).
pub fn journal_format() -> bool {
    if let Some(&chosen) = CHOSEN.get() {
        return chosen;
    }
    match std::env::var(LOG_FORMAT_ENV).as_deref() {
        Ok("journal") => true,
        Ok("plain") => false,
        _ => stderr_is_journal(),
    }
}

/// True when stderr is the journal's stream: `JOURNAL_STREAM` (`DEV:INODE`, set by systemd)
/// names the file stderr is (a child whose stderr was redirected elsewhere is not fooled).
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat on fd 2 into a zeroed struct it fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// The syslog priority of a level (sd-daemon(3) prefixes).
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn run(
    rx: Receiver<Msg>,
    writer: Arc<env_logger::Logger>,
    batch: Batch,
    shared: Arc<Shared>,
    out: &mut dyn Write,
) {
    let mut reported = 0u64;
    while let Ok(first) = rx.recv() {
        let mut records = 0usize;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            let dropped = shared.dropped.load(Ordering::Relaxed);
            if dropped > reported {
                write(
                    &writer,
                    Level::Warn,
                    "log",
                    &format!(
                        "{} log records dropped: logging thread overloaded",
                        dropped - reported
                    ),
                );
                reported = dropped;
            }
            match msg {
                Msg::Record(r) => {
                    emit(&writer, &r);
                    records += 1;
                }
                Msg::Flush(done) => {
                    batch.write_out(out);
                    let _ = done.send(());
                }
                Msg::Stop => {
                    while let Ok(Msg::Record(r)) = rx.try_recv() {
                        emit(&writer, &r);
                    }
                    batch.write_out(out);
                    return;
                }
            }
            if records < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        batch.write_out(out);
        if records > 1 {
            std::thread::sleep(COALESCE);
        }
    }
}

/// What runs around each line the logging thread writes (see [`set_write_around`]).
pub type WriteAround = Box<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

static AROUND: OnceLock<WriteAround> = OnceLock::new();

/// Makes the logging thread write every line inside `around`: a terminal progress bar hides
/// itself while a line is written (indicatif's `ProgressBar::suspend`), so lines and bar do not
/// overwrite each other. Set once per process; false if it was already set.
pub fn set_write_around(around: WriteAround) -> bool {
    AROUND.set(around).is_ok()
}

/// Runs `f` inside the registered [`WriteAround`], if any.
fn around(f: &mut dyn FnMut()) {
    match AROUND.get() {
        Some(a) => a(f),
        None => f(),
    }
}

/// Formats a record into the batch.
fn emit(writer: &env_logger::Logger, r: &OwnedRecord) {
    writer.log(
        &Record::builder()
            .level(r.level)
            .target(&r.target)
            .module_path(r.module_path.as_deref())
            .file(r.file.as_deref())
            .line(r.line)
            .args(format_args!("{}", r.args))
            .build(),
    );
}

/// Formats a record of the logging thread's own into the batch.
fn write(writer: &env_logger::Logger, level: Level, target: &str, text: &str) {
    writer.log(
        &Record::builder()
            .level(level)
            .target(target)
            .args(format_args!("{text}"))
            .build(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn audit_targets() {
        assert!(is_audit("audit"));
        assert!(is_audit("smtp_relay::audit"));
        assert!(!is_audit("smtp_relay::reactor"));
        assert!(!is_audit("inaudit"));
        assert!(!is_audit("smtp_relay::audit::x"));
    }

    /// Counts the writes it gets.
    #[derive(Clone, Default)]
    struct Counting(Arc<Mutex<(usize, Vec<u8>)>>);

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut g = self.0.lock().expect("lock");
            g.0 += 1;
            g.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Records queued while the thread was busy are written together, in order, with one
    /// write; a flush request writes what came before it.
    #[test]
    fn queued_records_are_written_in_one_batch() {
        let (tx, rx) = bounded(64);
        let shared = Arc::new(Shared {
            tx: tx.clone(),
            dropped: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let batch = Batch::default();
        let writer = Arc::new(
            env_logger::Builder::new()
                .filter_level(LevelFilter::Trace)
                .format(|buf, r| writeln!(buf, "{}", r.args()))
                .target(env_logger::Target::Pipe(Box::new(batch.clone())))
                .build(),
        );
        let record = |i: usize| {
            Msg::Record(OwnedRecord {
                level: Level::Info,
                target: "t".into(),
                module_path: None,
                file: None,
                line: None,
                args: format!("line {i}"),
            })
        };
        for i in 0..10 {
            tx.send(record(i)).expect("queue");
        }
        let (done_tx, done_rx) = bounded(1);
        tx.send(Msg::Flush(done_tx)).expect("queue");
        tx.send(record(10)).expect("queue");
        tx.send(Msg::Stop).expect("queue");
        let out = Counting::default();
        let mut sink = out.clone();
        run(rx, writer, batch, shared, &mut sink);
        done_rx.try_recv().expect("the flush was answered");
        let (writes, text) = out.0.lock().expect("lock").clone();
        let want: String = (0..=10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&text), want);
        // The ten before the flush in one write, the last one with the stop.
        assert_eq!(writes, 2);
    }

    /// A logging thread that falls behind (here: not reading at all): ordinary records beyond
    /// the queue are dropped and counted, audit records wait and are all delivered.
    #[test]
    fn audit_records_wait_for_room_and_are_never_dropped() {
        let (tx, rx) = bounded(2);
        let shared = Arc::new(Shared {
            tx,
            dropped: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let filter = env_logger::Builder::new()
            .filter_level(LevelFilter::Info)
            .build();
        let logger = ChannelLogger {
            filter: Arc::new(filter),
            shared: shared.clone(),
        };
        let producer = std::thread::spawn(move || {
            let emit = |target: &str, text: &str| {
                logger.log(
                    &Record::builder()
                        .level(Level::Info)
                        .target(target)
                        .args(format_args!("{text}"))
                        .build(),
                )
            };
            for i in 0..3 {
                emit("smtp_relay::reactor", &format!("chatter {i}"));
            }
            for i in 0..5 {
                emit(
                    "smtp_relay::audit",
                    &format!("to=<r{i}@x.test>, status=sent"),
                );
            }
        });
        // The queue holds 2: the third ordinary record is dropped, the audit ones wait.
        let end = Instant::now() + Duration::from_secs(30);
        while shared.dropped.load(Ordering::Relaxed) < 1 {
            assert!(Instant::now() < end, "the third record was never dropped");
            std::thread::yield_now();
        }
        let mut got = Vec::new();
        while got.len() < 7 {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Msg::Record(r)) => got.push(r.args),
                Ok(_) => {}
                Err(e) => panic!("records missing after {got:?}: {e}"),
            }
        }
        producer.join().expect("producer thread");
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
        let audit: Vec<&String> = got.iter().filter(|a| a.contains("status=sent")).collect();
        assert_eq!(audit.len(), 5, "{got:?}");
        assert!(rx.try_recv().is_err(), "nothing else queued");
    }
}
