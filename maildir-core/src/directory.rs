//! Recipient routing for local delivery: given the local domains, the recipient delimiter, the
//! users and the aliases, where does an address go? [`Directory::resolve`] answers
//! [`Route::Local`] (with the users that get a copy and the remote addresses an alias forwards
//! to), [`Route::Remote`] (not one of our domains) or [`Route::Unknown`] (our domain, nobody
//! there). [`DeliveredTo`] finds `Delivered-To:` fields in a message's header section, so a
//! copy that already went through a user's mailbox is refused as a loop.
//!
//! Local parts and domains compare case-insensitively; `alice+tag@` is looked up as itself
//! first, then as `alice` (Postfix's order). An alias wins over a user of the same name (as in
//! Postfix's local delivery). [`Directory::new`] refuses alias loops, alias targets that name
//! nobody, and (when local domains are set) a `postmaster` that resolves to nobody.
//!
//! Pure: no file, socket or clock, so the protocol session can call it on every RCPT. Reading
//! the files is the server's business (`server/src/accounts.rs`).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::aliases::{Alias, AliasTarget, Aliases};
use crate::users::{LineError, User, Users};

/// The default recipient delimiter (Postfix's `recipient_delimiter`, Dovecot's too).
pub const DEFAULT_DELIMITER: char = '+';

/// Most `Delivered-To:` fields [`DeliveredTo`] remembers (a message with more is a loop anyway).
const MAX_DELIVERED_TO: usize = 100;

/// Which file an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `--users` file.
    Users,
    /// The `--aliases` file.
    Aliases,
}

/// An error in the users or aliases file, or in how they fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryError {
    /// The file the error is in.
    pub source: Source,
    /// Line and message.
    pub error: LineError,
}

impl fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = match self.source {
            Source::Users => "users file",
            Source::Aliases => "aliases file",
        };
        write!(f, "{file}: {}", self.error)
    }
}

impl std::error::Error for DirectoryError {}

/// Where a recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// One of our domains, and someone is there.
    Local(LocalRecipient),
    /// Not one of our domains: the relay queue (if the client may relay).
    Remote,
    /// One of our domains, nobody there: 550 5.1.1.
    Unknown,
}

/// A recipient in one of our domains, expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecipient {
    /// The address as given in RCPT TO (for `X-Original-To:`), without brackets.
    pub original: String,
    /// The users that get a copy, deduplicated, in expansion order.
    pub users: Vec<LocalUser>,
    /// Remote addresses an alias forwards to, deduplicated, in expansion order.
    pub forward: Vec<Mailbox>,
}

/// A user that gets a copy, with the address written into its `Delivered-To:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalUser {
    /// The user name (its Maildir is `<mailboxes>/<name>`).
    pub name: String,
    /// `name@domain`, lower case: the final recipient after alias expansion.
    pub address: String,
}

/// One user's copy to write: who, and the two addresses its header lines name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCopy {
    /// The user name: the Maildir is `<mailboxes>/<user>`.
    pub user: String,
    /// `user@domain` for `Delivered-To:` (after alias expansion).
    pub delivered_to: String,
    /// The address as given in RCPT TO, for `X-Original-To:`.
    pub original_to: String,
}

/// What the end of DATA asks of the store for a message with local recipients: write one
/// copy per entry of `copies` from the spooled message (the content from `content_at` on: the
/// `Received:` header and the message), and keep the spool as the relay's queue file only when
/// `queue` (remote or forwarded recipients, which its envelope lists); all in one commit. With
/// `spool_is_copy` (no queue file) the spool already starts with the first copy's header lines
/// ([`copy_header`]) and is itself that copy, renamed into the user's Maildir: one file
/// written, not two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDelivery {
    /// The envelope sender, for each copy's `Return-Path:`.
    pub sender: ReversePath,
    /// One per user.
    pub copies: Vec<LocalCopy>,
    /// The spool is also a queue file for smtp-relay; without it the spool is removed.
    pub queue: bool,
    /// Octets of envelope (or of the first copy's header lines) before the content in the
    /// spool.
    pub content_at: u64,
    /// The spool is `copies[0]`'s file.
    pub spool_is_copy: bool,
}

