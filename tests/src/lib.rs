//! Helpers for the integration tests: where the built binaries are, free loopback ports,
//! temporary Maildirs, spawning `smtpd` and waiting for conditions with a deadline.
//!
//! Tests here talk to the real binaries over loopback only, with software nobody here wrote.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace (`cargo build --workspace --bins` first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A TCP port on `ip` that was free a moment ago.
pub fn free_port(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Waits until `cond` holds, or panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// True when `cmd` is on PATH (or an absolute path that exists). Under CI a missing tool is a
/// failure, not a skip: the test script installs every peer.
pub fn have(cmd: &str) -> bool {
    let found = if cmd.contains('/') {
        Path::new(cmd).exists()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).exists()))
            .unwrap_or(false)
    };
    if !found && std::env::var_os("CI").is_some() {
        panic!("{cmd} is required under CI; scripts/install-peers.sh installs it");
    }
    found
}

/// A running `smtpd` with its own Maildir; killed when dropped.
pub struct Smtpd {
    /// The child process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The Maildir root.
    pub maildir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Smtpd {
    /// Starts smtpd on 127.0.0.1 with a fresh Maildir and extra arguments.
    pub fn start(extra: &[&str]) -> Smtpd {
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = dir.path().join("Maildir");
        let mut s = Smtpd::start_in(&maildir, "127.0.0.1", extra);
        s._dir = Some(dir);
        s
    }

    /// Starts smtpd on `ip` with the given Maildir and extra arguments, and waits until it accepts.
    pub fn start_in(maildir: &Path, ip: &str, extra: &[&str]) -> Smtpd {
        let port = free_port(ip);
        let addr: SocketAddr = format!("{ip}:{port}").parse().expect("socket address");
        let child = Command::new(bin("smtpd"))
            .arg("--maildir")
            .arg(maildir)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn smtpd");
        let s = Smtpd {
            child,
            addr,
            maildir: maildir.to_path_buf(),
            _dir: None,
        };
        wait_for("smtpd to listen", Duration::from_secs(10), || {
            TcpStream::connect(addr).is_ok()
        });
        s
    }

    /// Files in `new/`.
    pub fn new_files(&self) -> Vec<PathBuf> {
        list(&self.maildir.join("new"))
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Regular files in a directory (empty if it does not exist).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs a Python snippet with arguments; returns stdout, panics with stderr on failure.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
pub mod relay;
pub mod smtp;
