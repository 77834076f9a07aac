//! The `sendmail` command line, as Postfix's sendmail(1) reads it: getopt-style single-letter
//! options (grouped like `-ti`, values attached like `-fme@x` or apart like `-f me@x`, options
//! and recipients in any order, `--` ends the options), into one [`Args`].
//!
//! Owns: which options exist, which take a value, which are accepted and ignored (`-odi`,
//! `-oem`, `-v`, `-m`, ... as Postfix does), and the mode (`-bm`, `-bs`, `-bp`, `-q`).
//! Must not: read stdin, the environment or a file (see `queue` and `submit`).

use std::path::PathBuf;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `-bm` (the default): read a message on stdin and queue it.
    Deliver,
    /// `-bs`: an SMTP dialogue on stdin and stdout.
    Smtp,
    /// `-bp`: list the queue (`smtp-relay --list`).
    List,
    /// `-q`: one relay run (`smtp-relay --now`).
    RunQueue,
    /// `-bi` (newaliases): nothing to build, smtpd reads its aliases file itself.
    NewAliases,
}

/// The command line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// What to do.
    pub mode: Mode,
    /// `-t`: recipients (also) from the message's To, Cc and Bcc.
    pub extract: bool,
    /// `-i` / `-oi`: a line holding only a dot does not end the message.
    pub ignore_dots: bool,
    /// `-f` / `-r`: the envelope sender (`<>` or empty for the null sender).
    pub sender: Option<String>,
    /// `-F`: the sender's full name, for a `From:` header we add.
    pub full_name: Option<String>,
    /// `-C`: the configuration file that names the queue.
    pub config: Option<PathBuf>,
    /// `-N`: DSN notification (`never` or a list of `success,failure,delay`).
    pub notify: Option<String>,
    /// `-R`: what a failure DSN returns (`full` or `hdrs`).
    pub ret: Option<String>,
    /// `-V`: the envelope ID for DSNs.
    pub envid: Option<String>,
    /// `-v`: report the queue ID on stderr.
    pub verbose: bool,
    /// Recipients named on the command line.
    pub recipients: Vec<String>,
}

/// Options that take a value (as in Postfix's getopt string), the value being ignored unless
/// handled in [`parse`].
const WITH_VALUE: &[char] = &[
    'A', 'B', 'C', 'F', 'L', 'N', 'O', 'R', 'V', 'X', 'b', 'e', 'f', 'h', 'o', 'p', 'r',
];
/// Options without a value that are accepted and ignored.
const IGNORED: &[char] = &['G', 'I', 'U', 'c', 'm', 'n', 'x'];

/// Parses the arguments after the program name. An unknown option or a missing value is an
/// error naming it (exit `EX_USAGE`).
pub fn parse<I, S>(argv: I) -> Result<Args, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = Args {
        mode: Mode::Deliver,
        extract: false,
        ignore_dots: false,
        sender: None,
        full_name: None,
        config: None,
        notify: None,
        ret: None,
        envid: None,
        verbose: false,
        recipients: Vec::new(),
    };
    let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
    let mut i = 0;
    let mut options_done = false;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if options_done || !arg.starts_with('-') || arg == "-" {
            args.recipients.push(arg.clone());
            continue;
        }
        if arg == "--" {
            options_done = true;
            continue;
        }
        let letters: Vec<char> = arg[1..].chars().collect();
        let mut j = 0;
        while j < letters.len() {
            let c = letters[j];
            j += 1;
            if c == 'q' {
                // -q, -q30m, -qR..., -qS...: one queue run (no daemon interval here).
                args.mode = Mode::RunQueue;
                break;
            }
            if c == 't' {
                args.extract = true;
            } else if c == 'i' {
                args.ignore_dots = true;
            } else if c == 'v' {
                args.verbose = true;
            } else if IGNORED.contains(&c) {
            } else if WITH_VALUE.contains(&c) {
                let value = if j < letters.len() {
                    let v: String = letters[j..].iter().collect();
                    j = letters.len();
                    v
                } else if i < argv.len() {
                    i += 1;
                    argv[i - 1].clone()
                } else {
                    return Err(format!("option -{c} requires a value"));
                };
                apply(&mut args, c, value)?;
            } else {
                return Err(format!("unknown option -{c}"));
            }
        }
    }
    Ok(args)
}

/// Records an option that takes a value.
fn apply(args: &mut Args, c: char, value: String) -> Result<(), String> {
    match c {
        'b' => {
            args.mode = match value.as_str() {
                "m" => Mode::Deliver,
                "s" => Mode::Smtp,
                "p" => Mode::List,
                "i" => Mode::NewAliases,
                other => return Err(format!("unsupported mode -b{other}")),
            }
        }
        'f' | 'r' => args.sender = Some(value),
        'F' => args.full_name = Some(value),
        'C' => args.config = Some(PathBuf::from(value)),
        'N' => args.notify = Some(value),
        'R' => args.ret = Some(value),
        'V' => args.envid = Some(value),
        // -oi (and -o i): ignore dots; every other -o setting (-odi, -oem, -oA...) is ignored.
        'o' if value == "i" => args.ignore_dots = true,
        _ => {}
    }
    Ok(())
}

