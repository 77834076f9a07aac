//! A TOML configuration file for a program whose options are a clap command line, done
//! generically from the clap definitions: every long option is a key of the same name
//! (`max-size = 1048576`, `local-domain = ["example.test"]`), a table's name joins its keys
//! with `-` (`[tls] cert = "c.pem"` is `--tls-cert`), and each value is checked by that
//! option's own value parser. An option added to a program's `Args` gets its key with no work
//! here.
//!
//! How: [`parse`] reads the command line once leniently to find `--config FILE` and which
//! options it gives, turns every key of the file into `--key=value` tokens (each checked by the
//! option's value parser, errors naming the file, line and key from toml's spans), puts them
//! before the command-line arguments for the options the command line does not give (the
//! command line overrides the file, lists included), and lets clap parse the whole. The result
//! also says where each setting came from ([`Setting`]), which [`render`] prints as TOML for
//! `--check-config` (postconf -n style: only what is set, or everything with [`Show::All`]).
//!
//! Owns: the mapping between a clap command and a TOML file. Must not: know any program's
//! options, check anything beyond what the options' own parsers check (the programs validate
//! their settings as for a command line), or read any file but the one `--config` names.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::builder::Resettable;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, Parser};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The long name of the option that names the file (`--config FILE`).
pub const CONFIG: &str = "config";
/// The long name of the option that checks and prints the configuration.
pub const CHECK_CONFIG: &str = "check-config";
/// Options that are not settings: refused as keys, never printed.
const NOT_SETTINGS: [&str; 4] = [CONFIG, CHECK_CONFIG, "help", "version"];

/// What `--check-config` prints: the settings given in the file or on the command line
/// (`set`, like `postconf -n`), or every option with its default (`all`, like `postconf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Show {
    /// Only what the file or the command line sets.
    Set,
    /// Every option, defaults and unset ones included.
    All,
}

/// Why the configuration could not be read.
#[derive(Debug)]
pub enum Error {
    /// The command line itself: clap's error, to be shown as clap shows it (`e.exit()`: help,
    /// version, usage errors with status 2).
    Cli(clap::Error),
    /// The file: one line naming the file, line and key (`smtpd.toml:3: key 'max-size': ...`).
    File(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Cli(e) => f.write_str(&message(e)),
            Error::File(s) => f.write_str(s),
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file, at this line.
    File {
        /// 1-based line of the key.
        line: usize,
    },
    /// The command line (which overrides the file).
    CommandLine,
    /// The option's default.
    Default,
    /// Neither given nor defaulted.
    Unset,
}

/// One option's effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key: the option's long name.
    pub key: String,
    /// The values as given (one for a single-valued option, any number for a list).
    pub values: Vec<String>,
    /// An on/off flag (`--no-fsync`): printed as a boolean.
    pub flag: bool,
    /// A repeatable option (`--listen`): printed as an array.
    pub list: bool,
    /// Where the value came from.
    pub origin: Origin,
}

/// The parsed arguments, with the file they came from and every setting's origin.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The program's arguments, file and command line merged.
    pub args: T,
    /// The `--config` file, when one was given.
    pub file: Option<PathBuf>,
    /// Every option that is a setting, in the order the program defines them.
    pub settings: Vec<Setting>,
}

/// Parses `argv` (program name first) with the file named by `--config` merged in: the command
/// line overrides the file. Any error in the file is [`Error::File`].
pub fn parse<T: Parser>(argv: &[OsString]) -> Result<Loaded<T>, Error> {
    let cmd = T::command();
    // Which options the command line gives, and the file: leniently, since a required option
    // (or one another requires) may be in the file.
    let lenient = cmd
        .clone()
        .ignore_errors(true)
        .mut_args(|a| a.required(false));
    let given = match lenient.try_get_matches_from(argv) {
        Ok(m) => m,
        Err(_) => cmd.clone().try_get_matches_from(argv).map_err(Error::Cli)?,
    };
    let config_id = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(CONFIG))
        .map(|a| a.get_id().as_str().to_owned());
    let file = config_id
        .and_then(|id| given.try_get_raw(&id).ok().flatten())
        .and_then(|mut v| v.next())
        .map(PathBuf::from);
    let Some(path) = file else {
        let matches = cmd.clone().try_get_matches_from(argv).map_err(Error::Cli)?;
        let args = T::from_arg_matches(&matches).map_err(Error::Cli)?;
        let settings = settings(&cmd, &matches, &HashMap::new());
        return Ok(Loaded {
            args,
            file: None,
            settings,
        });
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::File(format!("{}: cannot read: {e}", path.display())))?;
    let from_file = file_tokens(&cmd, &given, &path, &text).map_err(Error::File)?;
    let mut merged: Vec<OsString> = argv.iter().take(1).cloned().collect();
    merged.extend(from_file.tokens);
    merged.extend(argv.iter().skip(1).cloned());
    let matches = match cmd.clone().try_get_matches_from(&merged) {
        Ok(m) => m,
        Err(e) => return Err(merged_error(e, &path)),
    };
    let args = T::from_arg_matches(&matches).map_err(|e| merged_error(e, &path))?;
    Ok(Loaded {
        args,
        settings: settings(&cmd, &matches, &from_file.lines),
        file: Some(path),
    })
}

