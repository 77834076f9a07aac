//! The file against a small command line with every kind of option: required, defaulted,
//! repeatable, flag, enum, custom parser, a pair tied by `requires`.

use std::path::PathBuf;

use clap::Parser;

use super::*;

fn even(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n.is_multiple_of(2) {
        Ok(n)
    } else {
        Err(format!("{n} is odd"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Level {
    Low,
    High,
}

#[derive(Debug, Parser)]
#[command(name = "prog")]
struct Args {
    #[arg(long, value_name = "DIR", required = true)]
    maildir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:25")]
    listen: Vec<std::net::SocketAddr>,
    #[arg(long, default_value_t = 100)]
    max_size: u64,
    #[arg(long)]
    hostname: Option<String>,
    #[arg(long)]
    no_fsync: bool,
    #[arg(long, value_enum, default_value = "low")]
    level: Level,
    #[arg(long, value_parser = even)]
    pairs: Option<u32>,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long = "local-domain")]
    local_domain: Vec<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "set")]
    check_config: Option<Show>,
}

struct File {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn file(text: &str) -> File {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prog.toml");
    std::fs::write(&path, text).unwrap();
    File { _dir: dir, path }
}

fn run(f: &File, cli: &[&str]) -> Result<Loaded<Args>, Error> {
    let mut argv: Vec<OsString> = vec!["prog".into(), "--config".into(), f.path.clone().into()];
    argv.extend(cli.iter().map(OsString::from));
    parse::<Args>(&argv)
}

fn file_error(f: &File, cli: &[&str]) -> String {
    match run(f, cli) {
        Err(Error::File(e)) => e,
        other => panic!("expected a file error, got {other:?}"),
    }
}

const EVERY: &str = r#"# every kind of option
maildir = "/var/mail/queue"
listen = ["127.0.0.1:2525", "[::1]:2525"]
max-size = 0x10
hostname = "mx.example"
no-fsync = true
level = "high"
pairs = 4
local-domain = ["a.example", "b.example"]

[tls]
cert = "c.pem"
key = "k.pem"
"#;

#[test]
fn every_key_loads_and_tables_join_with_a_dash() {
    let f = file(EVERY);
    let l = run(&f, &[]).unwrap();
    let a = l.args;
    assert_eq!(a.maildir, Some("/var/mail/queue".into()));
    assert_eq!(a.listen.len(), 2);
    assert_eq!(a.max_size, 16);
    assert_eq!(a.hostname.as_deref(), Some("mx.example"));
    assert!(a.no_fsync);
    assert_eq!(a.level, Level::High);
    assert_eq!(a.pairs, Some(4));
    assert_eq!(a.local_domain, ["a.example", "b.example"]);
    assert_eq!(a.tls_cert, Some("c.pem".into()));
    assert_eq!(a.tls_key, Some("k.pem".into()));
    assert_eq!(l.file, Some(f.path.clone()));
    let max = l.settings.iter().find(|s| s.key == "max-size").unwrap();
    assert_eq!(max.origin, Origin::File { line: 4 });
    assert!(
        !l.settings
            .iter()
            .any(|s| s.key == "config" || s.key == "help")
    );
}

#[test]
fn the_command_line_overrides_the_file_lists_included() {
    let f = file(EVERY);
    let l = run(
        &f,
        &[
            "--max-size",
            "7",
            "--local-domain",
            "c.example",
            "--level=low",
        ],
    )
    .unwrap();
    assert_eq!(l.args.max_size, 7);
    assert_eq!(l.args.local_domain, ["c.example"], "replaced, not appended");
    assert_eq!(l.args.level, Level::Low);
    let s = |k: &str| l.settings.iter().find(|s| s.key == k).unwrap().clone();
    assert_eq!(s("max-size").origin, Origin::CommandLine);
    assert_eq!(s("hostname").origin, Origin::File { line: 5 });
    // A required option may come from the file alone, or the command line alone.
    let f = file("max-size = 3\n");
    assert_eq!(run(&f, &["--maildir", "m"]).unwrap().args.max_size, 3);
    // And an option another requires may be split between the two.
    let f = file("maildir = \"m\"\n[tls]\nkey = \"k.pem\"\n");
    let a = run(&f, &["--tls-cert", "c.pem"]).unwrap().args;
    assert_eq!(
        (a.tls_cert, a.tls_key),
        (Some("c.pem".into()), Some("k.pem".into()))
    );
}

#[test]
fn errors_name_the_file_the_line_and_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "maildir = \"m\"\n\nmax-sise = 1\n",
            ":3: key 'max-sise': unknown key",
        ),
        (
            "maildir = \"m\"\nmax-size = \"big\"\n",
            ":2: key 'max-size': invalid value 'big'",
        ),
        (
            "maildir = \"m\"\nmax-size = -1\n",
            ":2: key 'max-size': invalid value '-1'",
        ),
        (
            "maildir = \"m\"\nmax-size = [1]\n",
            ":2: key 'max-size': expected a string or a number, found an array",
        ),
        (
            "maildir = \"m\"\nno-fsync = \"yes\"\n",
            ":2: key 'no-fsync': expected true or false, found a string",
        ),
        (
            "maildir = \"m\"\n\n\nlevel = \"medium\"\n",
            ":4: key 'level': invalid value 'medium'",
        ),
        (
            "maildir = \"m\"\npairs = 3\n",
            ":2: key 'pairs': invalid value '3'",
        ),
        (
            "maildir = \"m\"\nlisten = [\"127.0.0.1:1\", \"nowhere\"]\n",
            ":2: key 'listen': invalid value 'nowhere'",
        ),
        (
            "maildir = \"m\"\ntls-cert = \"a\"\n[tls]\ncert = \"b\"\n",
            ":4: key 'tls-cert': already given on line 2",
        ),
        (
            "maildir = \"m\"\nconfig = \"other.toml\"\n",
            ":2: key 'config': unknown key",
        ),
        (
            "maildir = \"m\"\n[tls]\nca = \"x\"\n",
            ":3: key 'tls-ca': unknown key",
        ),
        ("maildir = \"m\"\nmax-size = \n", ":2: "),
        (
            "maildir = \"m\"\nhostname = 1979-05-27\n",
            ":2: key 'hostname': expected a string or a number, found a date-time",
        ),
    ];
    for (text, want) in cases {
        let f = file(text);
        let e = file_error(&f, &[]);
        let want = format!("{}{want}", f.path.display());
        assert!(e.starts_with(&want), "{e:?}\ndoes not start with\n{want:?}");
        assert!(!e.contains('\n'), "{e:?}");
    }
    // A bad value in the file is an error even where the command line overrides it.
    let f = file("maildir = \"m\"\nmax-size = \"big\"\n");
    assert!(file_error(&f, &["--max-size", "5"]).contains("key 'max-size'"));
    // A file that cannot be read.
    let f = file("");
    let gone = f.path.with_file_name("missing.toml");
    let argv: Vec<OsString> = vec!["prog".into(), "--config".into(), gone.clone().into()];
    match parse::<Args>(&argv) {
        Err(Error::File(e)) => assert!(e.starts_with(&format!("{}: cannot read", gone.display()))),
        other => panic!("{other:?}"),
    }
    // What the file and the command line lack together.
    let f = file("max-size = 1\n");
    assert!(file_error(&f, &[]).contains("--maildir"));
}

