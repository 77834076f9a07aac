//! The `sendmail` program, from the command line to the exit code: parse, locate the queue,
//! then queue the message on stdin (`-bm`), hold an SMTP dialogue on stdin/stdout (`-bs`), or
//! hand over to smtp-relay (`-bp` lists the queue, `-q` runs it once).
//!
//! Owns: the order of those steps, the envelope sender and recipients of a plain submission
//! (`-f`, login name, bare names qualified with the host name, `-t`), the header fix-ups it
//! asks for, and messages on stderr (`sendmail: ...`).
//! Must not: write queue files itself (the session and `store::QueueFile` do).

use std::io::{self, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use maildir_core::{Maildir, XText};

use super::args::{self, Args, Mode};
use super::exit;
use super::message::{self, Header};
use super::queue;
use super::submit::{self, Driver, Failure, Submission};

/// Largest message queued (smtpd's `--max-size` default).
pub const MAX_SIZE: u64 = 25 * 1024 * 1024;

/// Runs `sendmail` with `argv` (without the program name); returns the exit code.
pub fn main(argv: Vec<String>) -> u8 {
    init_logging();
    match run(argv) {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("sendmail: {}", f.message);
            f.code
        }
    }
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn run(argv: Vec<String>) -> Result<(), Failure> {
    let args = args::parse(argv).map_err(|e| fail(exit::USAGE, e))?;
    if args.mode == Mode::NewAliases {
        eprintln!("sendmail: nothing to rebuild: smtpd reads its aliases file itself");
        return Ok(());
    }
    let env = std::env::var(queue::MAILDIR_ENV).ok();
    if env.is_some() || args.config.is_some() {
        // The caller chose the queue: no group right to write into it.
        queue::drop_setgid().map_err(|e| fail(exit::SOFTWARE, e))?;
    }
    let dir =
        queue::locate(env.as_deref(), args.config.as_deref()).map_err(|e| fail(exit::CONFIG, e))?;
    match args.mode {
        Mode::List => exec_relay(&dir, "--list"),
        Mode::RunQueue => exec_relay(&dir, "--now"),
        Mode::Smtp => {
            let driver = driver(&dir)?;
            let stdin = io::stdin();
            let stdout = io::stdout();
            submit::smtp_dialogue(driver, &mut stdin.lock(), &mut stdout.lock())
                .map_err(|e| fail(exit::IOERR, format!("SMTP dialogue: {e}")))
        }
        Mode::Deliver => deliver(&args, &dir),
        Mode::NewAliases => Ok(()),
    }
}

/// The session driver on the queue `dir` (which must exist), files mode 0640.
fn driver(dir: &Path) -> Result<Driver, Failure> {
    let md = Maildir::open_existing(dir)
        .map_err(|e| fail(exit::CANTCREAT, format!("queue unusable: {e}")))?
        .with_file_mode(0o640);
    let host = maildir_core::maildir::hostname();
    Ok(Driver::new(submit::session_config(host, MAX_SIZE), md))
}

/// `-bm`: the message on stdin, queued.
fn deliver(args: &Args, dir: &Path) -> Result<(), Failure> {
    let host = maildir_core::maildir::hostname();
    let login = login_name();
    let sender = match args.sender.as_deref() {
        Some(s) => {
            let s = s.trim();
            let s = s
                .strip_prefix('<')
                .and_then(|s| s.strip_suffix('>'))
                .unwrap_or(s);
            qualify(s, host)
        }
        None => qualify(&login, host),
    };
    let stdin = io::stdin();
    let mut input = BufReader::new(Limited {
        inner: stdin.lock(),
        left: MAX_SIZE + 1,
    });
    let mut header =
        message::read_header(&mut input, args.ignore_dots).map_err(|e| read_failure(&e))?;
    let mut recipients: Vec<String> = args.recipients.iter().map(|r| qualify(r, host)).collect();
    if args.extract {
        let found = header.recipients().map_err(|e| fail(exit::DATAERR, e))?;
        recipients.extend(found.iter().map(|r| qualify(r, host)));
    }
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.to_ascii_lowercase()));
    if recipients.is_empty() {
        return Err(fail(
            exit::USAGE,
            if args.extract {
                "no recipient addresses found in the message header"
            } else {
                "no recipients given (name them, or use -t)"
            },
        ));
    }
    fix_header(&mut header, args, &sender, &login, host);
    let utf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
    let mut mail_params = String::new();
    if let Some(ret) = &args.ret {
        mail_params.push_str(&format!(" RET={}", ret.to_ascii_uppercase()));
    }
    if let Some(envid) = &args.envid {
        mail_params.push_str(&format!(" ENVID={}", XText::encode(envid.as_bytes())));
    }
    if utf8 {
        mail_params.push_str(" SMTPUTF8");
    }
    let rcpt_params = match &args.notify {
        Some(n) => format!(" NOTIFY={}", n.to_ascii_uppercase()),
        None => String::new(),
    };
    let sub = Submission {
        sender,
        recipients,
        mail_params,
        rcpt_params,
        ignore_dots: args.ignore_dots,
    };
    let id = submit::submit(driver(dir)?, &sub, &header, &mut input).map_err(|f| {
        if f.code == exit::IOERR && f.message.contains(TOO_BIG) {
            fail(exit::DATAERR, format!("message not queued: {TOO_BIG}"))
        } else {
            f
        }
    })?;
    if args.verbose {
        eprintln!("sendmail: queued as {id}");
    }
    Ok(())
}

