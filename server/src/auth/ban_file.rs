//! The durable bans file, `<queue maildir>/.smtpd/bans`: read once at start, rewritten by a
//! thread of its own (temporary file, fsync, rename, fsync of the directory) each time the
//! bans change, so the reactor never waits on the disk for it.
//!
//! Owns: the file's path and its I/O. Must not: decide who is banned (see [`super::bans`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{Sender, unbounded};

use super::bans::{self, Ban};

/// Where the bans are kept, relative to the queue Maildir.
pub const RELATIVE_PATH: &str = ".smtpd/bans";

/// The bans file of the queue Maildir at `maildir`.
pub fn path(maildir: &Path) -> PathBuf {
    maildir.join(RELATIVE_PATH)
}

/// Reads the bans saved by a previous run (none if there is no file). A file that cannot be
/// read or parsed is an error naming it.
pub fn load(path: &Path) -> Result<Vec<Ban>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => bans::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// Writes `bans` to `path` atomically and durably.
pub fn save(path: &Path, bans: &[Ban]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bans::format(bans).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The thread that writes the bans file; each [`Saver::save`] hands it the whole list, and
/// only the latest one waiting is written.
pub struct Saver {
    tx: Option<Sender<Vec<Ban>>>,
    thread: Option<JoinHandle<()>>,
}

impl Saver {
    /// Starts the thread writing to `path`.
    pub fn spawn(path: PathBuf) -> std::io::Result<Saver> {
        let (tx, rx) = unbounded::<Vec<Ban>>();
        let thread = std::thread::Builder::new()
            .name("bans".into())
            .spawn(move || {
                while let Ok(mut latest) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        latest = newer;
                    }
                    if let Err(e) = save(&path, &latest) {
                        log::error!("cannot save the bans to {}: {e}", path.display());
                    }
                }
            })?;
        Ok(Saver {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues the bans in force for writing.
    pub fn save(&self, bans: Vec<Ban>) {
        if let Some(tx) = &self.tx
            && tx.send(bans).is_err()
        {
            log::error!("the bans file thread is gone: bans are not saved");
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `2026-12-03T15:04:05Z`: RFC 3339 in UTC, for the log line of a ban.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_868_799);
        assert_eq!(rfc3339(t), "2000-02-29T23:59:59Z");
    }

    #[test]
    fn save_then_load() {
        let dir = std::env::temp_dir().join(format!("smtpd-bans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = path(&dir);
        assert_eq!(load(&p).unwrap(), Vec::new());
        let bans = vec![Ban {
            ip: "192.0.2.7".parse().unwrap(),
            until: UNIX_EPOCH + Duration::from_secs(2_000_000_000),
            failures: 3,
        }];
        {
            let saver = Saver::spawn(p.clone()).unwrap();
            saver.save(Vec::new());
            saver.save(bans.clone());
        }
        assert_eq!(load(&p).unwrap(), bans);
        std::fs::write(&p, "garbage\n").unwrap();
        assert!(load(&p).unwrap_err().contains("line 1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
