//! The message `sendmail` reads on stdin, turned into SMTP DATA: the header section read and
//! fixed up (recipients taken from To/Cc/Bcc with `-t`, Bcc removed, From/Date/Message-ID
//! added when missing, as Postfix's cleanup does), every line sent with CR LF and
//! dot-stuffed, a line holding only a dot ending the input unless `-i`.
//!
//! Owns: the header section's fields ([`Header`]), the address lists in them (parsed with
//! `mailparse`), and the line transformation into DATA ([`data_line`]).
//! Must not: choose the queue, speak to the session or write a file.

use std::io::{self, BufRead};

/// One header field: its name and its lines (continuations included), without line ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field name as written.
    pub name: String,
    /// The first line (`Name: value`) and its continuation lines.
    pub lines: Vec<Vec<u8>>,
}

impl Field {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The field as written, lines joined with CR LF (for `mailparse`).
    fn raw(&self) -> Vec<u8> {
        let mut raw = Vec::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(l);
        }
        raw
    }
}

/// The header section as read, and what follows it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The fields in order.
    pub fields: Vec<Field>,
    /// The first line after the header section when it was not the empty separator line (a
    /// message with no separator: that line is the body's first).
    pub first_body_line: Option<Vec<u8>>,
    /// The input ended within the header section (end of file, or a lone dot without `-i`).
    pub ended: bool,
}

/// Reads one line (without its LF or CR LF); `None` at end of input.
pub fn read_line(input: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if input.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(Some(line))
}

/// True for a line that ends the input: a lone dot, unless `-i`.
pub fn ends_input(line: &[u8], ignore_dots: bool) -> bool {
    !ignore_dots && line == b"."
}

/// Reads the header section: fields up to the empty line (consumed) or the first line that is
/// neither a field nor a continuation (kept as [`Header::first_body_line`]). A leading mbox
/// `From ` line is dropped, as Postfix does.
pub fn read_header(input: &mut impl BufRead, ignore_dots: bool) -> io::Result<Header> {
    let mut h = Header::default();
    let mut first = true;
    loop {
        let Some(line) = read_line(input)? else {
            h.ended = true;
            return Ok(h);
        };
        if ends_input(&line, ignore_dots) {
            h.ended = true;
            return Ok(h);
        }
        if first && line.starts_with(b"From ") {
            first = false;
            continue;
        }
        first = false;
        if line.is_empty() {
            return Ok(h);
        }
        if matches!(line[0], b' ' | b'\t')
            && let Some(f) = h.fields.last_mut()
        {
            f.lines.push(line);
            continue;
        }
        match field_name(&line) {
            Some(name) => h.fields.push(Field {
                name,
                lines: vec![line],
            }),
            None => {
                h.first_body_line = Some(line);
                return Ok(h);
            }
        }
    }
}

/// The field name of a `Name: value` line (RFC 5322 §2.2: printable ASCII but colon).
fn field_name(line: &[u8]) -> Option<String> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
        return None;
    }
    Some(String::from_utf8_lossy(name).into_owned())
}

impl Header {
    /// The addresses in the To, Cc and Bcc fields (groups expanded), in order.
    pub fn recipients(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for f in self.fields.iter() {
            if !(f.is("To") || f.is("Cc") || f.is("Bcc")) {
                continue;
            }
            let raw = f.raw();
            let (header, _) = mailparse::parse_header(&raw)
                .map_err(|e| format!("cannot read the {} header: {e}", f.name))?;
            let list = mailparse::addrparse_header(&header)
                .map_err(|e| format!("bad address in the {} header: {e}", f.name))?;
            for addr in list.iter() {
                match addr {
                    mailparse::MailAddr::Single(s) => out.push(s.addr.clone()),
                    mailparse::MailAddr::Group(g) => {
                        out.extend(g.addrs.iter().map(|s| s.addr.clone()))
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes every Bcc field (its recipients get the message, nobody sees the list).
    pub fn remove_bcc(&mut self) {
        self.fields.retain(|f| !f.is("Bcc"));
    }

    /// True when a field of this name is present.
    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.is(name))
    }

    /// Appends a field.
    pub fn add(&mut self, name: &str, value: &str) {
        self.fields.push(Field {
            name: name.to_owned(),
            lines: vec![format!("{name}: {value}").into_bytes()],
        });
    }
}

/// The `From:` value for a message without one: `"Full Name" <sender>` or `<sender>`.
pub fn from_value(sender: &str, full_name: Option<&str>) -> String {
    match full_name {
        Some(name) if !name.is_empty() => {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\" <{sender}>")
        }
        _ => format!("<{sender}>"),
    }
}

/// Appends `line` to DATA: a leading dot doubled (RFC 5321 §4.5.2), then CR LF.
pub fn data_line(out: &mut Vec<u8>, line: &[u8]) {
    if line.first() == Some(&b'.') {
        out.push(b'.');
    }
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str, ignore_dots: bool) -> Header {
        read_header(&mut text.as_bytes(), ignore_dots).expect("reads")
    }

    #[test]
    fn fields_continuations_and_the_separator() {
        let h = header("From me\nSubject: a\n b\r\nTo: x@y.z\n\nbody\n", false);
        assert_eq!(h.fields.len(), 2);
        assert_eq!(h.fields[0].lines, [b"Subject: a".to_vec(), b" b".to_vec()]);
        assert_eq!(h.first_body_line, None);
        assert!(!h.ended);
    }

    #[test]
    fn a_line_that_is_not_a_field_starts_the_body() {
        let h = header("Subject: a\nhello there\nmore\n", false);
        assert_eq!(h.fields.len(), 1);
        assert_eq!(h.first_body_line, Some(b"hello there".to_vec()));
    }

    #[test]
    fn a_lone_dot_ends_input_unless_i() {
        assert!(header("Subject: a\n.\nTo: x@y.z\n", false).ended);
        let h = header("Subject: a\n.\nTo: x@y.z\n", true);
        assert!(!h.ended);
        assert_eq!(h.first_body_line, Some(b".".to_vec()));
        assert!(header("Subject: a\n", false).ended);
    }

    #[test]
    fn recipients_from_to_cc_bcc_with_names_groups_and_folding() {
        let h = header(
            "To: \"Doe, John\" <john@example.org>, jane@example.org\nCc: team: a@x.org,\n b@x.org;\nBcc: <hidden@example.net>\nReply-To: no@x.org\n\n",
            false,
        );
        assert_eq!(
            h.recipients().expect("addresses"),
            [
                "john@example.org",
                "jane@example.org",
                "a@x.org",
                "b@x.org",
                "hidden@example.net"
            ]
        );
    }

    #[test]
    fn bcc_is_removed_other_fields_stay_in_order() {
        let mut h = header("To: a@x.org\nBCC: b@x.org\n c@x.org\nSubject: s\n\n", false);
        h.remove_bcc();
        let names: Vec<_> = h.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["To", "Subject"]);
        assert!(h.has("subject") && !h.has("Bcc"));
    }

    #[test]
    fn from_values() {
        assert_eq!(from_value("a@b.c", None), "<a@b.c>");
        assert_eq!(
            from_value("a@b.c", Some("Al \"the\" Cat")),
            "\"Al \\\"the\\\" Cat\" <a@b.c>"
        );
    }

    #[test]
    fn data_lines_are_dot_stuffed_with_crlf() {
        let mut out = Vec::new();
        data_line(&mut out, b".");
        data_line(&mut out, b"..x");
        data_line(&mut out, b"plain");
        data_line(&mut out, b"");
        assert_eq!(out, b"..\r\n...x\r\nplain\r\n\r\n");
    }
}