/// Loads a configuration file alone, as `PROGRAM --config FILE` would.
pub fn parse_file<T: Parser>(program: &str, path: &Path) -> Result<Loaded<T>, Error> {
    let argv = [
        OsString::from(program),
        OsString::from(format!("--{CONFIG}")),
        path.as_os_str().to_owned(),
    ];
    parse(&argv)
}

/// An error of the merged parse: help and version are shown as usual; anything else (a
/// conflict or a missing option, from the file and the command line together) is one line.
fn merged_error(e: clap::Error, path: &Path) -> Error {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Error::Cli(e),
        _ => Error::File(format!(
            "{} with the command line: {}",
            path.display(),
            message(&e)
        )),
    }
}

/// Clap's message as one line, without `error: ` and the usage after it.
fn message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    let mut out = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    // The indented lines that follow are part of it (the options missing, ...).
    let more: Vec<&str> = lines
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    if !more.is_empty() {
        out.push(' ');
        out.push_str(&more.join(", "));
    }
    out
}

/// What the file adds to the command line, and the line of each key (by option id).
struct FileTokens {
    tokens: Vec<OsString>,
    lines: HashMap<String, usize>,
}

/// Turns every key of the file into `--key=value` tokens, checking each against its option.
fn file_tokens(
    cmd: &Command,
    given: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<FileTokens, String> {
    let doc = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        let msg = e.message().trim().replace('\n', "; ");
        format!("{}:{line}: {msg}", path.display())
    })?;
    let mut keys = Vec::new();
    flatten(doc.get_ref(), "", &mut keys);
    keys.sort_by_key(|(_, start, _)| *start);
    let mut out = FileTokens {
        tokens: Vec::new(),
        lines: HashMap::new(),
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    // The same options with nothing tying one to another, to check one value at a time.
    let mut probe = cmd.clone().mut_args(|a| {
        a.required(false)
            .requires(Resettable::Reset)
            .conflicts_with(Resettable::Reset)
            .overrides_with(Resettable::Reset)
            .required_unless_present(Resettable::Reset)
    });
    let groups: Vec<String> = cmd.get_groups().map(|g| g.get_id().to_string()).collect();
    for g in groups {
        probe = probe.mut_group(g, |g| g.required(false));
    }
    for (key, start, value) in keys {
        let line = line_of(text, start);
        let at = format!("{}:{line}: key '{key}'", path.display());
        if let Some(first) = seen.insert(key.clone(), line) {
            return Err(format!("{at}: already given on line {first}"));
        }
        let Some(arg) = setting_args(cmd).find(|a| a.get_long() == Some(key.as_str())) else {
            return Err(format!("{at}: unknown key (no option --{key})"));
        };
        let values = values_of(arg, value.get_ref()).map_err(|e| format!("{at}: {e}"))?;
        let tokens = match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count => values,
            _ => values.iter().map(|v| format!("--{key}={v}")).collect(),
        };
        for t in &tokens {
            check_value(&mut probe, t).map_err(|e| format!("{at}: {e}"))?;
        }
        let id = arg.get_id().as_str();
        if given.value_source(id) == Some(ValueSource::CommandLine) {
            continue; // The command line overrides the file.
        }
        out.lines.insert(id.to_owned(), line);
        out.tokens.extend(tokens.into_iter().map(OsString::from));
    }
    Ok(out)
}

/// Checks one `--key=value` token with the option's own value parser (through clap, on a
/// command whose options are not tied to one another): its error, as one line.
fn check_value(probe: &mut Command, token: &str) -> Result<(), String> {
    use clap::error::ErrorKind;
    let name = probe.get_name().to_owned();
    match probe.try_get_matches_from_mut([name.as_str(), token]) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue
                    | ErrorKind::ValueValidation
                    | ErrorKind::InvalidUtf8
                    | ErrorKind::NoEquals
                    | ErrorKind::TooManyValues
                    | ErrorKind::TooFewValues
                    | ErrorKind::WrongNumberOfValues
            ) =>
        {
            Err(message(&e))
        }
        // Anything else (a relation clap could not untie) is left to the whole parse.
        _ => Ok(()),
    }
}

/// The options that are settings (long, not `--config`, `--check-config`, help or version).
fn setting_args(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| !NOT_SETTINGS.contains(&l)) && !a.is_positional())
}

