//! The logging thread: a `log::Log` whose callers only filter and enqueue, and a thread of its
//! own that formats and writes each record with env_logger (so `RUST_LOG` works as usual).
//!
//! The calling side never blocks: the channel is bounded and a record that does not fit is
//! dropped and counted; the count is reported by the thread as soon as it has room. A
//! [`LogGuard`] flushes and joins the thread at exit so the last lines are not lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// How many records may wait for the logging thread before new ones are dropped.
pub const LOG_QUEUE: usize = 16 * 1024;

enum Msg {
    Record(OwnedRecord),
    Flush(Sender<()>),
    Stop,
}

struct OwnedRecord {
    level: Level,
    target: String,
    module_path: Option<String>,
    file: Option<String>,
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

impl Log for ChannelLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.matches(record) || self.shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let owned = OwnedRecord {
            level: record.level(),
            target: record.target().to_owned(),
            module_path: record.module_path().map(str::to_owned),
            file: record.file().map(str::to_owned),
            line: record.line(),
            args: record.args().to_string(),
        };
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
    let writer = Arc::new(env_logger::Builder::from_env(env).build());
    let max = writer.filter();
    let (tx, rx) = bounded(LOG_QUEUE);
    let shared = Arc::new(Shared {
        tx,
        dropped: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
    });
    let logger = ChannelLogger {
        filter: writer.clone(),
        shared: shared.clone(),
    };
    let writer_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log".into())
        .spawn(move || run(rx, writer, writer_shared))
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

fn run(rx: Receiver<Msg>, writer: Arc<env_logger::Logger>, shared: Arc<Shared>) {
    let mut reported = 0u64;
    while let Ok(msg) = rx.recv() {
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
            Msg::Record(r) => emit(&writer, &r),
            Msg::Flush(done) => {
                writer.flush();
                let _ = done.send(());
            }
            Msg::Stop => {
                while let Ok(Msg::Record(r)) = rx.try_recv() {
                    emit(&writer, &r);
                }
                writer.flush();
                return;
            }
        }
    }
}

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

fn write(writer: &env_logger::Logger, level: Level, target: &str, text: &str) {
    writer.log(
        &Record::builder()
            .level(level)
            .target(target)
            .args(format_args!("{text}"))
            .build(),
    );
}
