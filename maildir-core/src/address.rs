//! Mail addresses as RFC 5321 defines them: `Mailbox`, the reverse-path of `MAIL FROM` and the
//! forward-path of `RCPT TO`, with SMTPUTF8 (RFC 6531) local parts and domains.
//!
//! This module owns the syntax only: it never decides whether an address is acceptable to a
//! server (relay policy, SMTPUTF8 negotiation), it only says whether it is well formed and why not.

use std::fmt;

/// Longest path accepted, in octets, including the angle brackets (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH_LEN: usize = 256;
/// Longest local part accepted, in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest domain accepted, in octets (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN_LEN: usize = 255;

/// Why an address was refused; `reason()` is short text fit for an SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    /// The path is not enclosed in `<` and `>`.
    MissingBrackets,
    /// A space or tab inside the address.
    Whitespace,
    /// No `@` between local part and domain.
    MissingAt,
    /// Empty local part.
    EmptyLocalPart,
    /// The local part is neither a dot-string nor a quoted-string.
    BadLocalPart,
    /// The domain is not a valid host name.
    BadDomain,
    /// The address literal (`[...]`) is malformed.
    BadAddressLiteral,
    /// Too long (path, local part or domain).
    TooLong,
    /// A control character or invalid byte inside the address.
    BadCharacter,
    /// The source route before `:` is malformed.
    BadSourceRoute,
}

impl AddressError {
    /// Short human-readable reason, suitable for the text of an SMTP reply.
    pub fn reason(self) -> &'static str {
        match self {
            AddressError::MissingBrackets => "address must be enclosed in <>",
            AddressError::Whitespace => "whitespace inside address is not allowed",
            AddressError::MissingAt => "address lacks @domain",
            AddressError::EmptyLocalPart => "empty local part",
            AddressError::BadLocalPart => "malformed local part",
            AddressError::BadDomain => "malformed domain",
            AddressError::BadAddressLiteral => "malformed address literal",
            AddressError::TooLong => "address too long",
            AddressError::BadCharacter => "invalid character in address",
            AddressError::BadSourceRoute => "malformed source route",
        }
    }
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AddressError {}

/// The part after `@`: a host name (possibly a UTF-8 U-label) or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A host name such as `example.org`, as written (case preserved).
    Name(String),
    /// An address literal, stored without the brackets: `192.0.2.1` or `IPv6:2001:db8::1`.
    Literal(String),
}

impl Domain {
    /// The domain in lower case, for grouping and comparison (literals unchanged).
    pub fn normalized(&self) -> String {
        match self {
            Domain::Name(n) => n.to_lowercase(),
            Domain::Literal(l) => format!("[{l}]"),
        }
    }

    /// True when the domain contains non-ASCII characters (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        match self {
            Domain::Name(n) => !n.is_ascii(),
            Domain::Literal(_) => false,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(l) => write!(f, "[{l}]"),
        }
    }
}

/// An RFC 5321 `Mailbox`: `local-part@domain`. The local part is kept exactly as written
/// (a quoted-string keeps its quotes), so writing it back reproduces the wire form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

impl Mailbox {
    /// Parses a bare mailbox (no angle brackets).
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        parse_mailbox(s)
    }

    /// The local part as written on the wire.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// True when the address needs SMTPUTF8 to be transmitted.
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || self.domain.is_utf8()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The argument of `MAIL FROM`: a mailbox or the null reverse-path `<>` (bounces).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: the sender of delivery status notifications; never bounced to.
    Null,
    /// An ordinary sender.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Parses `<...>` (surrounding whitespace is the caller's concern).
    pub fn parse(path: &str) -> Result<ReversePath, AddressError> {
        let inner = strip_brackets(path)?;
        if inner.is_empty() {
            return Ok(ReversePath::Null);
        }
        Ok(ReversePath::Mailbox(parse_mailbox(strip_source_route(
            inner,
        )?)?))
    }

    /// The mailbox, unless this is the null path.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    /// True when the address needs SMTPUTF8.
    pub fn is_utf8(&self) -> bool {
        self.mailbox().is_some_and(Mailbox::is_utf8)
    }
}

