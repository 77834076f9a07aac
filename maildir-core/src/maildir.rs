//! A Maildir on disk: layout, unique names, atomic and durable delivery, batch commit, and the
//! scan of `new/` that the relay reads.
//!
//! Delivery writes into `tmp/`, and a message appears in `new/` only by rename after its bytes
//! are on stable storage, so a reader never sees a partial file and a crash loses nothing that
//! was committed. That rename never replaces a file already in `new/` (a name repeated after a
//! pid reuse fails the delivery instead of overwriting a message).
//!
//! This module does no protocol work and starts no threads: the parallel flushes of
//! `commit_batch` and smtpd's long-lived group commit are [`crate::commit`]'s.

use std::ffi::CString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Files in `tmp/` older than this are abandoned deliveries (the Maildir convention).
pub const STALE_TMP_AGE: Duration = Duration::from_secs(36 * 3600);

/// A failed Maildir operation, naming what was attempted and on which path.
#[derive(Debug)]
pub struct MaildirError {
    /// What was being done ("create", "write", "fsync", "rename", ...).
    pub op: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The underlying error.
    pub source: io::Error,
}

impl MaildirError {
    pub(crate) fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        MaildirError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the failure is a full disk or exhausted quota (a temporary condition).
    pub fn is_storage_full(&self) -> bool {
        storage_full(&self.source)
    }
}

/// True for "no space left" and "over quota" (ENOSPC, EDQUOT): temporary for the client
/// (452), unlike other storage failures.
pub fn storage_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

impl fmt::Display for MaildirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.op,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for MaildirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// How a commit makes messages durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the data and the `new/` directory before reporting success.
    Fsync,
    /// Rename only (benchmarks and throw-away sinks): a crash may lose committed mail.
    NoFsync,
}

/// An open Maildir: the root with its `tmp/`, `new/` and `cur/` subdirectories.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    tmp: PathBuf,
    new: PathBuf,
    cur: PathBuf,
    /// Permissions of the files [`Maildir::deliver`] creates (0600 unless
    /// [`Maildir::with_file_mode`] says otherwise).
    file_mode: u32,
    /// `tmp/` and `new/` held open ([`Maildir::with_open_dirs`]), or None.
    dirs: Option<Arc<OpenDirs>>,
}

/// A Maildir's `tmp/` and `new/` held open: files are created, renamed and removed relative to
/// them (`openat`, `renameat2`, `unlinkat`) instead of walking the whole path every time.
#[derive(Debug)]
struct OpenDirs {
    tmp: OwnedFd,
    new: OwnedFd,
}

/// A message that reached `new/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The unique base name, used as the queue id.
    pub id: String,
    /// Its path in `new/`.
    pub path: PathBuf,
    /// Its size in octets.
    pub size: u64,
}

/// A message in `new/`, as listed by [`Maildir::scan_new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// File name inside `new/`.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
}

impl Maildir {
    /// Opens the Maildir at `root`, creating it and its subdirectories (mode 0700) if missing,
    /// checking it is writable, and removing abandoned files from `tmp/`.
    pub fn open(root: impl AsRef<Path>) -> Result<Maildir, MaildirError> {
        let root = root.as_ref().to_path_buf();
        let md = Maildir {
            tmp: root.join("tmp"),
            new: root.join("new"),
            cur: root.join("cur"),
            root,
            file_mode: 0o600,
            dirs: None,
        };
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for dir in [&md.root, &md.tmp, &md.new, &md.cur] {
            if dir.exists() && !dir.is_dir() {
                return Err(MaildirError::new(
                    "use",
                    dir,
                    io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                ));
            }
            builder
                .create(dir)
                .map_err(|e| MaildirError::new("create directory", dir, e))?;
        }
        // A probe file proves tmp/ is writable (access(2) says yes to root on a read-only mount).
        let probe = md.tmp.join(format!(".probe.{}", std::process::id()));
        File::create(&probe).map_err(|e| MaildirError::new("write in", &md.tmp, e))?;
        let _ = fs::remove_file(&probe);
        md.clean_tmp(SystemTime::now())?;
        Ok(md)
    }