/// The header lines a user's copy starts with: `Return-Path:`, `Delivered-To:` (the user's
/// address after alias expansion), `X-Original-To:` (the address as given), as Postfix's local
/// and virtual delivery write them.
pub fn copy_header(sender: &ReversePath, copy: &LocalCopy) -> String {
    format!(
        "Return-Path: {sender}\r\nDelivered-To: {}\r\nX-Original-To: {}\r\n",
        copy.delivered_to, copy.original_to
    )
}

/// What one message's local recipients come to: one copy per user (however many recipients
/// reach that user) and the remote addresses aliases forward to, each once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryPlan {
    /// One per user, in RCPT order; the first recipient that reached a user names its copy.
    pub copies: Vec<LocalCopy>,
    /// Remote addresses to queue for the relay, deduplicated, in RCPT order.
    pub forward: Vec<Mailbox>,
}

impl DeliveryPlan {
    /// The plan for the local recipients of one transaction, in RCPT order.
    pub fn new<'a>(recipients: impl IntoIterator<Item = &'a LocalRecipient>) -> DeliveryPlan {
        let mut plan = DeliveryPlan::default();
        for r in recipients {
            for u in &r.users {
                if !plan.copies.iter().any(|c| c.user == u.name) {
                    plan.copies.push(LocalCopy {
                        user: u.name.clone(),
                        delivered_to: u.address.clone(),
                        original_to: r.original.clone(),
                    });
                }
            }
            for m in &r.forward {
                if !plan.forward.iter().any(|x| same_address(x, m)) {
                    plan.forward.push(m.clone());
                }
            }
        }
        plan
    }
}

/// Users, aliases, local domains and the delimiter, checked to fit together.
#[derive(Debug, Clone)]
pub struct Directory {
    users: Users,
    aliases: Aliases,
    /// Lower case, no trailing dot; the first one names the host's bare `<postmaster>`.
    domains: Vec<String>,
    delimiter: Option<char>,
}