impl fmt::Display for ReversePath {
    /// Writes the path with its brackets: `<>` or `<a@b>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The argument of `RCPT TO`: a mailbox or the bare `<postmaster>` (RFC 5321 §4.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<postmaster>` with no domain: the postmaster of the receiving host.
    Postmaster,
    /// An ordinary recipient.
    Mailbox(Mailbox),
}

impl ForwardPath {
    /// Parses `<...>`.
    pub fn parse(path: &str) -> Result<ForwardPath, AddressError> {
        let inner = strip_brackets(path)?;
        if inner.eq_ignore_ascii_case("postmaster") {
            return Ok(ForwardPath::Postmaster);
        }
        if inner.is_empty() {
            return Err(AddressError::MissingAt);
        }
        Ok(ForwardPath::Mailbox(parse_mailbox(strip_source_route(
            inner,
        )?)?))
    }

    /// The mailbox, unless this is the bare postmaster.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ForwardPath::Postmaster => None,
            ForwardPath::Mailbox(m) => Some(m),
        }
    }

    /// True when the address needs SMTPUTF8.
    pub fn is_utf8(&self) -> bool {
        self.mailbox().is_some_and(Mailbox::is_utf8)
    }
}

impl fmt::Display for ForwardPath {
    /// Writes the path with its brackets: `<postmaster>` or `<a@b>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

fn strip_brackets(path: &str) -> Result<&str, AddressError> {
    if path.len() > MAX_PATH_LEN {
        return Err(AddressError::TooLong);
    }
    let inner = path
        .strip_prefix('<')
        .and_then(|p| p.strip_suffix('>'))
        .ok_or(AddressError::MissingBrackets)?;
    if inner.chars().any(is_space) && !quoted_whitespace_only(inner) {
        return Err(AddressError::Whitespace);
    }
    Ok(inner)
}

/// Space, tab, or a non-ASCII white space character (U+00A0, U+3000, ...). CR and LF are
/// refused as control characters instead.
fn is_space(c: char) -> bool {
    c == ' ' || c == '\t' || (!c.is_ascii() && c.is_whitespace())
}

/// Whitespace is allowed only inside a quoted local part (`<"a b"@c>`).
fn quoted_whitespace_only(inner: &str) -> bool {
    find_unquoted(inner, is_space).is_none()
}

/// Byte index of the first character outside a quoted-string (`"..."`, with `\` escapes
/// inside it) for which `pred` holds: the way to find `@` or `>` in a path whose local part
/// may quote them.
pub fn find_unquoted(s: &str, pred: impl Fn(char) -> bool) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            c if !in_quote && pred(c) => return Some(i),
            _ => {}
        }
    }
    None
}

/// Drops an obsolete source route (`@a,@b:user@c`); RFC 5321 §4.1.1.3 says to accept and ignore it.
fn strip_source_route(inner: &str) -> Result<&str, AddressError> {
    if !inner.starts_with('@') {
        return Ok(inner);
    }
    let (route, rest) = inner.split_once(':').ok_or(AddressError::BadSourceRoute)?;
    for hop in route.split(',') {
        let host = hop.strip_prefix('@').ok_or(AddressError::BadSourceRoute)?;
        parse_domain(host).map_err(|_| AddressError::BadSourceRoute)?;
    }
    Ok(rest)
}

fn parse_mailbox(s: &str) -> Result<Mailbox, AddressError> {
    if s.chars().any(is_space) && !quoted_whitespace_only(s) {
        return Err(AddressError::Whitespace);
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(AddressError::BadCharacter);
    }
    let (local, domain) = split_at_domain(s)?;
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    if local.len() > MAX_LOCAL_LEN || domain.len() > MAX_DOMAIN_LEN {
        return Err(AddressError::TooLong);
    }
    if local.starts_with('"') {
        check_quoted_string(local)?;
    } else {
        check_dot_string(local)?;
    }
    let domain = parse_domain(domain)?;
    Ok(Mailbox {
        local: local.to_owned(),
        domain,
    })
}

