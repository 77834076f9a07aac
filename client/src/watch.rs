//! Waiting between runs in `--interval` mode: until the period passes or a file appears in
//! `new/` (inotify), whichever comes first.
//!
//! Owns: the inotify descriptor and the wait. Must not: read or change queued messages.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// A watch on a directory for files moved or created in it.
pub struct NewMailWatch {
    fd: OwnedFd,
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
        Ok(NewMailWatch { fd })
    }

    /// Returns after `period`, or earlier when new mail arrives (true).
    pub fn wait(&self, period: Duration) -> io::Result<bool> {
        let end = Instant::now() + period;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc > 0 {
                self.drain();
                return Ok(true);
            }
        }
    }

    fn drain(&self) {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer from our descriptor (non-blocking).
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}