#[test]
fn without_a_file_it_is_the_command_line() {
    let argv: Vec<OsString> = ["prog", "--maildir", "m", "--no-fsync"]
        .iter()
        .map(OsString::from)
        .collect();
    let l = parse::<Args>(&argv).unwrap();
    assert!(l.args.no_fsync && l.file.is_none());
    let argv: Vec<OsString> = ["prog"].iter().map(OsString::from).collect();
    assert!(matches!(parse::<Args>(&argv), Err(Error::Cli(_))));
    let argv: Vec<OsString> = ["prog", "--help"].iter().map(OsString::from).collect();
    assert!(matches!(parse::<Args>(&argv), Err(Error::Cli(_))));
}

/// What `--check-config` prints loads back to the same settings.
#[test]
fn render_round_trips() {
    let f = file(EVERY);
    let l = run(
        &f,
        &[
            "--hostname",
            "with \"quotes\" \\ and\ttab",
            "--max-size",
            "9",
        ],
    )
    .unwrap();
    let set = render(&l.settings, Show::Set);
    assert!(set.contains("max-size = 9  # command line\n"), "{set}");
    assert!(set.contains("no-fsync = true  # file, line 6\n"), "{set}");
    assert!(!set.contains("check-config"));
    let again = file(&set);
    let l2 = run(&again, &[]).unwrap();
    let values = |l: &Loaded<Args>| -> Vec<(String, Vec<String>)> {
        l.settings
            .iter()
            .map(|s| (s.key.clone(), s.values.clone()))
            .collect()
    };
    assert_eq!(values(&l), values(&l2));
    assert_eq!(
        l2.args.hostname.as_deref(),
        Some("with \"quotes\" \\ and\ttab")
    );
    // All: the defaults and the unset options too.
    let f = file("maildir = \"m\"\n");
    let all = render(&run(&f, &[]).unwrap().settings, Show::All);
    assert!(all.contains("max-size = 100  # default\n"), "{all}");
    assert!(all.contains("# hostname is not set\n"), "{all}");
    assert!(all.contains("no-fsync = false  # default\n"), "{all}");
    assert!(
        all.contains("listen = [\"127.0.0.1:25\"]  # default\n"),
        "{all}"
    );
    let back = file(&all);
    assert_eq!(run(&back, &[]).unwrap().args.max_size, 100);
    assert_eq!(
        render(&run(&f, &[]).unwrap().settings, Show::Set),
        "maildir = \"m\"  # file, line 1\n"
    );
}