/// Splits at the `@` that is not inside a quoted local part.
fn split_at_domain(s: &str) -> Result<(&str, &str), AddressError> {
    let i = find_unquoted(s, |c| c == '@').ok_or(AddressError::MissingAt)?;
    Ok((&s[..i], &s[i + 1..]))
}

/// RFC 5322 atext, extended with any non-ASCII character for SMTPUTF8 (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_dot_string(local: &str) -> Result<(), AddressError> {
    for atom in local.split('.') {
        if atom.is_empty() || !atom.chars().all(is_atext) {
            return Err(AddressError::BadLocalPart);
        }
    }
    Ok(())
}

fn check_quoted_string(local: &str) -> Result<(), AddressError> {
    let inner = local
        .strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .ok_or(AddressError::BadLocalPart)?;
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(' '..='~') => {}
                _ => return Err(AddressError::BadLocalPart),
            },
            '"' => return Err(AddressError::BadLocalPart),
            ' '..='~' => {}
            c if !c.is_ascii() => {}
            _ => return Err(AddressError::BadLocalPart),
        }
    }
    Ok(())
}

fn parse_domain(d: &str) -> Result<Domain, AddressError> {
    if let Some(lit) = d.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or(AddressError::BadAddressLiteral)?;
        check_address_literal(lit)?;
        return Ok(Domain::Literal(lit.to_owned()));
    }
    if d.is_empty() || d.len() > MAX_DOMAIN_LEN {
        return Err(if d.is_empty() {
            AddressError::BadDomain
        } else {
            AddressError::TooLong
        });
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(AddressError::BadDomain);
        }
    }
    Ok(Domain::Name(d.to_owned()))
}

/// The text after an address literal's `IPv6:` tag, which is case-insensitive (RFC 5321
/// §4.1.3: `IPv6:`, `ipv6:`, `IPV6:`...); `None` without that tag.
fn ipv6_tagged(lit: &str) -> Option<&str> {
    lit.get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
        .map(|_| &lit[5..])
}

/// The address an address literal's content names (`192.0.2.1`, `IPv6:2001:db8::1`, the tag
/// in any case); IPv4-mapped IPv6 addresses become IPv4. `None` for anything else.
pub fn literal_ip(lit: &str) -> Option<std::net::IpAddr> {
    match ipv6_tagged(lit) {
        Some(a) => a
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|a| a.to_canonical()),
        None => lit
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(std::net::IpAddr::V4),
    }
}

