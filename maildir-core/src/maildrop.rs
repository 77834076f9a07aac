//! A user's maildrop as POP3 sees it: the messages in the user's Maildir `new/` and `cur/`,
//! in arrival order, each with its size as sent (octets with CR LF line ends) and its unique
//! id (the Maildir base name, without the `:2,` info, so it stays the same when a reader moves
//! the file or changes its flags); opening a message for RETR/TOP; marking one seen (`new/` →
//! `cur/` with the `S` flag added to those it has, as Dovecot does for IMAP `\Seen`); and
//! removing the messages a session deleted.
//!
//! Another reader (Dovecot) may move or rename a file meanwhile: a message is then found again
//! by its unique id, and one removed by someone else is simply gone (not an error).
//!
//! Sizes: `,W=<n>` in the name (Dovecot's size with CR LF line ends) when present, otherwise
//! the file's length. smtpd stores users' mail with CR LF line ends (the SMTP session
//! normalises them), so for its files the length is exact; a file with bare LF line ends from
//! another writer and without `W=` is listed a little smaller than RETR sends it.
//!
//! Owns: reading and renaming/removing files in one user's Maildir for POP3. Must not: lock
//! the maildrop (the server keeps one session per user), speak POP3, or deliver mail.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::maildir::{MaildirError, name_time};

/// One message of a maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEntry {
    /// The unique id: the base name without the `:2,` info.
    pub uid: String,
    /// Octets as sent (CR LF line ends, before dot-stuffing).
    pub size: u64,
    /// Where the file was last seen.
    path: PathBuf,
}