    /// Opens a Maildir that must already exist, without creating, cleaning or listing
    /// anything: for a writer that may only drop files into it (`sendmail`, run by any user,
    /// whose group may write `tmp/` and `new/` but not list them).
    pub fn open_existing(root: impl AsRef<Path>) -> Result<Maildir, MaildirError> {
        let root = root.as_ref().to_path_buf();
        let md = Maildir {
            tmp: root.join("tmp"),
            new: root.join("new"),
            cur: root.join("cur"),
            root,
            file_mode: 0o600,
            dirs: None,
        };
        for dir in [&md.tmp, &md.new] {
            let meta = fs::metadata(dir).map_err(|e| MaildirError::new("use", dir, e))?;
            if !meta.is_dir() {
                return Err(MaildirError::new(
                    "use",
                    dir,
                    io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                ));
            }
        }
        Ok(md)
    }

    /// The same Maildir, creating its files with permissions `mode` (set explicitly, whatever
    /// the umask): `sendmail` makes its queue files readable by the mail system's group.
    pub fn with_file_mode(mut self, mode: u32) -> Maildir {
        self.file_mode = mode;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `new/` directory.
    pub fn new_dir(&self) -> &Path {
        &self.new
    }

    /// The `cur/` directory.
    pub fn cur_dir(&self) -> &Path {
        &self.cur
    }

    /// The `tmp/` directory.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Removes files in `tmp/` older than [`STALE_TMP_AGE`] relative to `now`; returns how many.
    pub fn clean_tmp(&self, now: SystemTime) -> Result<usize, MaildirError> {
        let mut removed = 0;
        let dir = fs::read_dir(&self.tmp).map_err(|e| MaildirError::new("read", &self.tmp, e))?;
        for entry in dir.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if meta.is_file() && age > STALE_TMP_AGE {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => {
                        log::info!("removed stale tmp file {}", path.display());
                        removed += 1;
                    }
                    Err(e) => log::warn!("cannot remove stale tmp file {}: {e}", path.display()),
                }
            }
        }
        Ok(removed)
    }

    /// Holds `tmp/` and `new/` open for the life of this Maildir (and its clones): deliveries
    /// then create, rename and remove their files relative to them, which spares the kernel
    /// the walk of the whole path at every step (smtpd's queue: a few per message). Two file
    /// descriptors, so not for the users' Maildirs, which are many.
    pub fn with_open_dirs(mut self) -> Result<Maildir, MaildirError> {
        let open = |dir: &Path| {
            File::open(dir)
                .map(OwnedFd::from)
                .map_err(|e| MaildirError::new("open", dir, e))
        };
        self.dirs = Some(Arc::new(OpenDirs {
            tmp: open(&self.tmp)?,
            new: open(&self.new)?,
        }));
        Ok(self)
    }

    /// Starts a delivery: creates a new uniquely named file in `tmp/` to stream the message into.
    pub fn deliver(&self) -> Result<Delivery, MaildirError> {
        let id = unique_name(SystemTime::now());
        let tmp_path = self.tmp.join(&id);
        let created = match &self.dirs {
            Some(dirs) => create_at(&dirs.tmp, &id),
            None => OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp_path),
        };
        let file = created.map_err(|e| MaildirError::new("create", &tmp_path, e))?;
        let delivery = Delivery {
            file: Some(file),
            tmp_path,
            new_dir: self.new.clone(),
            dirs: self.dirs.clone(),
            new_is_open: true,
            id,
            size: 0,
        };
        if self.file_mode != 0o600 {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::Permissions::from_mode(self.file_mode);
            if let Some(Err(e)) = delivery.file.as_ref().map(|f| f.set_permissions(mode)) {
                let path = delivery.tmp_path.clone();
                drop(delivery);
                return Err(MaildirError::new("set the mode of", &path, e));
            }
        }
        Ok(delivery)
    }

    /// Makes every delivery in `batch` durable and moves it into `new/`: the files are flushed
    /// from parallel threads ([`crate::commit::sync_all`]), then [`Maildir::publish`] renames them
    /// with one directory fsync for the whole batch. Results come back in the order given.
    pub fn commit_batch(
        &self,
        batch: Vec<Delivery>,
        durability: Durability,
    ) -> Vec<Result<Delivered, MaildirError>> {
        if durability == Durability::NoFsync {
            return batch
                .into_iter()
                .map(|d| d.commit(Durability::NoFsync))
                .collect();
        }
        let synced = crate::commit::sync_all(batch, crate::commit::SYNC_THREADS);
        let mut results: Vec<Option<Result<Delivered, MaildirError>>> =
            (0..synced.len()).map(|_| None).collect();
        let mut ok = Vec::with_capacity(synced.len());
        let mut slots = Vec::with_capacity(synced.len());
        for (i, r) in synced.into_iter().enumerate() {
            match r {
                Ok(s) => {
                    ok.push(s);
                    slots.push(i);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        for (i, r) in slots.into_iter().zip(self.publish(ok)) {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(MaildirError::new(
                        "commit",
                        &self.new,
                        io::Error::other("internal: no result"),
                    ))
                })
            })
            .collect()
    }

    /// Publishes deliveries whose bytes are already durable: renames each into `new/`, then one
    /// fsync of `new/` for all of them. Results come back in the order given.
    pub fn publish(&self, batch: Vec<Synced>) -> Vec<Result<Delivered, MaildirError>> {
        let mut results: Vec<Result<Delivered, MaildirError>> = batch
            .into_iter()
            .map(|Synced(mut d)| d.rename_into_new())
            .collect();
        if results.iter().any(Result::is_ok)
            && let Err(e) = fsync_dir(&self.new)
        {
            // The files are in new/ but their names may not survive a crash: report failure
            // so the client retries (a duplicate is better than a loss).
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(MaildirError::new(
                    "fsync",
                    &self.new,
                    io::Error::new(e.source.kind(), e.to_string()),
                ));
            }
        }
        results
    }

    /// Lists the messages in `new/` in arrival order (by the time in their unique names, then
    /// by modification time for names of other formats).
    pub fn scan_new(&self) -> Result<Vec<NewEntry>, MaildirError> {
        let dir = fs::read_dir(&self.new).map_err(|e| MaildirError::new("read", &self.new, e))?;
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| MaildirError::new("read", &self.new, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let key = name_time(&name).unwrap_or_else(|| {
                entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| (d.as_secs(), u64::from(d.subsec_micros())))
                    .unwrap_or((0, 0))
            });
            entries.push((
                key,
                NewEntry {
                    path: entry.path(),
                    name,
                },
            ));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        Ok(entries.into_iter().map(|(_, e)| e).collect())
    }

    /// Moves `new/<name>` to `cur/<name>:2,<flags>` (flags in ASCII order, as the convention asks).
    pub fn move_to_cur(&self, name: &str, flags: &str) -> Result<PathBuf, MaildirError> {
        let from = self.new.join(name);
        let mut sorted: Vec<char> = flags.chars().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let base = name.split(":2,").next().unwrap_or(name);
        let to = self.cur.join(format!(
            "{base}:2,{}",
            sorted.into_iter().collect::<String>()
        ));
        fs::rename(&from, &to).map_err(|e| MaildirError::new("rename", &from, e))?;
        Ok(to)
    }
}

