//! The delay proxy (`smtp-stress proxy`) as a child process: started on a runtime loopback port
//! in front of a target, its address read from the `listening on ADDR` line it prints once
//! ready, its stderr kept in a file for the assertions and failure messages.

use crate::bin;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running `smtp-stress proxy`; killed when dropped.
pub struct Proxy {
    /// The child process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `smtp-stress proxy --delay DELAY 127.0.0.1:0 TARGET` plus `extra` and waits for
    /// its `listening on` line.
    pub fn start(delay: &str, target: SocketAddr, extra: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("proxy.log");
        let err = std::fs::File::create(&log).expect("create proxy.log");
        let mut child = Command::new(bin("smtp-stress"))
            .args(["proxy", "--delay", delay])
            .args(extra)
            .arg("127.0.0.1:0")
            .arg(target.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn smtp-stress proxy");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            // Blocks until the proxy listens (or exits: then the line is empty).
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "smtp-stress proxy did not start: stdout {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Proxy {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// What the proxy wrote on stderr so far (one line per connection).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The resident set size of the proxy process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status of the proxy");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
