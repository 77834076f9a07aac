//! The aliases file, in the style of aliases(5): `name: target, target, ...`.
//!
//! A target is a bare name (a local user or another alias) or an address `user@domain` (a
//! remote address, or a local one when its domain is a local domain). `#` starts a comment
//! line, a line starting with white space continues the previous entry, names compare
//! case-insensitively (kept lower case). Pipes (`|cmd`), files (`/path`) and `:include:` are
//! refused: smtpd delivers only to Maildirs and the relay queue.
//!
//! This module owns the syntax only; what a target means (user, alias, remote), loops and the
//! `postmaster` requirement are checked by [`crate::directory`], which knows the users and the
//! local domains. Pure: no file, socket or clock; the server reads the file and hands the text.

use std::collections::BTreeMap;

use crate::address::Mailbox;
use crate::users::{LineError, check_name};

/// One target of an alias.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AliasTarget {
    /// A bare name: a local user or another alias (lower case).
    Name(String),
    /// `local@domain`, as written.
    Address(String),
}

/// One alias: its targets in file order and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The alias name, lower case.
    pub name: String,
    /// Its targets, in file order, duplicates removed.
    pub targets: Vec<AliasTarget>,
    /// The line the entry starts on.
    pub line: usize,
}

/// Every alias, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    by_name: BTreeMap<String, Alias>,
}

impl Aliases {
    /// Parses the text of an aliases file.
    pub fn parse(text: &str) -> Result<Aliases, LineError> {
        let mut by_name: BTreeMap<String, Alias> = BTreeMap::new();
        // Logical entries: (first line, text with continuations joined).
        let mut entries: Vec<(usize, String)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim_end_matches('\r');
            if l.trim_start().starts_with('#') {
                continue;
            }
            if l.trim().is_empty() {
                continue;
            }
            if l.starts_with([' ', '\t']) {
                match entries.last_mut() {
                    Some((_, text)) => {
                        text.push(' ');
                        text.push_str(l.trim());
                    }
                    None => {
                        return Err(LineError::new(
                            line,
                            "continuation line (starts with white space) with no entry before it",
                        ));
                    }
                }
                continue;
            }
            entries.push((line, l.to_owned()));
        }
        for (line, text) in entries {
            let alias = parse_entry(&text, line)?;
            if let Some(prev) = by_name.get(&alias.name) {
                return Err(LineError::new(
                    line,
                    format!(
                        "alias {:?} already defined on line {}",
                        alias.name, prev.line
                    ),
                ));
            }
            by_name.insert(alias.name.clone(), alias);
        }
        Ok(Aliases { by_name })
    }

    /// The alias called `name` (lower case).
    pub fn get(&self, name: &str) -> Option<&Alias> {
        self.by_name.get(name)
    }

    /// True when `name` (lower case) is an alias.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The aliases in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Alias> {
        self.by_name.values()
    }

    /// How many aliases there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn parse_entry(text: &str, line: usize) -> Result<Alias, LineError> {
    let Some(colon) = text.find(':') else {
        return Err(LineError::new(line, "expected \"name: target, ...\""));
    };
    let name = text[..colon].trim().to_lowercase();
    check_name(&name).map_err(|why| LineError::new(line, format!("alias {name:?}: {why}")))?;
    let mut targets = Vec::new();
    for t in text[colon + 1..].split(',') {
        let t = t.trim();
        if t.is_empty() {
            continue;
        }
        let target = parse_target(t)
            .map_err(|why| LineError::new(line, format!("alias {name:?}: target {t:?}: {why}")))?;
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    if targets.is_empty() {
        return Err(LineError::new(
            line,
            format!("alias {name:?} has no target"),
        ));
    }
    Ok(Alias {
        name,
        targets,
        line,
    })
}

fn parse_target(t: &str) -> Result<AliasTarget, String> {
    if t.starts_with('|') {
        return Err("pipes to commands are not supported".into());
    }
    if t.starts_with('/') {
        return Err("delivery to files is not supported".into());
    }
    if t.to_ascii_lowercase().starts_with(":include:") {
        return Err(":include: is not supported".into());
    }
    let bare = t
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(t);
    if bare.contains('@') {
        let m = Mailbox::parse(bare).map_err(|e| e.to_string())?;
        return Ok(AliasTarget::Address(m.to_string()));
    }
    let name = bare.to_lowercase();
    check_name(&name)?;
    Ok(AliasTarget::Name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_continuations() {
        let text = "# aliases\n\
            Postmaster: alice\n\
            sales: bob, <Carol@Example.Test>,\n\
            \tremote@far.test\n\
            \n\
            # comment between\n\
            team: sales,\n   alice , alice\n";
        let a = Aliases::parse(text).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(
            a.get("postmaster").unwrap().targets,
            [AliasTarget::Name("alice".into())]
        );
        let s = a.get("sales").unwrap();
        assert_eq!(s.line, 3);
        assert_eq!(
            s.targets,
            [
                AliasTarget::Name("bob".into()),
                AliasTarget::Address("Carol@Example.Test".into()),
                AliasTarget::Address("remote@far.test".into()),
            ]
        );
        assert_eq!(
            a.get("team").unwrap().targets,
            [
                AliasTarget::Name("sales".into()),
                AliasTarget::Name("alice".into())
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("  alice\n", 1, "continuation"),
            ("a: b\nnocolon\n", 2, "expected"),
            ("a: b\na: c\n", 2, "already defined on line 1"),
            ("a:\n", 1, "no target"),
            ("a: |/bin/sh\n", 1, "pipes"),
            ("a: /tmp/x\n", 1, "files"),
            ("a: :include:/etc/x\n", 1, "include"),
            ("a: b@\n", 1, "target"),
            ("x y: b\n", 1, "white space"),
            ("\n# c\na: b,\n c d\n", 3, "white space"),
        ];
        for (text, line, what) in cases {
            let e = Aliases::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
    }
}