/// A delivery whose bytes are on stable storage, waiting for [`Maildir::publish`]. Dropping it
/// removes the tmp file, like a [`Delivery`].
#[derive(Debug)]
pub struct Synced(Delivery);

impl Synced {
    /// The unique base name, used as the queue id.
    pub fn id(&self) -> &str {
        self.0.id()
    }
}

/// Makes the bytes of every delivery durable with one `syncfs(2)` per directory they are
/// written in (each on one file system), instead of an fdatasync per file: the kernel writes
/// them back together, in few large requests, and commits once. Everything else written to
/// those file systems is flushed too, so this is for a queue on a file system of its own.
/// Write-back errors are reported from Linux 5.8 on. Results come in the order given.
pub fn sync_fs(batch: Vec<Delivery>) -> Vec<Result<Synced, MaildirError>> {
    let mut outcome: Vec<(PathBuf, Result<(), MaildirError>)> = Vec::new();
    let mut flushed: Vec<Result<Delivery, MaildirError>> = batch
        .into_iter()
        .map(|mut d| d.flush_file().map(|()| d))
        .collect();
    for d in flushed.iter_mut().flatten() {
        let dir = d.tmp_path.parent().unwrap_or(Path::new(".")).to_owned();
        if outcome.iter().any(|(known, _)| *known == dir) {
            continue;
        }
        let r = match &d.file {
            Some(f) => syncfs(f).map_err(|e| MaildirError::new("syncfs", &dir, e)),
            None => Ok(()),
        };
        outcome.push((dir, r));
    }
    flushed
        .into_iter()
        .map(|r| {
            let d = r?;
            let dir = d.tmp_path.parent().unwrap_or(Path::new("."));
            match outcome.iter().find(|(known, _)| known == dir) {
                Some((_, Err(e))) => Err(MaildirError::new(
                    "syncfs",
                    dir,
                    io::Error::new(e.source.kind(), e.source.to_string()),
                )),
                _ => Ok(Synced(d)),
            }
        })
        .collect()
}

