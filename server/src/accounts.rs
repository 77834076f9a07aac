//! Loading the accounts for local delivery: reads the `--users` and `--aliases` files and builds
//! the checked [`Directory`] that routes recipients. The one place files are read, so a reload
//! (SIGHUP, operator issue) is one more call of [`load`].
//!
//! Errors are one line naming the file and line (`users.txt:3: user "Bob": names are lower
//! case`), for `smtpd: ...` on stderr and exit 1. Parsing and the checks themselves live in
//! `maildir_core::{users, aliases, directory}` (pure); this module only does the file I/O.

use std::path::{Path, PathBuf};

use maildir_core::aliases::Aliases;
use maildir_core::directory::{Directory, DirectoryError, Source};
use maildir_core::users::{LineError, Users};

/// Where the accounts come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountFiles {
    /// `--users FILE`.
    pub users: Option<PathBuf>,
    /// `--aliases FILE`.
    pub aliases: Option<PathBuf>,
    /// `--local-domain`, each once.
    pub local_domains: Vec<String>,
    /// `--recipient-delimiter` (default `+`; `None` turns tags off).
    pub delimiter: Option<char>,
}

/// Reads and checks the files. The error is one line: `file:line: message`.
pub fn load(files: &AccountFiles) -> Result<Directory, String> {
    let users = match &files.users {
        Some(p) => Users::parse(&read(p)?).map_err(|e| at(p, &e))?,
        None => Users::default(),
    };
    let aliases = match &files.aliases {
        Some(p) => Aliases::parse(&read(p)?).map_err(|e| at(p, &e))?,
        None => Aliases::default(),
    };
    Directory::new(users, aliases, &files.local_domains, files.delimiter).map_err(
        |DirectoryError { source, error }| {
            let path = match source {
                Source::Users => files.users.as_deref(),
                Source::Aliases => files.aliases.as_deref(),
            };
            match path {
                Some(p) => at(p, &error),
                None if source == Source::Aliases => format!("--aliases: {}", error.message),
                None => format!("--users: {}", error.message),
            }
        },
    )
}

/// `path:line: message`, or `path: message` for an error about the whole file.
fn at(path: &Path, e: &LineError) -> String {
    if e.line == 0 {
        format!("{}: {}", path.display(), e.message)
    } else {
        format!("{}:{}: {}", path.display(), e.line, e.message)
    }
}

fn read(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        let upto = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..upto].iter().filter(|&&b| b == b'\n').count() + 1;
        format!("{}:{line}: not valid UTF-8", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use maildir_core::ForwardPath;
    use maildir_core::directory::Route;

    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(name: &str) -> Files {
            let dir =
                std::env::temp_dir().join(format!("smtpd-accounts-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Files { dir }
        }

        fn write(&self, name: &str, text: &[u8]) -> PathBuf {
            let p = self.dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn files(users: Option<PathBuf>, aliases: Option<PathBuf>) -> AccountFiles {
        AccountFiles {
            users,
            aliases,
            local_domains: vec!["example.test".into()],
            delimiter: Some('+'),
        }
    }

    #[test]
    fn loads_and_routes() {
        let f = Files::new("ok");
        let u = f.write("users", b"alice:*\n");
        let a = f.write("aliases", b"postmaster: alice\n");
        let d = load(&files(Some(u), Some(a))).unwrap();
        let r = d.resolve(&ForwardPath::parse("<Alice+x@example.test>").unwrap());
        assert!(matches!(r, Route::Local(l) if l.users[0].name == "alice"));
    }

    #[test]
    fn errors_are_file_line_message() {
        let f = Files::new("bad");
        let good_users = f.write("users", b"alice:*\n");
        let bad_users = f.write("bad-users", b"alice:*\n\nAlice:*\n");
        let loop_aliases = f.write("loop", b"postmaster: alice\na: b\nb: a\n");
        let no_pm = f.write("nopm", b"sales: alice\n");
        let not_utf8 = f.write("latin1", b"postmaster: alice\nx: caf\xe9\n");
        let cases = [
            (
                files(Some(bad_users.clone()), None),
                format!("{}:3: ", bad_users.display()),
            ),
            (
                files(Some(good_users.clone()), Some(loop_aliases.clone())),
                format!("{}:3: alias loop: a -> b -> a", loop_aliases.display()),
            ),
            (
                files(Some(good_users.clone()), Some(no_pm.clone())),
                format!("{}: postmaster is neither", no_pm.display()),
            ),
            (
                files(Some(good_users.clone()), None),
                "--aliases: postmaster is neither".to_owned(),
            ),
            (
                files(Some(good_users.clone()), Some(not_utf8.clone())),
                format!("{}:2: not valid UTF-8", not_utf8.display()),
            ),
            (
                files(Some(f.dir.join("missing")), None),
                format!("{}: cannot read", f.dir.join("missing").display()),
            ),
        ];
        for (input, want) in cases {
            let e = load(&input).unwrap_err();
            assert!(e.starts_with(&want), "{e:?} does not start with {want:?}");
            assert!(!e.contains('\n'));
        }
    }
}
