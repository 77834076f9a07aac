//! Waiting between runs in `--interval` mode: until the period passes, a file appears in
//! `new/` (inotify), or a stop signal (SIGTERM/SIGINT) arrives, whichever comes first.
//!
//! Owns: the inotify descriptor, the signal self-pipe and the wait. Must not: read or change
//! queued messages.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The period passed.
    Timeout,
    /// Mail appeared in `new/`.
    NewMail,
    /// SIGTERM or SIGINT: finish up and exit.
    Stop,
}

/// A watch on a directory for files moved or created in it, and on stop signals.
pub struct NewMailWatch {
    fd: OwnedFd,
    /// Read end of the self-pipe the signal handler writes to.
    signals: UnixStream,
}

impl NewMailWatch {
    /// Watches `dir` (the Maildir's `new/`).
    pub fn new(dir: &Path) -> io::Result<NewMailWatch> {
        // SAFETY: plain syscall; the descriptor is checked and then owned.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_MOVED_TO | libc::IN_CREATE,
            )
        };
        if wd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot watch {}: {e}", dir.display()),
            ));
        }
        let (signals, writer) = UnixStream::pair()?;
        signals.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let writer2 = writer.try_clone()?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, writer)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, writer2)?;
        Ok(NewMailWatch { fd, signals })
    }

    /// Returns after `period`, earlier when new mail arrives, or at once when a stop signal
    /// arrived (also one that arrived while a run was under way).
    pub fn wait(&self, period: Duration) -> io::Result<Wake> {
        let end = Instant::now() + period;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Wake::Timeout);
            }
            let mut pfd = [
                libc::pollfd {
                    fd: self.signals.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: two valid pollfds in a local array.
            let rc = unsafe { libc::poll(pfd.as_mut_ptr(), 2, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if pfd[0].revents != 0 {
                let mut buf = [0u8; 64];
                let _ = (&self.signals).read(&mut buf);
                return Ok(Wake::Stop);
            }
            if rc > 0 {
                self.drain();
                return Ok(Wake::NewMail);
            }
        }
    }

    fn drain(&self) {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer from our descriptor (non-blocking).
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}