/// `syncfs(2)` on the file system holding `f`.
fn syncfs(f: &File) -> io::Result<()> {
    // SAFETY: a valid open descriptor, borrowed for the call.
    os_result(unsafe { libc::syncfs(f.as_raw_fd()) })
}

/// A libc call's 0 as Ok, anything else as the error it left in `errno`.
fn os_result(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Publishes synced deliveries that may belong to different Maildirs (local delivery to
/// several users' Maildirs and the queue in one group commit): renames each into its own
/// `new/`, then one fsync per distinct `new/` directory. A rename or fsync failure fails the
/// deliveries it concerns (their names may not survive a crash). Results come in the order given.
pub fn publish_all(batch: Vec<Synced>) -> Vec<Result<Delivered, MaildirError>> {
    // Each `new/` once, with its descriptor when its Maildir holds it open.
    let mut dirs: Vec<(PathBuf, Option<Arc<OpenDirs>>)> = Vec::new();
    let mut results: Vec<(PathBuf, Result<Delivered, MaildirError>)> = batch
        .into_iter()
        .map(|Synced(mut d)| {
            let dir = d.new_dir.clone();
            let open = d.dirs.clone().filter(|_| d.new_is_open);
            match dirs.iter_mut().find(|(known, _)| *known == dir) {
                Some((_, held)) => *held = held.take().or(open),
                None => dirs.push((dir.clone(), open)),
            }
            (dir, d.rename_into_new())
        })
        .collect();
    for (dir, open) in dirs {
        if !results.iter().any(|(d, r)| *d == dir && r.is_ok()) {
            continue;
        }
        let synced = match open {
            Some(o) => fsync_fd(&o.new).map_err(|e| MaildirError::new("fsync", &dir, e)),
            None => fsync_dir(&dir),
        };
        if let Err(e) = synced {
            for (_, r) in results.iter_mut().filter(|(d, r)| *d == dir && r.is_ok()) {
                *r = Err(MaildirError::new(
                    "fsync",
                    &dir,
                    io::Error::new(e.source.kind(), e.to_string()),
                ));
            }
        }
    }
    results.into_iter().map(|(_, r)| r).collect()
}

/// A message being written into `tmp/`. Dropping it without committing removes the tmp file.
#[derive(Debug)]
pub struct Delivery {
    file: Option<File>,
    tmp_path: PathBuf,
    new_dir: PathBuf,
    /// The Maildir's open `tmp/` and `new/`, if it holds them (the file is named `id` in
    /// `tmp/`).
    dirs: Option<Arc<OpenDirs>>,
    /// True while `new_dir` is the one `dirs` holds open.
    new_is_open: bool,
    id: String,
    size: u64,
}

impl Delivery {
    /// The unique base name, used as the queue id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Octets written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the file go into `md`'s `new/` when published, instead of its own Maildir's: a
    /// spooled message that is also a user's copy (local delivery). The rename needs both
    /// Maildirs on one file system.
    pub fn publish_into(&mut self, md: &Maildir) {
        if md.new != self.new_dir {
            self.new_dir = md.new.clone();
            // Renamed by path from now on; the open `tmp/` still serves a removal.
            self.new_is_open = false;
        }
    }

    /// Where the file is being written (in `tmp/`), to read it back (local delivery copies the
    /// spooled message from it).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Commits this one message durably: fsync the file, rename into `new/`, fsync `new/`.
    pub fn commit(mut self, durability: Durability) -> Result<Delivered, MaildirError> {
        if durability == Durability::NoFsync {
            self.flush_file()?;
            return self.rename_into_new();
        }
        let new_dir = self.new_dir.clone();
        let mut done = self.sync()?;
        let delivered = done.0.rename_into_new()?;
        fsync_dir(&new_dir)?;
        Ok(delivered)
    }

    /// Makes the file's bytes durable (fdatasync); it is not in `new/` until
    /// [`Maildir::publish`]. Several files synced from parallel threads cost about one device
    /// flush, as the block layer merges flush requests pending together.
    pub fn sync(mut self) -> Result<Synced, MaildirError> {
        self.flush_file()?;
        if let Some(f) = &self.file {
            f.sync_data()
                .map_err(|e| MaildirError::new("fsync", &self.tmp_path, e))?;
        }
        Ok(Synced(self))
    }

    /// Abandons the delivery and removes its tmp file.
    pub fn abort(self) {
        drop(self)
    }

    fn flush_file(&mut self) -> Result<(), MaildirError> {
        match &mut self.file {
            Some(f) => f
                .flush()
                .map_err(|e| MaildirError::new("write", &self.tmp_path, e)),
            None => Err(MaildirError::new(
                "write",
                &self.tmp_path,
                io::Error::other("delivery already finished"),
            )),
        }
    }

    fn rename_into_new(&mut self) -> Result<Delivered, MaildirError> {
        let final_name = format!("{},S={}", self.id, self.size);
        let path = self.new_dir.join(&final_name);
        let renamed = match &self.dirs {
            Some(dirs) if self.new_is_open => rename_noreplace(
                (dirs.tmp.as_raw_fd(), Path::new(&self.id)),
                (dirs.new.as_raw_fd(), Path::new(&final_name)),
            ),
            _ => rename_noreplace((libc::AT_FDCWD, &self.tmp_path), (libc::AT_FDCWD, &path)),
        };
        renamed.map_err(|e| MaildirError::new("rename", &self.tmp_path, e))?;
        self.file = None;
        Ok(Delivered {
            id: std::mem::take(&mut self.id),
            path,
            size: self.size,
        })
    }

    /// The file being written, and its size to count what is written.
    fn writing(&mut self) -> io::Result<(&mut File, &mut u64)> {
        match &mut self.file {
            Some(f) => Ok((f, &mut self.size)),
            None => Err(io::Error::other("delivery already finished")),
        }
    }
}

impl Write for Delivery {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (f, size) = self.writing()?;
        let n = f.write(buf)?;
        *size += n as u64;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let (f, size) = self.writing()?;
        let n = f.write_vectored(bufs)?;
        *size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.file.take().is_none() {
            return;
        }
        let removed = match &self.dirs {
            Some(dirs) => unlink_at(&dirs.tmp, &self.id),
            None => fs::remove_file(&self.tmp_path),
        };
        if let Err(e) = removed {
            log::warn!("cannot remove {}: {e}", self.tmp_path.display());
        }
    }
}

/// `fsync(2)` on a directory held open.
fn fsync_fd(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a valid open descriptor, borrowed for the call.
    os_result(unsafe { libc::fsync(fd.as_raw_fd()) })
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), MaildirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| MaildirError::new("fsync", dir, e))
}

