//! The Debian package (issue 17): built by `scripts/package.sh` (cargo deb, with the debug
//! binaries already built), installed on this machine with `dpkg -i`, smtpd run from the
//! unit's `ExecStart` line as root (no systemd: it binds, then becomes `smtpd`), a message over
//! SMTP and one from an unprivileged user through the setgid `sendmail.smtpd`, both relayed by
//! smtp-relay run as `smtpd` to a sink; then `dpkg -r` leaves no process and no alternative.
//! Needs root (CI and scripts/test.sh run as root); refuses to touch an smtpd package that was
//! installed before it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use integration_tests::relay::{Sink, text};
use integration_tests::{bin, free_port, have, list, peers_required, python, wait_for};

const QUEUE: &str = "/var/spool/smtpd/queue";

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {:?}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Purges the package (and stops the smtpd it started) however the test ends.
struct Installed {
    smtpd: Option<Child>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(c) = &mut self.smtpd {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run("dpkg", &["--purge", "smtpd"]);
    }
}

/// Processes whose program is `path`.
fn running(path: &str) -> Vec<String> {
    list(Path::new("/proc"))
        .into_iter()
        .filter(|p| {
            std::fs::read_link(p.join("exe"))
                .map(|e| e.to_string_lossy().trim_end_matches(" (deleted)") == path)
                .unwrap_or(false)
        })
        .map(|p| p.display().to_string())
        .collect()
}

fn stat(path: &str) -> String {
    ok("stat", &["-c", "%a %U %G", path]).trim().to_owned()
}

#[test]
fn deb_installs_runs_and_removes_cleanly() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!peers_required(), "the package test needs root");
        eprintln!("SKIPPED: the package test needs root (dpkg -i)");
        return;
    }
    if !have("cargo-deb") || !have("dpkg") || !have("setpriv") {
        return;
    }
    if run("dpkg", &["-s", "smtpd"]).status.success() {
        panic!(
            "an smtpd package is installed already: this test would remove it; dpkg -r smtpd first"
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The binaries (docgen included) were built before the tests: package those.
    let out = Command::new("bash")
        .arg(root.join("scripts/package.sh"))
        .env("PROFILE", "dev")
        .env("SKIP_BUILD", "1")
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .expect("package.sh");
    assert!(out.status.success(), "package.sh: {}", text(&out.stderr));
    let _ = bin("docgen");
    let debs: Vec<PathBuf> = list(&root.join("target/debian"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let mut installed = Installed { smtpd: None };
    ok("dpkg", &["-i", debs[0].to_str().expect("path")]);

    // What postinst set up.
    assert_eq!(stat("/usr/sbin/sendmail.smtpd"), "2755 root smtpd-drop");
    assert_eq!(stat(QUEUE), "750 smtpd smtpd-drop");
    assert_eq!(stat(&format!("{QUEUE}/new")), "2770 smtpd smtpd-drop");
    assert_eq!(stat(&format!("{QUEUE}/cur")), "700 smtpd smtpd");
    let alt = ok("update-alternatives", &["--query", "sendmail"]);
    assert!(
        alt.contains("Alternative: /usr/sbin/sendmail.smtpd"),
        "{alt}"
    );
    for f in [
        "/usr/share/man/man8/smtpd.8.gz",
        "/usr/share/man/man8/smtp-relay.8.gz",
        "/usr/share/man/man8/sendmail.smtpd.8.gz",
        "/usr/share/bash-completion/completions/smtpd",
        "/lib/systemd/system/smtpd.service",
        "/lib/systemd/system/smtp-relay.timer",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    assert!(!Path::new("/usr/share/bash-completion/completions/sendmail").exists());

    // smtpd from the unit's ExecStart line, as root: it binds, then serves as smtpd.
    let unit = std::fs::read_to_string("/lib/systemd/system/smtpd.service").expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart line");
    let port = free_port("127.0.0.1");
    let line = exec.replace(
        "$SMTPD_ARGS",
        &format!("--listen 127.0.0.1:{port} --hostname pkg.test"),
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[0], "/usr/sbin/smtpd");
    let child = Command::new(words[0])
        .args(&words[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the installed smtpd");
    let pid = child.id();
    installed.smtpd = Some(child);
    let uid = ok("id", &["-u", "smtpd"]).trim().to_owned();
    wait_for("smtpd to serve as smtpd", Duration::from_secs(15), || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some(uid.as_str()))
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let code = python(
        r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo("client.test")
s.mail("ann@src.test")
s.rcpt("bob@far.test")
print(s.data(b"Subject: through the packaged smtpd\r\n\r\nhello\r\n")[0])
s.quit()
"#,
        &[&port.to_string()],
    );
    assert_eq!(code.trim(), "250");

    // An unprivileged user queues through the setgid sendmail (queue from /etc/smtpd/smtpd.toml),
    // and cannot list the queue.
    let out = python(
        r#"
import subprocess, sys
r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                    "/usr/sbin/sendmail.smtpd", "-t", "-i"],
                   input=b"To: carol@far.test\nSubject: from nobody\n\nhi\n",
                   capture_output=True, env={"PATH": "/usr/bin:/bin"})
print(r.returncode, r.stderr.decode().strip())
r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                    "ls", sys.argv[1] + "/new"], capture_output=True)
print(r.returncode)
"#,
        &[QUEUE],
    );
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "0", "sendmail as nobody: {out}");
    assert_ne!(lines[1], "0", "nobody must not list the queue");
    let files = list(Path::new(&format!("{QUEUE}/new")));
    assert_eq!(files.len(), 2, "{files:?}");
    let modes: Vec<String> = files
        .iter()
        .map(|f| stat(f.to_str().expect("path")))
        .collect();
    assert!(
        modes.contains(&"640 nobody smtpd-drop".to_owned()),
        "{modes:?}"
    );
    assert!(
        modes.contains(&"600 smtpd smtpd-drop".to_owned()),
        "{modes:?}"
    );

    // smtp-relay as smtpd (with its groups) reads both and sends them on.
    let sink = Sink::start(&["127.0.0.1"], &[]);
    let host = format!("127.0.0.1:{}", sink.port);
    let relay = ok(
        "setpriv",
        &[
            "--reuid=smtpd",
            "--regid=smtpd",
            "--init-groups",
            "/usr/bin/smtp-relay",
            "--maildir",
            QUEUE,
            "--once",
            "--smarthost",
            &host,
        ],
    );
    assert!(relay.contains("2 delivered"), "{relay}");
    assert_eq!(sink.messages().len(), 2);

    // Stop, remove: no process, no alternative, no program left.
    if let Some(mut c) = installed.smtpd.take() {
        // SAFETY: kill(2) on the smtpd this test started.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        assert!(c.wait().expect("wait").success());
    }
    ok("dpkg", &["-r", "smtpd"]);
    assert!(running("/usr/sbin/smtpd").is_empty());
    assert!(running("/usr/bin/smtp-relay").is_empty());
    let alt = run("update-alternatives", &["--query", "sendmail"]);
    assert!(
        !text(&alt.stdout).contains("sendmail.smtpd"),
        "{}",
        text(&alt.stdout)
    );
    assert!(!Path::new("/usr/sbin/sendmail.smtpd").exists());
    assert!(!Path::new("/usr/sbin/smtpd").exists());
    drop(installed);
    assert!(
        !Path::new("/var/spool/smtpd").exists(),
        "purge removes the queue"
    );
}