fn check_address_literal(lit: &str) -> Result<(), AddressError> {
    if let Some(v6) = ipv6_tagged(lit) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| AddressError::BadAddressLiteral);
    }
    if lit.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    // General-address-literal: Standardized-tag ":" 1*dcontent.
    match lit.split_once(':') {
        Some((tag, content))
            if !tag.is_empty()
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=126).contains(&b) && b != b'[' && b != b']' && b != b'\\') =>
        {
            Ok(())
        }
        _ => Err(AddressError::BadAddressLiteral),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc5321_examples() {
        let good = [
            "<user@example.org>",
            "<first.last@sub.example.co.uk>",
            "<\"quoted string\"@example.org>",
            "<\"a\\\"b\"@example.org>",
            "<user+tag@example.org>",
            "<!#$%&'*+-/=?^_`{|}~@example.org>",
            "<user@[192.0.2.1]>",
            "<user@[IPv6:2001:db8::1]>",
            "<@relay.example:user@example.org>",
            "<@a.example,@b.example:user@example.org>",
            "<用户@例子.广告>",
            "<jöran@bücher.example>",
            "<x@a-b.example>",
            // RFC 5321 §4.1.2: Quoted-string may be empty and may hold specials.
            "<\"\"@example.org>",
            "<\"john..doe\"@example.org>",
            "<\"@\"@example.org>",
            "<\"a\\\\b\"@example.org>",
            "<\"<>[]:;,\"@example.org>",
            // A domain is one or more sub-domains; Let-dig at both ends.
            "<user@localhost>",
            "<1@2.3>",
            "<user@123.example>",
            "<USER@EXAMPLE.ORG>",
            // Address literals (§4.1.3): IPv4, IPv6 full / compressed / v4-mapped, general.
            "<user@[127.0.0.1]>",
            "<user@[IPv6:::1]>",
            "<user@[IPv6:2001:db8:0:0:0:0:0:1]>",
            "<user@[IPv6:::ffff:192.0.2.1]>",
            "<user@[ipv6:::1]>",
            "<user@[IpV6:2001:db8::1]>",
            "<user@[X-tag:content]>",
            // RFC 6531: UTF-8 in quoted strings too.
            "<\"ü ß\"@example.org>",
        ];
        for g in good {
            assert!(ForwardPath::parse(g).is_ok(), "{g} should parse");
            assert!(ReversePath::parse(g).is_ok(), "{g} should parse");
        }
        let max_local = format!("<{}@example.org>", "a".repeat(MAX_LOCAL_LEN));
        let max_label = format!("<a@{}.example>", "b".repeat(63));
        for g in [max_local, max_label] {
            assert!(ForwardPath::parse(&g).is_ok(), "{g} should parse");
        }
        // The whole path, brackets included, may be 256 octets and no more.
        let domain = |n: usize| vec!["b".repeat(50); 5].join(".")[..n].to_owned();
        let at_limit = format!("<a@{}>", domain(MAX_PATH_LEN - 4));
        assert_eq!(at_limit.len(), MAX_PATH_LEN);
        assert!(ForwardPath::parse(&at_limit).is_ok());
        let over = format!("<a@{}>", domain(MAX_PATH_LEN - 3));
        assert_eq!(ForwardPath::parse(&over), Err(AddressError::TooLong));
    }

    #[test]
    fn good_examples_round_trip_through_display() {
        for g in ["<\"a b\"@[IPv6:::1]>", "<!x@[X-tag:c]>", "<\"\"@e.org>"] {
            assert_eq!(ForwardPath::parse(g).unwrap().to_string(), g);
        }
    }

    #[test]
    fn more_rejections() {
        let bad: &[(&str, AddressError)] = &[
            ("<user@example.org.>", AddressError::BadDomain),
            ("<user@.example.org>", AddressError::BadDomain),
            ("<user@exa_mple.org>", AddressError::BadDomain),
            ("<user@example-.org>", AddressError::BadDomain),
            ("<a@b@c.example>", AddressError::BadDomain),
            ("<user@[1.2.3]>", AddressError::BadAddressLiteral),
            ("<user@[]>", AddressError::BadAddressLiteral),
            ("<user@[IPv6:]>", AddressError::BadAddressLiteral),
            ("<user@[iPv6:zz]>", AddressError::BadAddressLiteral),
            ("<user@[IPv6:1::2::3]>", AddressError::BadAddressLiteral),
            ("<user@[192.0.2.1>", AddressError::BadAddressLiteral),
            ("<user@[tag:a b]>", AddressError::Whitespace),
            ("<\"a\"b@example.org>", AddressError::BadLocalPart),
            ("<a\"b\"@example.org>", AddressError::BadLocalPart),
            ("<\"a\\\"@example.org>", AddressError::MissingAt),
            ("<a\\b@example.org>", AddressError::BadLocalPart),
            ("<a,b@example.org>", AddressError::BadLocalPart),
            ("<a\tb@example.org>", AddressError::Whitespace),
            ("< user@example.org>", AddressError::Whitespace),
            ("<user@example.org >", AddressError::Whitespace),
            ("<a\u{a0}b@example.org>", AddressError::Whitespace),
            ("<a@exa\u{3000}mple.org>", AddressError::Whitespace),
            ("<a\r\nb@example.org>", AddressError::BadCharacter),
            ("<a\u{0}b@example.org>", AddressError::BadCharacter),
            ("<\"a\u{7f}\"@example.org>", AddressError::BadCharacter),
            ("<user@example.org", AddressError::MissingBrackets),
            ("user@example.org>", AddressError::MissingBrackets),
            ("<user@example.org> ", AddressError::MissingBrackets),
            ("", AddressError::MissingBrackets),
            ("<", AddressError::MissingBrackets),
            ("<@>", AddressError::BadSourceRoute),
            (
                "<@a.example,b.example:u@c.example>",
                AddressError::BadSourceRoute,
            ),
            ("<@a.example:>", AddressError::MissingAt),
            ("<user>", AddressError::MissingAt),
        ];
        for (b, why) in bad {
            assert_eq!(ForwardPath::parse(b), Err(*why), "{b:?}");
        }
        let label = format!("<a@{}.example>", "b".repeat(64));
        assert_eq!(ForwardPath::parse(&label), Err(AddressError::BadDomain));
    }

    #[test]
    fn rejects_malformed() {
        let bad: &[(&str, AddressError)] = &[
            ("user@example.org", AddressError::MissingBrackets),
            ("<user @example.org>", AddressError::Whitespace),
            ("<us er@example.org>", AddressError::Whitespace),
            ("<user@exa mple.org>", AddressError::Whitespace),
            ("<userexample.org>", AddressError::MissingAt),
            ("<@example.org>", AddressError::BadSourceRoute),
            ("<.user@example.org>", AddressError::BadLocalPart),
            ("<user.@example.org>", AddressError::BadLocalPart),
            ("<us..er@example.org>", AddressError::BadLocalPart),
            ("<user@>", AddressError::BadDomain),
            ("<user@-bad.example>", AddressError::BadDomain),
            ("<user@bad..example>", AddressError::BadDomain),
            ("<user@[300.1.1.1]>", AddressError::BadAddressLiteral),
            ("<user@[IPv6:zz::1]>", AddressError::BadAddressLiteral),
            ("<a(b)@example.org>", AddressError::BadLocalPart),
            ("<\"unterminated@example.org>", AddressError::MissingAt),
        ];
        for (b, why) in bad {
            assert_eq!(ForwardPath::parse(b), Err(*why), "{b}");
        }
        let long = format!("<{}@example.org>", "a".repeat(65));
        assert_eq!(ForwardPath::parse(&long), Err(AddressError::TooLong));
        let longer = format!("<a@{}.org>", "b".repeat(300));
        assert_eq!(ForwardPath::parse(&longer), Err(AddressError::TooLong));
    }

    #[test]
    fn null_and_postmaster() {
        assert_eq!(ReversePath::parse("<>"), Ok(ReversePath::Null));
        assert_eq!(
            ForwardPath::parse("<Postmaster>"),
            Ok(ForwardPath::Postmaster)
        );
        assert!(ForwardPath::parse("<>").is_err());
        let pm = ForwardPath::parse("<postmaster@example.org>").unwrap();
        assert!(pm.mailbox().is_some());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "<a@b.example>",
            "<\"x y\"@[10.0.0.1]>",
            "<>",
            "<üser@ß.example>",
        ] {
            assert_eq!(ReversePath::parse(s).unwrap().to_string(), s);
        }
        let sr = ReversePath::parse("<@r.example:a@b.example>").unwrap();
        assert_eq!(sr.to_string(), "<a@b.example>");
    }

    #[test]
    fn utf8_detection() {
        assert!(ReversePath::parse("<ü@x.example>").unwrap().is_utf8());
        assert!(!ReversePath::parse("<u@x.example>").unwrap().is_utf8());
        assert!(ForwardPath::parse("<u@bücher.example>").unwrap().is_utf8());
    }

    #[test]
    fn address_literals_any_tag_case() {
        let one = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        assert_eq!(literal_ip("127.0.0.1"), one);
        assert_eq!(literal_ip("IPv6:::1"), "::1".parse().ok());
        assert_eq!(literal_ip("ipv6:::1"), "::1".parse().ok());
        assert_eq!(literal_ip("IPV6:::1"), "::1".parse().ok());
        assert_eq!(literal_ip("ipv6:::ffff:127.0.0.1"), one);
        assert_eq!(literal_ip("::1"), None, "IPv6 needs its tag");
        assert_eq!(literal_ip("ipv6:1.2.3.4"), None);
        assert_eq!(literal_ip("x-tag:foo"), None);
        assert_eq!(literal_ip("ipv"), None);
    }
}