/// Adds what a message needs and removes what it must not carry: every Bcc field, and From,
/// Date and Message-ID when missing (as Postfix's cleanup does).
fn fix_header(header: &mut Header, args: &Args, sender: &str, login: &str, host: &str) {
    header.remove_bcc();
    if !header.has("From") {
        let from = if sender.is_empty() {
            qualify(login, host)
        } else {
            sender.to_owned()
        };
        header.add(
            "From",
            &message::from_value(&from, args.full_name.as_deref()),
        );
    }
    let now = SystemTime::now();
    if !header.has("Date") {
        header.add("Date", &maildir_core::date::rfc5322(now));
    }
    if !header.has("Message-ID") {
        let t = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        header.add(
            "Message-ID",
            &format!(
                "<{}.{:09}.{}@{host}>",
                t.as_secs(),
                t.subsec_nanos(),
                std::process::id()
            ),
        );
    }
}

/// `name@host` for a bare name; addresses (and the empty null sender) as given.
fn qualify(addr: &str, host: &str) -> String {
    if addr.is_empty() || addr.contains('@') {
        addr.to_owned()
    } else {
        format!("{addr}@{host}")
    }
}

/// The login name of the real user (as Postfix names the sender), or `uid<N>`.
fn login_name() -> String {
    // SAFETY: getuid cannot fail; getpwuid_r gets a buffer and its length, and a result
    // pointer that is only read when it is set.
    unsafe {
        let uid = libc::getuid();
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == 0 && !result.is_null() && !pw.pw_name.is_null() {
            let name = std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy();
            if !name.is_empty() {
                return name.into_owned();
            }
        }
        format!("uid{uid}")
    }
}

/// `-bp` and `-q`: smtp-relay (beside this program, else on `PATH`) on the same queue, with
/// the setgid group given up first.
fn exec_relay(dir: &Path, flag: &str) -> Result<(), Failure> {
    queue::drop_setgid().map_err(|e| fail(exit::SOFTWARE, e))?;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("smtp-relay")))
        .filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from("smtp-relay"));
    let e = std::process::Command::new(&program)
        .arg("--maildir")
        .arg(dir)
        .arg(flag)
        .exec();
    Err(fail(
        exit::UNAVAILABLE,
        format!("cannot run {}: {e}", program.display()),
    ))
}

const TOO_BIG: &str = "message too big";

fn read_failure(e: &io::Error) -> Failure {
    if e.to_string().contains(TOO_BIG) {
        fail(exit::DATAERR, format!("message not queued: {TOO_BIG}"))
    } else {
        fail(exit::IOERR, format!("cannot read the message: {e}"))
    }
}

/// Stdin, failing once more than [`MAX_SIZE`] octets came (a message too big to queue is
/// refused rather than truncated).
struct Limited<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.left = 0;
            return Err(io::Error::other(TOO_BIG));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Warnings and errors of the code `sendmail` shares with smtpd (the queue-file writer logs
/// its failures), as `sendmail: message` lines on stderr.
fn init_logging() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("sendmail: {}", r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}
