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

/// `{ARGON2ID}...` for `password`, made by `smtpd hash-password` (a users file's hash field);
/// checks the command writes exactly one line of that scheme.
pub fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(bin("smtpd"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn smtpd hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("smtpd hash-password");
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(line.starts_with("{ARGON2ID}$argon2id$"), "{line}");
    assert!(line.ends_with('\n') && line.lines().count() == 1);
    line.trim_end().to_owned()
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

/// True when a missing peer must fail the test instead of skipping it: under CI, and under
/// `scripts/test.sh` (`REQUIRE_PEERS=1`), which installs every peer first.
pub fn peers_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_PEERS").is_some_and(|v| v != "0")
}

/// True when `cmd` is on PATH (or an absolute path that exists). Where peers are required
/// ([`peers_required`]) a missing tool is a failure; elsewhere the test says on stderr that it
/// skips, never silently.
pub fn have(cmd: &str) -> bool {
    let found = if cmd.contains('/') {
        Path::new(cmd).exists()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).exists()))
            .unwrap_or(false)
    };
    if !found {
        if peers_required() {
            panic!(
                "{cmd} is required (CI / scripts/test.sh); scripts/install-peers.sh installs it"
            );
        }
        eprintln!("SKIPPED: {cmd} is not installed (scripts/install-peers.sh installs it)");
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
pub mod certs;
pub mod dovecot;
pub mod ldap;
pub mod proxy;
pub mod relay;
pub mod smtp;

/// Parses RFC 5322 date-times (`Thu, 3 Dec 2026 04:07:30 +0000`, the day with one or two
/// digits) with Python's `email.utils`, which nobody here wrote; checks that the day of the week
/// matches the date. Returns the seconds since the epoch of each, in order.
pub fn rfc5322_epochs(dates: &[&str]) -> Result<Vec<i64>, String> {
    const SCRIPT: &str = r#"
import sys, email.utils
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
for s in sys.argv[1:]:
    t = email.utils.parsedate_tz(s)
    if t is None or t[9] is None:
        print("ERR not an RFC 5322 date-time: %r" % s); continue
    dt = email.utils.parsedate_to_datetime(s)
    wd = s.split(",", 1)[0].strip() if "," in s else None
    if wd is not None and wd != DAYS[dt.weekday()]:
        print("ERR day of week %s but %s is a %s: %r" % (wd, dt.date(), DAYS[dt.weekday()], s)); continue
    print(int(dt.timestamp()))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(dates)
        .output()
        .map_err(|e| format!("run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| match l.strip_prefix("ERR ") {
            Some(e) => Err(e.to_owned()),
            None => l.parse().map_err(|e| format!("{l:?}: {e}")),
        })
        .collect()
}

/// Seconds since the epoch now.
pub fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A file's modification time in seconds since the epoch (panics when it cannot be read).
pub fn file_mtime(path: &Path) -> i64 {
    let m = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("mtime of {}: {e}", path.display()));
    m.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_else(|e| panic!("mtime of {} before 1970: {e}", path.display()))
}

/// Parses the RFC 5322 date-time smtpd and smtp-relay write (`Thu, 3 Dec 2026 04:07:30 +0000`:
/// day of week, a day of one or two digits, month name, four-digit year, time, numeric zone)
/// into seconds since the epoch; checks the day of the week and the ranges. A parser of the
/// tests' own, for hot loops; [`rfc5322_epochs`] asks Python's `email.utils`.
pub fn parse_rfc5322(date: &str) -> Result<i64, String> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]; // 1970-01-01 a Thursday
    let bad = |why: &str| format!("{date:?} is not an RFC 5322 date-time: {why}");
    let w: Vec<&str> = date.split(' ').collect();
    let [wd, day, mon, year, time, zone] = w[..] else {
        return Err(bad("six fields expected"));
    };
    let num = |s: &str, len: std::ops::RangeInclusive<usize>| -> Result<i64, String> {
        if !len.contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("{s:?}")));
        }
        s.parse().map_err(|_| bad(s))
    };
    let d = num(day, 1..=2)?;
    let m = MONTHS
        .iter()
        .position(|x| *x == mon)
        .ok_or_else(|| bad("month"))? as i64
        + 1;
    let y = num(year, 4..=4)?;
    let hms: Vec<&str> = time.split(':').collect();
    let [h, mi, s] = hms[..] else {
        return Err(bad("time"));
    };
    let (h, mi, s) = (num(h, 2..=2)?, num(mi, 2..=2)?, num(s, 2..=2)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d < 1 || d > month_days[(m - 1) as usize] || h > 23 || mi > 59 || s > 60 {
        return Err(bad("out of range"));
    }
    let sign = match zone.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(bad("zone")),
    };
    let z = num(&zone[1..], 4..=4)?;
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    if wd.strip_suffix(',') != Some(DAYS[days.rem_euclid(7) as usize]) {
        return Err(bad(&format!("{wd} is not the day of the week")));
    }
    Ok(days * 86_400 + h * 3600 + mi * 60 + s - sign * ((z / 100) * 3600 + (z % 100) * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' date parser agrees with Python on dates Python formats, with one- and
    /// two-digit days, across leap years, month ends and zones; it refuses wrong weekdays.
    #[test]
    fn parse_rfc5322_agrees_with_python() {
        let mut epochs: Vec<i64> =
            vec![0, 951_782_400, 1_798_761_599, 1_835_418_600, 4_107_542_399];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            epochs.push((x % 4_102_444_800) as i64);
        }
        let args: Vec<String> = epochs.iter().map(|e| e.to_string()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = python(
            r#"
import sys, datetime
for a in sys.argv[1:]:
    t = datetime.datetime.fromtimestamp(int(a), datetime.timezone.utc)
    z = datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))
    for d, zone in ((t, "+0000"), (t.astimezone(z), "-0530")):
        print(d.strftime("%a, ") + str(d.day) + d.strftime(" %b %Y %H:%M:%S ") + zone)
        print(d.strftime("%a, %d %b %Y %H:%M:%S ") + zone)
"#,
            &args,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), epochs.len() * 4);
        for (i, e) in epochs.iter().enumerate() {
            for l in &lines[i * 4..i * 4 + 4] {
                assert_eq!(parse_rfc5322(l), Ok(*e), "{l}");
            }
        }
        assert!(parse_rfc5322("Wed, 3 Dec 2026 04:07:30 +0000").is_err());
        assert!(parse_rfc5322("Thu, 31 Nov 2026 04:07:30 +0000").is_err());
        assert!(parse_rfc5322("Thu, 3 Dec 26 04:07:30 +0000").is_err());
        assert_eq!(
            parse_rfc5322("Thu, 3 Dec 2026 04:07:30 +0000"),
            Ok(1_796_270_850)
        );
    }
}