/// The command line described for the manual page and shell completions (`docgen`): the
/// options [`parse`] understands, documented; parsing itself is [`parse`] (getopt-style
/// grouping, which clap does not do).
pub fn command() -> clap::Command {
    use clap::{Arg, ArgAction};
    let flag = |name: &'static str, short: char, help: &'static str| {
        Arg::new(name)
            .short(short)
            .action(ArgAction::SetTrue)
            .help(help)
    };
    let value = |name: &'static str, short: char, v: &'static str, help: &'static str| {
        Arg::new(name).short(short).value_name(v).help(help)
    };
    clap::Command::new("sendmail")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_version_flag(true)
        .about("Queue a message for delivery (Postfix-compatible sendmail interface of smtpd)")
        .long_about(
            "Reads a message on standard input and queues it durably in smtpd's queue Maildir, \
             with no network connection and no smtpd running; smtp-relay sends it on. The queue \
             is the `maildir` key of the configuration file (-C, default /etc/smtpd/smtpd.toml), \
             or the SMTPD_MAILDIR environment variable. Exit status from sysexits.h: 0 queued, \
             64 usage, 65 bad message or sender, 67 recipient refused, 69 smtp-relay missing, \
             73 queue file cannot be created, 74 input error, 75 temporary failure, \
             78 no queue configured.",
        )
        .arg(flag(
            "extract",
            't',
            "Recipients (also) from the To, Cc and Bcc headers; Bcc is removed",
        ))
        .arg(flag(
            "ignore-dots",
            'i',
            "A line with only a dot does not end the message (also -oi)",
        ))
        .arg(value(
            "sender",
            'f',
            "SENDER",
            "Envelope sender (also -r); <> for none [default: login@hostname]",
        ))
        .arg(value(
            "full-name",
            'F',
            "NAME",
            "Full name for the From: header added when missing",
        ))
        .arg(value(
            "config",
            'C',
            "FILE",
            "smtpd configuration file naming the queue",
        ))
        .arg(value(
            "mode",
            'b',
            "MODE",
            "m: queue a message (default); s: SMTP on stdin/stdout; p: list the queue; i: no-op",
        ))
        .arg(flag(
            "queue-run",
            'q',
            "Run the queue once (smtp-relay --now)",
        ))
        .arg(value(
            "notify",
            'N',
            "DSN",
            "DSN notification: never, or success,failure,delay",
        ))
        .arg(value("ret", 'R', "RET", "DSN return: full or hdrs"))
        .arg(value("envid", 'V', "ENVID", "DSN envelope ID"))
        .arg(flag("verbose", 'v', "Print the queue ID on stderr"))
        .arg(value(
            "option",
            'o',
            "OPT",
            "-oi as -i; other -o options (-odi, -oem, ...) are ignored",
        ))
        .arg(
            Arg::new("recipients")
                .value_name("RECIPIENT")
                .num_args(0..)
                .help("Recipient addresses (a bare name gets @hostname)"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Args {
        parse(a.iter().copied()).expect("parses")
    }

    #[test]
    fn defaults_and_recipients() {
        let a = p(&["alice@example.org", "bob"]);
        assert_eq!(a.mode, Mode::Deliver);
        assert!(!a.extract && !a.ignore_dots);
        assert_eq!(a.recipients, ["alice@example.org", "bob"]);
    }

    #[test]
    fn grouped_attached_and_separate_values() {
        let a = p(&[
            "-ti",
            "-fme@x.org",
            "-F",
            "Me Myself",
            "-oi",
            "-C/etc/x.toml",
        ]);
        assert!(a.extract && a.ignore_dots);
        assert_eq!(a.sender.as_deref(), Some("me@x.org"));
        assert_eq!(a.full_name.as_deref(), Some("Me Myself"));
        assert_eq!(a.config, Some(PathBuf::from("/etc/x.toml")));
        let a = p(&["-f", "<>", "-r", "other@x.org"]);
        assert_eq!(a.sender.as_deref(), Some("other@x.org"));
    }

    #[test]
    fn ignored_like_postfix() {
        let a = p(&[
            "-odi", "-oem", "-v", "-m", "-U", "-h", "5", "-B", "8BITMIME", "a@b.c",
        ]);
        assert_eq!(a.mode, Mode::Deliver);
        assert!(!a.ignore_dots && a.verbose);
        assert_eq!(a.recipients, ["a@b.c"]);
    }

    #[test]
    fn modes() {
        assert_eq!(p(&["-bs"]).mode, Mode::Smtp);
        assert_eq!(p(&["-bp"]).mode, Mode::List);
        assert_eq!(p(&["-b", "m"]).mode, Mode::Deliver);
        assert_eq!(p(&["-bi"]).mode, Mode::NewAliases);
        assert_eq!(p(&["-q"]).mode, Mode::RunQueue);
        assert_eq!(p(&["-q30m"]).mode, Mode::RunQueue);
    }

    #[test]
    fn options_after_recipients_and_double_dash() {
        let a = p(&["a@b.c", "-i", "--", "-odd@b.c"]);
        assert!(a.ignore_dots);
        assert_eq!(a.recipients, ["a@b.c", "-odd@b.c"]);
    }

    #[test]
    fn dsn_options() {
        let a = p(&["-N", "success,failure", "-R", "hdrs", "-V", "abc", "x@y.z"]);
        assert_eq!(a.notify.as_deref(), Some("success,failure"));
        assert_eq!(a.ret.as_deref(), Some("hdrs"));
        assert_eq!(a.envid.as_deref(), Some("abc"));
    }

    #[test]
    fn the_documented_command_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn usage_errors() {
        assert_eq!(
            parse(["-f"]).unwrap_err(),
            "option -f requires a value".to_string()
        );
        assert_eq!(parse(["-Z"]).unwrap_err(), "unknown option -Z".to_string());
        assert_eq!(
            parse(["-bd"]).unwrap_err(),
            "unsupported mode -bd".to_string()
        );
    }
}
