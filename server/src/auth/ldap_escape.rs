//! Escaping a user name before it goes into an LDAP query, so that no character in it can
//! change the query: RFC 4515 §3 for a value in a search filter, RFC 4514 §2.4 for an
//! attribute value in a distinguished name.
//!
//! Pure functions. Must not: know about connections or templates beyond `%u`.

/// `value` as an RFC 4515 filter value: `*`, `(`, `)`, `\` and NUL become `\2a`, `\28`,
/// `\29`, `\5c`, `\00`; everything else is as given.
pub fn filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// `value` as an RFC 4514 attribute value in a DN: `,`, `+`, `"`, `\`, `<`, `>`, `;` and
/// `=` get a backslash, NUL becomes `\00`, a leading space or `#` and a trailing space get a
/// backslash.
pub fn dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    let n = value.chars().count();
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c => out.push(c),
        }
    }
    out
}

/// `template` with every `%u` replaced by `value` escaped by `escape`.
pub fn fill(template: &str, value: &str, escape: fn(&str) -> String) -> String {
    template.replace("%u", &escape(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values() {
        for (input, want) in [
            ("alice", "alice"),
            ("*", "\\2a"),
            ("*)(uid=*", "\\2a\\29\\28uid=\\2a"),
            ("a\\b", "a\\5cb"),
            ("nul\0x", "nul\\00x"),
            ("(x)", "\\28x\\29"),
            ("élan", "élan"),
            (" #,+\"<>;=", " #,+\"<>;="),
        ] {
            assert_eq!(filter_value(input), want, "{input:?}");
        }
        assert_eq!(
            fill("(&(objectClass=person)(uid=%u))", "*)(uid=*", filter_value),
            "(&(objectClass=person)(uid=\\2a\\29\\28uid=\\2a))"
        );
    }

    #[test]
    fn dn_values() {
        for (input, want) in [
            ("alice", "alice"),
            ("a,b", "a\\,b"),
            ("a+b", "a\\+b"),
            ("\"q\"", "\\\"q\\\""),
            ("a\\b", "a\\\\b"),
            ("<x>", "\\<x\\>"),
            ("a;b=c", "a\\;b\\=c"),
            ("nul\0", "nul\\00"),
            (" lead", "\\ lead"),
            ("trail ", "trail\\ "),
            (" ", "\\ "),
            ("mid dle", "mid dle"),
            ("#hash", "\\#hash"),
            ("a#b", "a#b"),
            ("*)(uid=*", "*)(uid\\=*"),
        ] {
            assert_eq!(dn_value(input), want, "{input:?}");
        }
        assert_eq!(
            fill(
                "uid=%u,ou=people,dc=example,dc=test",
                "x,ou=admins",
                dn_value
            ),
            "uid=x\\,ou\\=admins,ou=people,dc=example,dc=test"
        );
    }
}