enum Found<'a> {
    Alias(&'a Alias),
    User(&'a User),
}

impl Directory {
    /// Checks that the aliases fit the users and domains: every target resolves, no loops,
    /// `postmaster` resolves when there are local domains.
    pub fn new(
        users: Users,
        aliases: Aliases,
        local_domains: &[String],
        delimiter: Option<char>,
    ) -> Result<Directory, DirectoryError> {
        let mut domains: Vec<String> = Vec::new();
        for d in local_domains {
            let d = normalize_domain(d);
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        let dir = Directory {
            users,
            aliases,
            domains,
            delimiter,
        };
        dir.check_targets()?;
        dir.check_loops()?;
        if !dir.domains.is_empty() && dir.find("postmaster").is_none() {
            return Err(DirectoryError {
                source: Source::Aliases,
                error: LineError::new(
                    0,
                    "postmaster is neither an alias nor a user; RFC 5321 §4.5.1 requires it \
                     for local domains (add e.g. \"postmaster: alice\")",
                ),
            });
        }
        Ok(dir)
    }

    /// The users.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// The aliases.
    pub fn aliases(&self) -> &Aliases {
        &self.aliases
    }

    /// The recipient delimiter (`alice+tag@` is alice), if tags are on.
    pub fn delimiter(&self) -> Option<char> {
        self.delimiter
    }

    /// The local domains, lower case.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// True when `domain` is one of ours.
    pub fn is_local_domain(&self, domain: &Domain) -> bool {
        let d = normalize_domain(&domain.normalized());
        self.domains.contains(&d)
    }

    /// Where `rcpt` goes. The bare `<postmaster>` is the postmaster of our first local domain
    /// (or [`Route::Remote`] when there are no local domains, as before local delivery).
    pub fn resolve(&self, rcpt: &ForwardPath) -> Route {
        let (local, domain, original) = match rcpt {
            ForwardPath::Postmaster => match self.domains.first() {
                Some(d) => ("postmaster".to_owned(), d.clone(), "postmaster".to_owned()),
                None => return Route::Remote,
            },
            ForwardPath::Mailbox(m) => {
                if !self.is_local_domain(m.domain()) {
                    return Route::Remote;
                }
                (
                    lookup_key(m.local_part()),
                    normalize_domain(&m.domain().normalized()),
                    m.to_string(),
                )
            }
        };
        let Some(found) = self.find(&local) else {
            return Route::Unknown;
        };
        let mut users = Vec::new();
        let mut forward = Vec::new();
        let mut seen = BTreeSet::new();
        self.expand(found, &domain, &mut users, &mut forward, &mut seen);
        Route::Local(LocalRecipient {
            original,
            users,
            forward,
        })
    }

    /// Looks `key` (lower case, unquoted) up as itself, then without its delimiter and tag.
    fn find(&self, key: &str) -> Option<Found<'_>> {
        let exact = |k: &str| {
            if let Some(a) = self.aliases.get(k) {
                Some(Found::Alias(a))
            } else {
                self.users.get(k).map(Found::User)
            }
        };
        if let Some(f) = exact(key) {
            return Some(f);
        }
        let d = self.delimiter?;
        let (base, _tag) = key.split_once(d)?;
        if base.is_empty() {
            return None;
        }
        exact(base)
    }

    /// Where an alias target points: a local name in a local domain, or a remote mailbox.
    fn target<'a>(&'a self, t: &AliasTarget, domain: &str) -> TargetRef<'a> {
        match t {
            AliasTarget::Name(n) => match self.find(n) {
                Some(f) => TargetRef::Local(f, domain.to_owned()),
                None => TargetRef::Missing,
            },
            AliasTarget::Address(a) => match Mailbox::parse(a) {
                Ok(m) if self.is_local_domain(m.domain()) => {
                    match self.find(&lookup_key(m.local_part())) {
                        Some(f) => TargetRef::Local(f, normalize_domain(&m.domain().normalized())),
                        None => TargetRef::Missing,
                    }
                }
                Ok(m) => TargetRef::Remote(m),
                Err(_) => TargetRef::Missing,
            },
        }
    }

    fn expand(
        &self,
        found: Found<'_>,
        domain: &str,
        users: &mut Vec<LocalUser>,
        forward: &mut Vec<Mailbox>,
        seen: &mut BTreeSet<String>,
    ) {
        match found {
            Found::User(u) => {
                if !users.iter().any(|x| x.name == u.name) {
                    users.push(LocalUser {
                        name: u.name.clone(),
                        address: format!("{}@{domain}", u.name),
                    });
                }
            }
            Found::Alias(a) => {
                // Loops are refused at load; `seen` only keeps a diamond from being walked twice.
                if !seen.insert(format!("{}@{domain}", a.name)) {
                    return;
                }
                for t in &a.targets {
                    match self.target(t, domain) {
                        TargetRef::Local(f, d) => self.expand(f, &d, users, forward, seen),
                        TargetRef::Remote(m) => {
                            if !forward.iter().any(|x| same_address(x, &m)) {
                                forward.push(m);
                            }
                        }
                        TargetRef::Missing => {}
                    }
                }
            }
        }
    }

    fn check_targets(&self) -> Result<(), DirectoryError> {
        for a in self.aliases.iter() {
            for t in &a.targets {
                let missing = match t {
                    AliasTarget::Name(_) => matches!(self.target(t, ""), TargetRef::Missing),
                    AliasTarget::Address(_) => {
                        let d = self.domains.first().map(String::as_str).unwrap_or("");
                        matches!(self.target(t, d), TargetRef::Missing)
                    }
                };
                if missing {
                    let what = match t {
                        AliasTarget::Name(n) => n.clone(),
                        AliasTarget::Address(x) => x.clone(),
                    };
                    return Err(DirectoryError {
                        source: Source::Aliases,
                        error: LineError::new(
                            a.line,
                            format!(
                                "alias {:?}: target {what:?} is neither a user nor an alias",
                                a.name
                            ),
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Depth-first search over alias → alias edges; a back edge is a loop, reported at the
    /// line of the alias it was found from, with the cycle spelled out.
    fn check_loops(&self) -> Result<(), DirectoryError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done,
        }
        let mut marks: HashMap<&str, Mark> = HashMap::new();
        let domain = self.domains.first().map(String::as_str).unwrap_or("");
        for start in self.aliases.iter() {
            if marks.contains_key(start.name.as_str()) {
                continue;
            }
            // Explicit stack of (alias, next target index) to keep deep chains off the call stack.
            let mut path: Vec<(&Alias, usize)> = vec![(start, 0)];
            marks.insert(&start.name, Mark::Open);
            while let Some((alias, idx)) = path.last_mut() {
                let alias: &Alias = alias;
                if *idx >= alias.targets.len() {
                    marks.insert(&alias.name, Mark::Done);
                    path.pop();
                    continue;
                }
                let t = &alias.targets[*idx];
                *idx += 1;
                let TargetRef::Local(Found::Alias(next), _) = self.target(t, domain) else {
                    continue;
                };
                match marks.get(next.name.as_str()) {
                    Some(Mark::Done) => {}
                    Some(Mark::Open) => {
                        let from = path
                            .iter()
                            .position(|(a, _)| a.name == next.name)
                            .unwrap_or(0);
                        let mut cycle: Vec<&str> =
                            path[from..].iter().map(|(a, _)| a.name.as_str()).collect();
                        cycle.push(&next.name);
                        return Err(DirectoryError {
                            source: Source::Aliases,
                            error: LineError::new(
                                alias.line,
                                format!("alias loop: {}", cycle.join(" -> ")),
                            ),
                        });
                    }
                    None => {
                        marks.insert(&next.name, Mark::Open);
                        path.push((next, 0));
                    }
                }
            }
        }
        Ok(())
    }
}

enum TargetRef<'a> {
    Local(Found<'a>, String),
    Remote(Mailbox),
    Missing,
}

/// A domain in lower case without a trailing dot.
fn normalize_domain(d: &str) -> String {
    d.trim_end_matches('.').to_lowercase()
}

/// The lookup key of a local part: unquoted (`"alice"` → `alice`), lower case.
pub fn lookup_key(local: &str) -> String {
    let unquoted = match local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => local.to_owned(),
    };
    unquoted.to_lowercase()
}

fn same_address(a: &Mailbox, b: &Mailbox) -> bool {
    a.local_part() == b.local_part() && a.domain().normalized() == b.domain().normalized()
}

/// Collects the `Delivered-To:` fields of a message's header section, fed in chunks of decoded
/// content (CRLF or LF line ends, any split). The body is ignored: only the header section, up
/// to the first empty line, counts.
#[derive(Debug, Clone, Default)]
pub struct DeliveredTo {
    line: Vec<u8>,
    in_body: bool,
    found: BTreeSet<String>,
}

/// The longest header line [`DeliveredTo`] looks at; longer lines are not `Delivered-To:` we
/// wrote, and only their start is kept.
const MAX_FIELD: usize = 1024;

impl DeliveredTo {
    /// A scanner at the start of the message.
    pub fn new() -> DeliveredTo {
        DeliveredTo::default()
    }

    /// Feeds the next chunk of message content.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !self.in_body && !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.push(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                    self.end_line();
                }
                None => {
                    self.push(chunk);
                    chunk = &[];
                }
            }
        }
    }

    fn push(&mut self, part: &[u8]) {
        let room = MAX_FIELD.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.is_empty() {
            self.in_body = true;
            return;
        }
        const NAME: &[u8] = b"delivered-to:";
        if line.len() > NAME.len()
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
            && self.found.len() < MAX_DELIVERED_TO
        {
            let value = String::from_utf8_lossy(&line[NAME.len()..]);
            let v = value.trim().trim_start_matches('<').trim_end_matches('>');
            self.found.insert(v.to_lowercase());
        }
    }

    /// True when the header section names `address` (`user@domain`, compared without case)
    /// in a `Delivered-To:` field.
    pub fn contains(&self, address: &str) -> bool {
        self.found.contains(&address.to_lowercase())
    }

    /// True once the empty line ending the header section was seen.
    pub fn header_done(&self) -> bool {
        self.in_body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(users: &str, aliases: &str) -> Result<Directory, DirectoryError> {
        Directory::new(
            Users::parse(users).unwrap(),
            Aliases::parse(aliases).unwrap(),
            &["Example.Test".into(), "other.test.".into()],
            Some(DEFAULT_DELIMITER),
        )
    }

    fn rcpt(s: &str) -> ForwardPath {
        ForwardPath::parse(s).unwrap()
    }

    fn names(r: &Route) -> Vec<String> {
        match r {
            Route::Local(l) => l.users.iter().map(|u| u.address.clone()).collect(),
            other => panic!("not local: {other:?}"),
        }
    }

    const USERS: &str = "alice:*\nbob:*\ncarol:*\n";
    const ALIASES: &str = "postmaster: alice\n\
        sales: bob, Carol@Example.Test, far@remote.test, <far@REMOTE.test>\n\
        team: sales, alice, bob\n\
        ext: alice@other.test\n";

    #[test]
    fn users_tags_and_case() {
        let d = dir(USERS, ALIASES).unwrap();
        assert_eq!(
            names(&d.resolve(&rcpt("<alice@example.test>"))),
            ["alice@example.test"]
        );
        assert_eq!(
            names(&d.resolve(&rcpt("<ALICE@EXAMPLE.TEST>"))),
            ["alice@example.test"]
        );
        assert_eq!(
            names(&d.resolve(&rcpt("<alice+news@example.test>"))),
            ["alice@example.test"]
        );
        assert_eq!(
            names(&d.resolve(&rcpt("<\"Alice\"@example.test>"))),
            ["alice@example.test"]
        );
        assert_eq!(
            names(&d.resolve(&rcpt("<bob@other.test>"))),
            ["bob@other.test"]
        );
        let Route::Local(l) = d.resolve(&rcpt("<Alice+News@Example.Test>")) else {
            panic!()
        };
        assert_eq!(l.original, "Alice+News@Example.Test");
        assert!(l.forward.is_empty());
        assert_eq!(d.resolve(&rcpt("<mallory@example.test>")), Route::Unknown);
        assert_eq!(d.resolve(&rcpt("<+x@example.test>")), Route::Unknown);
        assert_eq!(d.resolve(&rcpt("<alice@elsewhere.test>")), Route::Remote);
        assert_eq!(d.resolve(&rcpt("<alice@[127.0.0.1]>")), Route::Remote);
    }

    #[test]
    fn aliases_expand_to_users_and_remote_addresses_once() {
        let d = dir(USERS, ALIASES).unwrap();
        let Route::Local(l) = d.resolve(&rcpt("<team@example.test>")) else {
            panic!()
        };
        let got: Vec<&str> = l.users.iter().map(|u| u.address.as_str()).collect();
        assert_eq!(
            got,
            [
                "bob@example.test",
                "carol@example.test",
                "alice@example.test"
            ]
        );
        assert_eq!(l.forward.len(), 1);
        assert_eq!(l.forward[0].to_string(), "far@remote.test");
        assert_eq!(names(&d.resolve(&rcpt("<sales+q@example.test>"))).len(), 2);
        assert_eq!(
            names(&d.resolve(&rcpt("<ext@example.test>"))),
            ["alice@other.test"]
        );
        assert_eq!(
            names(&d.resolve(&rcpt("<postmaster>"))),
            ["alice@example.test"]
        );
        assert_eq!(
            names(&d.resolve(&rcpt("<PostMaster@other.test>"))),
            ["alice@other.test"]
        );
    }

    #[test]
    fn plan_gives_one_copy_per_user_and_each_forward_once() {
        let d = dir(USERS, ALIASES).unwrap();
        let locals: Vec<LocalRecipient> = [
            "<bob@example.test>",
            "<team@example.test>",
            "<sales@example.test>",
        ]
        .iter()
        .map(|r| match d.resolve(&rcpt(r)) {
            Route::Local(l) => l,
            other => panic!("{other:?}"),
        })
        .collect();
        let plan = DeliveryPlan::new(&locals);
        let got: Vec<(&str, &str, &str)> = plan
            .copies
            .iter()
            .map(|c| {
                (
                    c.user.as_str(),
                    c.delivered_to.as_str(),
                    c.original_to.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("bob", "bob@example.test", "bob@example.test"),
                ("carol", "carol@example.test", "team@example.test"),
                ("alice", "alice@example.test", "team@example.test"),
            ]
        );
        assert_eq!(plan.forward.len(), 1);
        assert_eq!(DeliveryPlan::new(&[]), DeliveryPlan::default());
    }

    #[test]
    fn a_remote_only_alias_is_local_with_no_users() {
        let d = dir(USERS, "postmaster: alice\nfwd: x@far.test\n").unwrap();
        let Route::Local(l) = d.resolve(&rcpt("<fwd@example.test>")) else {
            panic!()
        };
        assert!(l.users.is_empty());
        assert_eq!(l.forward[0].to_string(), "x@far.test");
    }

    #[test]
    fn alias_wins_over_user() {
        let d = dir(USERS, "postmaster: alice\nbob: carol\n").unwrap();
        assert_eq!(
            names(&d.resolve(&rcpt("<bob@example.test>"))),
            ["carol@example.test"]
        );
    }

    #[test]
    fn load_errors() {
        let e = dir(USERS, "postmaster: alice\na: b\nb: c\nc: a\n").unwrap_err();
        assert_eq!(e.source, Source::Aliases);
        assert_eq!(e.error.line, 4);
        assert_eq!(e.error.message, "alias loop: a -> b -> c -> a");
        let e = dir(USERS, "postmaster: alice\nme: me@example.test\n").unwrap_err();
        assert_eq!(e.error.line, 2);
        assert!(e.error.message.contains("loop: me -> me"), "{e}");
        let e = dir(
            USERS,
            "postmaster: alice\nx: alice+tag, y\ny: X@other.test\n",
        )
        .unwrap_err();
        assert!(e.error.message.contains("loop"), "{e}");
        let e = dir(USERS, "postmaster: alice\nx: nobody\n").unwrap_err();
        assert_eq!(e.error.line, 2);
        assert!(e.error.message.contains("\"nobody\" is neither"), "{e}");
        let e = dir(USERS, "postmaster: alice\nx: nobody@other.test\n").unwrap_err();
        assert!(e.error.message.contains("neither"), "{e}");
        let e = dir(USERS, "sales: bob\n").unwrap_err();
        assert_eq!(e.error.line, 0);
        assert!(
            e.to_string()
                .starts_with("aliases file: postmaster is neither")
        );
        // A user called postmaster is enough; without local domains nothing is required.
        assert!(dir("postmaster:*\n", "").is_ok());
        assert!(Directory::new(Users::default(), Aliases::default(), &[], Some('+')).is_ok());
    }

    #[test]
    fn no_delimiter_means_no_tags() {
        let d = Directory::new(
            Users::parse(USERS).unwrap(),
            Aliases::parse("postmaster: alice\n").unwrap(),
            &["example.test".into()],
            None,
        )
        .unwrap();
        assert_eq!(d.resolve(&rcpt("<alice+x@example.test>")), Route::Unknown);
    }

    #[test]
    fn delivered_to_in_header_section_only_at_every_split() {
        let msg = b"Received: x\r\nDelivered-To: Alice@Example.Test\r\nSubject: s\r\n\r\nDelivered-To: bob@example.test\r\n";
        for split in 0..=msg.len() {
            let mut s = DeliveredTo::new();
            s.feed(&msg[..split]);
            s.feed(&msg[split..]);
            assert!(s.contains("alice@example.test"), "split {split}");
            assert!(!s.contains("bob@example.test"), "split {split}");
            assert!(s.header_done());
        }
        let mut s = DeliveredTo::new();
        s.feed(b"delivered-to: <carol@x.test>\n\nbody\n");
        assert!(s.contains("CAROL@x.test"));
    }
}