impl DropEntry {
    /// Where the file was last seen.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A user's maildrop, listed when the session opened it. Mail delivered later is not in it,
/// so a session never sees, nor removes, a message that arrived after its login.
#[derive(Debug)]
pub struct Maildrop {
    root: PathBuf,
    messages: Vec<DropEntry>,
}

impl Maildrop {
    /// Lists `root/new` and `root/cur` (a Maildir not created yet is an empty maildrop), in
    /// arrival order: by the delivery time in the name (`<secs>.M<usecs>...`), then by name;
    /// names of other forms after those, by name.
    pub fn scan(root: &Path) -> Result<Maildrop, MaildirError> {
        let mut found = Vec::new();
        for sub in ["new", "cur"] {
            let dir = root.join(sub);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(MaildirError::new("read", &dir, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| MaildirError::new("read", &dir, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let uid = base(&name).to_owned();
                let size = match size_in_name(&uid, ",W=") {
                    Some(s) => s,
                    None => match entry.metadata() {
                        Ok(m) if m.is_file() => m.len(),
                        Ok(_) => continue,
                        // Moved or removed by another reader since the listing: not there.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(MaildirError::new("stat", &entry.path(), e)),
                    },
                };
                let key = name_time(&uid).unwrap_or((u64::MAX, 0));
                found.push((
                    key,
                    DropEntry {
                        uid,
                        size,
                        path: entry.path(),
                    },
                ));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.uid.cmp(&b.1.uid)));
        found.dedup_by(|a, b| a.1.uid == b.1.uid);
        Ok(Maildrop {
            root: root.to_path_buf(),
            messages: found.into_iter().map(|(_, e)| e).collect(),
        })
    }

    /// The messages, in arrival order.
    pub fn messages(&self) -> &[DropEntry] {
        &self.messages
    }

    /// Opens message `i` for reading (found again by its id if another reader moved it).
    /// `NotFound` when it is gone.
    pub fn open(&mut self, i: usize) -> io::Result<File> {
        let entry = self.entry(i)?;
        match File::open(&entry.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let path = self.relocate(i)?;
                File::open(path)
            }
            other => other,
        }
    }

    /// Marks message `i` seen: from `new/` to `cur/<uid>:2,S`, or in `cur/` with `S` added
    /// to its flags; nothing when it already has `S` or is gone.
    pub fn mark_seen(&mut self, i: usize) -> Result<(), MaildirError> {
        for attempt in 0..2 {
            let entry = self
                .entry(i)
                .map_err(|e| MaildirError::new("find", &self.root, e))?;
            let from = entry.path.clone();
            let name = from
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let flags = name.split_once(":2,").map_or("", |(_, f)| f);
            let in_cur = from.parent().and_then(|p| p.file_name()) == Some("cur".as_ref());
            if in_cur && flags.contains('S') {
                return Ok(());
            }
            let mut merged: Vec<char> = flags.chars().chain(['S']).collect();
            merged.sort_unstable();
            merged.dedup();
            let to = self.root.join("cur").join(format!(
                "{}:2,{}",
                entry.uid,
                merged.into_iter().collect::<String>()
            ));
            match fs::rename(&from, &to) {
                Ok(()) => {
                    self.messages[i].path = to;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => {
                    match self.relocate(i) {
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                        Err(e) => return Err(MaildirError::new("find", &from, e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(MaildirError::new("rename", &from, e)),
            }
        }
        Ok(())
    }

    /// Removes the messages at `indexes` (the UPDATE state). One already removed by someone
    /// else counts as removed. Returns the failures (the others are gone).
    pub fn remove(&mut self, indexes: &[usize]) -> Vec<MaildirError> {
        let mut failures = Vec::new();
        for &i in indexes {
            let Ok(entry) = self.entry(i) else {
                continue;
            };
            let path = entry.path.clone();
            let result = match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => match self.relocate(i) {
                    Ok(p) => fs::remove_file(p),
                    Err(e) => Err(e),
                },
                other => other,
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => failures.push(MaildirError::new("remove", &path, e)),
            }
        }
        failures
    }

    fn entry(&self, i: usize) -> io::Result<&DropEntry> {
        self.messages
            .get(i)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such message"))
    }

    /// Finds message `i` again by its id in `cur/` and `new/`; `NotFound` when it is gone.
    fn relocate(&mut self, i: usize) -> io::Result<PathBuf> {
        let uid = self.entry(i)?.uid.clone();
        for sub in ["cur", "new"] {
            let dir = self.root.join(sub);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in rd.flatten() {
                if entry.file_name().to_str().map(base) == Some(uid.as_str()) {
                    let path = entry.path();
                    self.messages[i].path = path.clone();
                    return Ok(path);
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{uid} is gone"),
        ))
    }
}

/// The base name: without the `:2,` info (or any `:` info).
fn base(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

/// A `,W=<n>` (or other `,X=<n>`) field of a base name.
fn size_in_name(base: &str, field: &str) -> Option<u64> {
    base.split(',')
        .skip(1)
        .find_map(|f| f.strip_prefix(&field[1..]))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("alice");
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        (dir, root)
    }

    #[test]
    fn lists_in_arrival_order_with_stable_ids_and_sizes() {
        let (_d, root) = setup();
        fs::write(root.join("new/1700000002.M5P1Q1.h,S=3"), b"abc").unwrap();
        fs::write(
            root.join("cur/1700000001.M9P1Q1.h,S=99,W=7:2,S"),
            b"x\ny\nz",
        )
        .unwrap();
        fs::write(root.join("new/1700000002.M4P1Q2.h"), b"12345").unwrap();
        fs::write(root.join("new/.hidden"), b"no").unwrap();
        fs::write(root.join("cur/odd-name"), b"1").unwrap();
        let m = Maildrop::scan(&root).unwrap();
        let got: Vec<(&str, u64)> = m
            .messages()
            .iter()
            .map(|e| (e.uid.as_str(), e.size))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1700000001.M9P1Q1.h,S=99,W=7", 7),
                ("1700000002.M4P1Q2.h", 5),
                ("1700000002.M5P1Q1.h,S=3", 3),
                ("odd-name", 1),
            ]
        );
        let none = Maildrop::scan(&root.join("nobody")).unwrap();
        assert!(none.messages().is_empty());
    }

    #[test]
    fn seen_moves_to_cur_merging_flags_and_survives_a_move_by_someone_else() {
        let (_d, root) = setup();
        fs::write(root.join("new/1.M1P1.h"), b"a").unwrap();
        fs::write(root.join("cur/2.M1P1.h:2,F"), b"b").unwrap();
        fs::write(root.join("new/3.M1P1.h"), b"c").unwrap();
        let mut m = Maildrop::scan(&root).unwrap();
        m.mark_seen(0).unwrap();
        m.mark_seen(1).unwrap();
        // Dovecot moved the third to cur/ meanwhile.
        fs::rename(root.join("new/3.M1P1.h"), root.join("cur/3.M1P1.h:2,")).unwrap();
        m.mark_seen(2).unwrap();
        m.mark_seen(2).unwrap();
        let mut cur: Vec<String> = fs::read_dir(root.join("cur"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        cur.sort();
        assert_eq!(cur, vec!["1.M1P1.h:2,S", "2.M1P1.h:2,FS", "3.M1P1.h:2,S"]);
        assert!(fs::read_dir(root.join("new")).unwrap().next().is_none());
        let mut f = String::new();
        io::Read::read_to_string(&mut m.open(1).unwrap(), &mut f).unwrap();
        assert_eq!(f, "b");
    }

    #[test]
    fn remove_takes_exactly_those_and_tolerates_gone_files() {
        let (_d, root) = setup();
        for n in 1..=4 {
            fs::write(root.join(format!("new/{n}.M1P1.h")), b"x").unwrap();
        }
        let mut m = Maildrop::scan(&root).unwrap();
        // Someone else removed 2 and moved 3.
        fs::remove_file(root.join("new/2.M1P1.h")).unwrap();
        fs::rename(root.join("new/3.M1P1.h"), root.join("cur/3.M1P1.h:2,S")).unwrap();
        // Mail delivered during the session.
        fs::write(root.join("new/5.M1P1.h"), b"x").unwrap();
        assert!(m.remove(&[1, 2]).is_empty());
        assert!(m.open(1).is_err());
        let mut left: Vec<String> = ["new", "cur"]
            .iter()
            .flat_map(|d| fs::read_dir(root.join(d)).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["1.M1P1.h", "4.M1P1.h", "5.M1P1.h"]);
    }
}