/// A path relative to a directory descriptor (`AT_FDCWD`: the current directory).
type At<'a> = (RawFd, &'a Path);

/// The path as a C string.
fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Creates `name` in the directory `dir` (exclusively, mode 0600, write only).
fn create_at(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let c = c_path(Path::new(name))?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name; the descriptor returned
    // is new and owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Removes `name` from the directory `dir`.
fn unlink_at(dir: &OwnedFd, name: &str) -> io::Result<()> {
    let c = c_path(Path::new(name))?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    os_result(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) })
}

/// Renames `from` to `to` unless `to` exists (then `EEXIST`, and both files stay as they
/// were): a name reused after a pid reuse must never replace a message already in `new/`.
/// `renameat2(RENAME_NOREPLACE)`, or link and unlink where the file system lacks it.
fn rename_noreplace(from: At<'_>, to: At<'_>) -> io::Result<()> {
    let (f, t) = (c_path(from.1)?, c_path(to.1)?);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: valid directory descriptors (or AT_FDCWD) and NUL-terminated paths.
        let r = unsafe {
            libc::renameat2(from.0, f.as_ptr(), to.0, t.as_ptr(), libc::RENAME_NOREPLACE)
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(e);
        }
    }
    // link(2) never replaces an existing name. Once the link exists the message is in place:
    // a failed unlink of the tmp/ name must not turn it into a failure (the client would send
    // it again), it only leaves a second name that the stale-tmp cleanup removes.
    // SAFETY: as above.
    os_result(unsafe { libc::linkat(from.0, f.as_ptr(), to.0, t.as_ptr(), 0) })?;
    // SAFETY: as above.
    if let Err(e) = os_result(unsafe { libc::unlinkat(from.0, f.as_ptr(), 0) }) {
        log::warn!(
            "{} is delivered as {}, but its tmp/ name stays: {e}",
            from.1.display(),
            to.1.display()
        );
    }
    Ok(())
}

