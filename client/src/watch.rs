//! The relay's outside wake-ups as descriptors the reactor polls: stop signals (SIGTERM/SIGINT)
//! and the reload signal (SIGHUP), each through a self-pipe, and, in `--interval` mode, files appearing in `new/` (inotify).
//!
//! Owns: the inotify descriptor, the signal self-pipe, and draining them. Must not: read or
//! change queued messages, or decide what a wake-up leads to (run does).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The read end of a self-pipe that signals write to: SIGTERM and SIGINT (stop), SIGHUP
/// (`--interval`: reload between passes). Installed once at start, so a signal at any moment
/// (during a scan, a session, a pause) is seen by the next poll.
pub struct SignalPipe {
    reader: UnixStream,
}

impl SignalPipe {
    /// Installs the handlers for `signals` (replacing the default "terminate" disposition).
    pub fn install(signals: &[i32]) -> io::Result<SignalPipe> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        for &sig in signals {
            signal_hook::low_level::pipe::register(sig, writer.try_clone()?)?;
        }
        Ok(SignalPipe { reader })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// True when a signal arrived since the last call (the pipe is emptied).
    pub fn take(&self) -> bool {
        let mut buf = [0u8; 64];
        let mut got = false;
        while let Ok(n) = (&self.reader).read(&mut buf) {
            if n == 0 {
                break;
            }
            got = true;
        }
        got
    }
}

/// An inotify watch on a directory for files moved or created in it.
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

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads every pending event (their content does not matter: any means "scan again").
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer from our descriptor (non-blocking).
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}