/// Every key with a value, tables joined with `-`: (key, offset of the key, value).
fn flatten<'a>(
    table: &'a DeTable<'_>,
    prefix: &str,
    out: &mut Vec<(String, usize, &'a Spanned<DeValue<'a>>)>,
) {
    for (k, v) in table.iter() {
        let key = format!("{prefix}{}", k.get_ref());
        match v.get_ref() {
            DeValue::Table(t) => flatten(t, &format!("{key}-"), out),
            _ => out.push((key, k.span().start, v)),
        }
    }
}

/// The command-line form of a value for `arg`: the flag itself (or nothing) for a flag, one
/// string per value otherwise (`--key=` is added by the caller).
fn values_of(arg: &Arg, value: &DeValue<'_>) -> Result<Vec<String>, String> {
    let long = arg.get_long().unwrap_or_default();
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let DeValue::Boolean(b) = value else {
                return Err(format!("expected true or false, found {}", kind(value)));
            };
            let on = *b == matches!(arg.get_action(), ArgAction::SetTrue);
            Ok(if on {
                vec![format!("--{long}")]
            } else {
                vec![]
            })
        }
        ArgAction::Count => {
            let n = match value {
                DeValue::Integer(i) => u8::from_str_radix(i.as_str(), i.radix()).ok(),
                _ => None,
            };
            let n =
                n.ok_or_else(|| format!("expected a count (0 to 255), found {}", kind(value)))?;
            Ok(vec![format!("--{long}"); usize::from(n)])
        }
        ArgAction::Append => match value {
            DeValue::Array(items) => items.iter().map(|v| scalar(v.get_ref())).collect(),
            v => Ok(vec![scalar(v)?]),
        },
        ArgAction::Set => Ok(vec![scalar(value)?]),
        _ => Err("not a setting".into()),
    }
}

/// A single value as the command line would carry it.
fn scalar(value: &DeValue<'_>) -> Result<String, String> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .map(|n| n.to_string())
            .map_err(|_| "integer out of range".to_owned()),
        DeValue::Float(f) => Ok(f.as_str().to_owned()),
        DeValue::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            kind(other)
        )),
    }
}

fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Every setting's effective value and origin.
fn settings(cmd: &Command, m: &ArgMatches, file_lines: &HashMap<String, usize>) -> Vec<Setting> {
    setting_args(cmd)
        .map(|a| {
            let id = a.get_id().as_str();
            let values: Vec<String> = m
                .try_get_raw(id)
                .ok()
                .flatten()
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            // A key of the file counts as set there even when its value is the default (a
            // flag set to false); one the command line overrides is not in `file_lines`.
            let origin = match (file_lines.get(id), m.value_source(id)) {
                (Some(&line), _) => Origin::File { line },
                (None, None) => Origin::Unset,
                (None, Some(ValueSource::DefaultValue)) => Origin::Default,
                (None, Some(_)) => Origin::CommandLine,
            };
            Setting {
                key: a.get_long().unwrap_or_default().to_owned(),
                values,
                flag: matches!(a.get_action(), ArgAction::SetTrue | ArgAction::SetFalse),
                list: matches!(a.get_action(), ArgAction::Append),
                origin,
            }
        })
        .collect()
}

/// The settings as a TOML file that loads back to the same settings, each with its origin in
/// a comment: only those set in the file or on the command line ([`Show::Set`]), or all
/// ([`Show::All`]: defaults too, and unset options as comments).
pub fn render(settings: &[Setting], show: Show) -> String {
    let mut out = String::new();
    for s in settings {
        let origin = match &s.origin {
            Origin::File { line } => format!("file, line {line}"),
            Origin::CommandLine => "command line".to_owned(),
            Origin::Default if show == Show::All => "default".to_owned(),
            Origin::Unset if show == Show::All => {
                let _ = writeln!(out, "# {} is not set", s.key);
                continue;
            }
            Origin::Default | Origin::Unset => continue,
        };
        let value = if s.flag {
            s.values.first().map_or("false", String::as_str).to_owned()
        } else if s.list {
            let items: Vec<String> = s.values.iter().map(|v| toml_scalar(v)).collect();
            format!("[{}]", items.join(", "))
        } else {
            s.values
                .first()
                .map_or_else(String::new, |v| toml_scalar(v))
        };
        let _ = writeln!(out, "{} = {value}  # {origin}", s.key);
    }
    out
}

/// A value as TOML: a bare integer when it is one, a quoted string otherwise.
fn toml_scalar(v: &str) -> String {
    if v.parse::<i64>().is_ok_and(|n| n.to_string() == v) {
        return v.to_owned();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{:04X}", u32::from(c));
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests;