/// `<secs>.M<usecs>P<pid>Q<seq>.<host>`: unique without locks across threads and processes.
fn unique_name(now: SystemTime) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static PID: OnceLock<u32> = OnceLock::new();
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{}P{}Q{}.{}",
        d.as_secs(),
        d.subsec_micros(),
        PID.get_or_init(std::process::id),
        seq,
        hostname()
    )
}

/// The host name with `/` and `:` written as `\057` and `\072`, as the Maildir convention says.
pub fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let raw = system_hostname().unwrap_or_else(|| "localhost".to_owned());
        raw.replace('/', "\\057").replace(':', "\\072")
    })
}

/// The system's host name, as gethostname(2) gives it.
pub fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for buf.len() bytes; gethostname NUL-terminates on success
    // when the name fits, and we bound the search by the buffer length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// The (secs, usecs) of a name in our convention, for arrival order.
pub(crate) fn name_time(name: &str) -> Option<(u64, u64)> {
    let (secs, rest) = name.split_once('.')?;
    let rest = rest.strip_prefix('M')?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    Some((secs.parse().ok()?, rest[..end].parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// `open_existing` creates and cleans nothing and refuses a Maildir without `tmp/` or
    /// `new/`; `with_file_mode` sets the files' mode whatever the umask.
    #[test]
    fn open_existing_and_file_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Maildir");
        let e = Maildir::open_existing(&root).unwrap_err();
        assert!(e.to_string().contains("tmp"), "{e}");
        assert!(!root.exists(), "nothing created");
        Maildir::open(&root).unwrap();
        let stale = root.join("tmp").join("stale");
        fs::write(&stale, b"x").unwrap();
        let md = Maildir::open_existing(&root).unwrap().with_file_mode(0o640);
        assert!(stale.exists(), "tmp/ is not cleaned");
        let d = md.deliver().unwrap();
        let mode = fs::metadata(d.tmp_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let done = d.commit(Durability::Fsync).unwrap();
        let mode = fs::metadata(&done.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        fs::remove_file(&done.path).unwrap();
        fs::remove_dir(root.join("new")).unwrap();
        assert!(Maildir::open_existing(&root).is_err());
    }

    #[test]
    fn deliver_commit_and_scan() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path().join("Maildir")).unwrap();
        let mut d = md.deliver().unwrap();
        d.write_all(b"Subject: one\r\n\r\nhi\r\n").unwrap();
        let done = d.commit(Durability::Fsync).unwrap();
        assert!(done.path.to_str().unwrap().ends_with(",S=20"));
        let mut batch = Vec::new();
        for i in 0..5 {
            let mut d = md.deliver().unwrap();
            write!(d, "Subject: {i}\r\n\r\n").unwrap();
            batch.push(d);
        }
        let results = md.commit_batch(batch, Durability::Fsync);
        assert!(results.iter().all(Result::is_ok));
        let listed = md.scan_new().unwrap();
        assert_eq!(listed.len(), 6);
        assert_eq!(listed[0].path, done.path);
        let mut s = String::new();
        File::open(&listed[3].path)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "Subject: 2\r\n\r\n");
        assert_eq!(fs::read_dir(md.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn abort_and_drop_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path()).unwrap();
        let mut d = md.deliver().unwrap();
        d.write_all(b"partial").unwrap();
        d.abort();
        drop(md.deliver().unwrap());
        assert_eq!(fs::read_dir(md.tmp_dir()).unwrap().count(), 0);
        assert_eq!(fs::read_dir(md.new_dir()).unwrap().count(), 0);
    }

    #[test]
    fn move_to_cur_sorts_flags() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path()).unwrap();
        let d = md.deliver().unwrap();
        let done = d.commit(Durability::NoFsync).unwrap();
        let name = done.path.file_name().unwrap().to_str().unwrap().to_owned();
        let cur = md.move_to_cur(&name, "TS").unwrap();
        assert!(cur.to_str().unwrap().ends_with(":2,ST"));
        assert!(md.scan_new().unwrap().is_empty());
    }

    #[test]
    fn stale_tmp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path()).unwrap();
        fs::write(md.tmp_dir().join("old"), b"x").unwrap();
        let later = SystemTime::now() + STALE_TMP_AGE + Duration::from_secs(60);
        assert_eq!(md.clean_tmp(later).unwrap(), 1);
        assert_eq!(md.clean_tmp(SystemTime::now()).unwrap(), 0);
    }

    #[test]
    fn refuses_a_file_as_root() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("plain");
        fs::write(&f, b"x").unwrap();
        let err = Maildir::open(&f).unwrap_err();
        assert!(err.to_string().contains("plain"), "{err}");
    }

    /// Issue 10 item 17: a rename into `new/` never replaces a file of the same name.
    #[test]
    fn rename_into_new_does_not_replace_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"new message").unwrap();
        fs::write(&b, b"message already delivered").unwrap();
        fn at(p: &Path) -> At<'_> {
            (libc::AT_FDCWD, p)
        }
        let e = rename_noreplace(at(&a), at(&b)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
        assert_eq!(fs::read(&b).unwrap(), b"message already delivered");
        assert_eq!(fs::read(&a).unwrap(), b"new message");
        let c = dir.path().join("c");
        rename_noreplace(at(&a), at(&c)).unwrap();
        assert!(!a.exists());
        assert_eq!(fs::read(&c).unwrap(), b"new message");
    }

    /// With `tmp/` and `new/` held open a delivery is created, renamed and removed the same
    /// as by path, and a file sent to another Maildir's `new/` is renamed there.
    #[test]
    fn open_dirs_deliver_commit_abort_and_redirect() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path().join("q"))
            .unwrap()
            .with_open_dirs()
            .unwrap();
        let other = Maildir::open(dir.path().join("user")).unwrap();
        let count = |d: &Path| fs::read_dir(d).unwrap().count();
        let mut d = md.deliver().unwrap();
        d.write_all(b"one\r\n").unwrap();
        let done = d.commit(Durability::Fsync).unwrap();
        assert_eq!(fs::read(&done.path).unwrap(), b"one\r\n");
        assert!(done.path.starts_with(md.new_dir()));
        let dropped = md.deliver().unwrap();
        assert_eq!(count(md.tmp_dir()), 1);
        drop(dropped);
        assert_eq!(count(md.tmp_dir()), 0);
        let mut d = md.deliver().unwrap();
        d.write_all(b"two\r\n").unwrap();
        d.publish_into(&other);
        let done = d.commit(Durability::NoFsync).unwrap();
        assert!(done.path.starts_with(other.new_dir()), "{done:?}");
        assert_eq!(fs::read(&done.path).unwrap(), b"two\r\n");
        assert_eq!((count(md.new_dir()), count(md.tmp_dir())), (1, 0));
    }

    #[test]
    fn hostname_is_sanitised() {
        assert!(!hostname().contains('/'));
        assert!(!hostname().contains(':'));
        assert_eq!(name_time("123.M45P6Q7.h,S=1"), Some((123, 45)));
        assert_eq!(name_time("junk"), None);
    }
}
