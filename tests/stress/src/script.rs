//! Session scripts: what one randomised SMTP session sends and which reply it expects to each
//! command, generated from a seeded [`Rng`].
//!
//! A script is a list of exchanges: bytes to send (one command, or a pipelined group, or a
//! message body) and the replies expected in order. Most sessions follow the protocol to
//! delivered messages; with the run's error rate a session deviates with one error class at a
//! random point. Every error leaves the server's transaction state as it was (or ends the
//! session, for the idle timeout), so the rest of the script's expectations stay exact.
//!
//! Pure: no I/O, no clock.

use std::time::Duration;

use crate::reply::Status;
use crate::rng::Rng;

/// What a command is, for latency figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The greeting (from connect).
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (up to 354).
    Data,
    /// Message content and the final dot (up to the reply after the dot).
    Message,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// QUIT.
    Quit,
    /// Commands expected to be refused whatever the state (unknown, syntax, overlong).
    Other,
    /// Silence until the server's idle timeout.
    Timeout,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 12] = [
        Kind::Greeting,
        Kind::Ehlo,
        Kind::Helo,
        Kind::Mail,
        Kind::Rcpt,
        Kind::Data,
        Kind::Message,
        Kind::Rset,
        Kind::Noop,
        Kind::Quit,
        Kind::Other,
        Kind::Timeout,
    ];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Greeting => "greeting",
            Kind::Ehlo => "EHLO",
            Kind::Helo => "HELO",
            Kind::Mail => "MAIL",
            Kind::Rcpt => "RCPT",
            Kind::Data => "DATA",
            Kind::Message => "message",
            Kind::Rset => "RSET",
            Kind::Noop => "NOOP",
            Kind::Quit => "QUIT",
            Kind::Other => "refused",
            Kind::Timeout => "timeout",
        }
    }
}

/// The ways a session deviates from the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorClass {
    /// A verb the server does not know: 500 5.5.2.
    UnknownCommand,
    /// A known verb with bad arguments: 501 5.5.4 (555 5.5.4 for an unknown parameter).
    BadSyntax,
    /// A command out of sequence: 503.
    WrongOrder,
    /// Whitespace inside an address: 501 5.1.7 (MAIL) or 501 5.1.3 (RCPT).
    AddressWhitespace,
    /// MAIL inside a transaction: 503 5.5.1.
    DuplicateMail,
    /// More recipients than the server's limit: 452 4.5.3 for the extra ones.
    TooManyRecipients,
    /// A command line over 512 octets: 500 5.5.2.
    OverlongLine,
    /// A message over the size limit: 552 5.3.4 (after the dot, or at MAIL with SIZE=).
    Oversize,
    /// Silence until the idle timeout: 421 4.4.2 and close.
    Silent,
}

impl ErrorClass {
    /// Every class, in report order.
    pub const ALL: [ErrorClass; 9] = [
        ErrorClass::UnknownCommand,
        ErrorClass::BadSyntax,
        ErrorClass::WrongOrder,
        ErrorClass::AddressWhitespace,
        ErrorClass::DuplicateMail,
        ErrorClass::TooManyRecipients,
        ErrorClass::OverlongLine,
        ErrorClass::Oversize,
        ErrorClass::Silent,
    ];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::UnknownCommand => "unknown-command",
            ErrorClass::BadSyntax => "bad-syntax",
            ErrorClass::WrongOrder => "wrong-order",
            ErrorClass::AddressWhitespace => "address-whitespace",
            ErrorClass::DuplicateMail => "duplicate-mail",
            ErrorClass::TooManyRecipients => "too-many-recipients",
            ErrorClass::OverlongLine => "overlong-line",
            ErrorClass::Oversize => "oversize",
            ErrorClass::Silent => "silent-timeout",
        }
    }
}

/// What the generator must know about the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The server's recipient limit per message.
    pub max_recipients: usize,
    /// The server's message size limit (also expected in the EHLO SIZE keyword).
    pub max_size: u64,
    /// The server's idle timeout; the silent class is only generated when it is known.
    pub silent_timeout: Option<Duration>,
}

/// One expected reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The command it answers.
    pub kind: Kind,
    /// The exact code.
    pub code: u16,
    /// The enhanced status code, where the server's contract fixes it.
    pub status: Option<Status>,
}

/// Bytes to send and the replies expected to them, in order.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// What to send (may be empty: the greeting, or silence).
    pub send: Vec<u8>,
    /// The replies, in order; never empty.
    pub expect: Vec<Expect>,
    /// For the silent class: the server's idle timeout, after which the reply comes.
    pub silent: Option<Duration>,
}

/// How a session ends after its last exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// After QUIT or a 421: the server closes the connection; wait for that.
    ServerCloses,
    /// The client hangs up after the last reply (no QUIT).
    ClientCloses,
}

/// A whole session.
#[derive(Debug, Clone)]
pub struct Script {
    /// The exchanges, the greeting first.
    pub exchanges: Vec<Exchange>,
    /// How it ends.
    pub end: End,
    /// The error class it provokes, if any.
    pub error: Option<ErrorClass>,
    /// Commands sent in pipelined groups (RFC 2920).
    pub pipelining: bool,
    /// Messages expected to be accepted (250 after the dot).
    pub messages: u32,
}

const fn st(c: u8, s: u16, d: u16) -> Option<Status> {
    Some(Status(c, s, d))
}

const GREETING: Expect = Expect {
    kind: Kind::Greeting,
    code: 220,
    status: None,
};
const EHLO_OK: Expect = Expect {
    kind: Kind::Ehlo,
    code: 250,
    status: None,
};
const HELO_OK: Expect = Expect {
    kind: Kind::Helo,
    code: 250,
    status: None,
};
const MAIL_OK: Expect = Expect {
    kind: Kind::Mail,
    code: 250,
    status: st(2, 1, 0),
};
const RCPT_OK: Expect = Expect {
    kind: Kind::Rcpt,
    code: 250,
    status: st(2, 1, 5),
};
const DATA_OK: Expect = Expect {
    kind: Kind::Data,
    code: 354,
    status: None,
};
const QUEUED: Expect = Expect {
    kind: Kind::Message,
    code: 250,
    status: st(2, 0, 0),
};
const RSET_OK: Expect = Expect {
    kind: Kind::Rset,
    code: 250,
    status: st(2, 0, 0),
};
const NOOP_OK: Expect = Expect {
    kind: Kind::Noop,
    code: 250,
    status: st(2, 0, 0),
};
const BYE: Expect = Expect {
    kind: Kind::Quit,
    code: 221,
    status: None,
};
const UNKNOWN: Expect = Expect {
    kind: Kind::Other,
    code: 500,
    status: st(5, 5, 2),
};
const SYNTAX: Expect = Expect {
    kind: Kind::Other,
    code: 501,
    status: st(5, 5, 4),
};
const BAD_PARAM: Expect = Expect {
    kind: Kind::Other,
    code: 555,
    status: st(5, 5, 4),
};
const BAD_SENDER: Expect = Expect {
    kind: Kind::Mail,
    code: 501,
    status: st(5, 1, 7),
};
const BAD_RCPT: Expect = Expect {
    kind: Kind::Rcpt,
    code: 501,
    status: st(5, 1, 3),
};
const NEED_HELO: Expect = Expect {
    kind: Kind::Mail,
    code: 503,
    status: st(5, 5, 1),
};
const NESTED: Expect = Expect {
    kind: Kind::Mail,
    code: 503,
    status: st(5, 5, 1),
};
const NEED_MAIL: Expect = Expect {
    kind: Kind::Rcpt,
    code: 503,
    status: None,
};
const NEED_RCPT: Expect = Expect {
    kind: Kind::Data,
    code: 503,
    status: None,
};
const TOO_MANY: Expect = Expect {
    kind: Kind::Rcpt,
    code: 452,
    status: st(4, 5, 3),
};
const TOO_BIG_MAIL: Expect = Expect {
    kind: Kind::Mail,
    code: 552,
    status: st(5, 3, 4),
};
const TOO_BIG: Expect = Expect {
    kind: Kind::Message,
    code: 552,
    status: st(5, 3, 4),
};
const TIMEOUT: Expect = Expect {
    kind: Kind::Timeout,
    code: 421,
    status: st(4, 4, 2),
};

/// Longest command line the server accepts, CR LF included.
const MAX_COMMAND_LINE: usize = 512;

/// Builds exchanges: commands accumulate in the current group until one that must end it (or
/// every command, without pipelining).
struct Builder {
    done: Vec<Exchange>,
    current: Exchange,
    pipelining: bool,
    messages: u32,
}

impl Builder {
    fn bytes(&mut self, bytes: &[u8], expect: Expect, ends_group: bool) {
        self.current.send.extend_from_slice(bytes);
        self.current.expect.push(expect);
        if !self.pipelining || ends_group {
            self.flush();
        }
    }

    fn cmd(&mut self, line: &str, expect: Expect, ends_group: bool) {
        let mut b = Vec::with_capacity(line.len() + 2);
        b.extend_from_slice(line.as_bytes());
        b.extend_from_slice(b"\r\n");
        self.bytes(&b, expect, ends_group);
    }

    fn flush(&mut self) {
        if !self.current.expect.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
        }
    }

    /// Silence (after sending `partial`, which draws no reply) until the server's timeout.
    fn silent(&mut self, partial: Vec<u8>, timeout: Duration) {
        self.flush();
        self.done.push(Exchange {
            send: partial,
            expect: vec![TIMEOUT],
            silent: Some(timeout),
        });
    }
}

/// Everything one session needs to remember while it is generated.
struct Gen<'a> {
    rng: &'a mut Rng,
    limits: &'a Limits,
    b: Builder,
    ehlo: bool,
    error: Option<ErrorClass>,
    /// Which transaction carries the error.
    error_txn: usize,
    /// The session ended (silent class).
    over: bool,
}

/// Generates one session. `error_rate` is the probability that it provokes an error.
pub fn generate(rng: &mut Rng, error_rate: f64, limits: &Limits) -> Script {
    let ehlo = rng.chance(0.85);
    let pipelining = ehlo && rng.chance(0.5);
    let error = if rng.chance(error_rate) {
        let classes: Vec<ErrorClass> = ErrorClass::ALL
            .into_iter()
            .filter(|c| *c != ErrorClass::Silent || limits.silent_timeout.is_some())
            .collect();
        Some(*rng.pick(&classes))
    } else {
        None
    };
    let txns = match rng.below(100) {
        0..60 => 1,
        60..85 => 2,
        _ => rng.range(3, 5),
    };
    let error_txn = rng.below(txns as u64) as usize;
    let mut g = Gen {
        rng,
        limits,
        b: Builder {
            done: Vec::new(),
            current: Exchange::default(),
            pipelining,
            messages: 0,
        },
        ehlo,
        error,
        error_txn,
        over: false,
    };
    g.session(txns);
    let end = if g.over {
        End::ServerCloses
    } else if g.rng.chance(0.85) {
        let quit = g.verb("QUIT");
        g.b.cmd(&quit, BYE, true);
        End::ServerCloses
    } else {
        End::ClientCloses
    };
    g.b.flush();
    Script {
        exchanges: g.b.done,
        end,
        error,
        pipelining,
        messages: g.b.messages,
    }
}

impl Gen<'_> {
    fn session(&mut self, txns: usize) {
        self.b.done.push(Exchange {
            send: Vec::new(),
            expect: vec![GREETING],
            silent: None,
        });
        if self.error == Some(ErrorClass::Silent) && self.rng.chance(0.2) {
            return self.go_silent(Vec::new());
        }
        if self.error == Some(ErrorClass::WrongOrder) && self.rng.chance(0.3) {
            // MAIL before HELO/EHLO.
            let line = format!("MAIL FROM:<{}>", self.address());
            self.b.cmd(&line, NEED_HELO, true);
            self.error = None;
            self.error_txn = usize::MAX;
        }
        let host = self.hostname();
        if self.ehlo {
            let line = format!("{} {host}", self.verb("EHLO"));
            self.b.cmd(&line, EHLO_OK, true);
        } else {
            let line = format!("{} {host}", self.verb("HELO"));
            self.b.cmd(&line, HELO_OK, true);
        }
        for t in 0..txns {
            if t > 0 {
                match self.rng.below(10) {
                    0 => {
                        let line = self.verb("RSET");
                        self.b.cmd(&line, RSET_OK, false);
                    }
                    1 => {
                        let line = self.verb("NOOP");
                        self.b.cmd(&line, NOOP_OK, true);
                    }
                    _ => {}
                }
            }
            let error = if t == self.error_txn {
                self.error
            } else {
                None
            };
            self.transaction(error);
            if self.over {
                return;
            }
        }
    }

    fn go_silent(&mut self, partial: Vec<u8>) {
        if let Some(t) = self.limits.silent_timeout {
            self.b.silent(partial, t);
            self.over = true;
        }
    }

    /// One MAIL..DATA transaction, carrying `error` if given.
    fn transaction(&mut self, error: Option<ErrorClass>) {
        use ErrorClass as E;
        // Where the error goes: 0 before MAIL, 1 after MAIL, 2 after the first RCPT, 3 (silence
        // only) in the middle of the message.
        let at = self.rng.below(if error == Some(E::Silent) { 4 } else { 3 });
        if self.rng.chance(0.05) && error.is_none() {
            // A transaction abandoned with RSET.
            let line = format!("MAIL FROM:<{}>", self.address());
            self.b.cmd(&line, MAIL_OK, false);
            let line = format!("RCPT TO:<{}>", self.address());
            self.b.cmd(&line, RCPT_OK, false);
            let line = self.verb("RSET");
            self.b.cmd(&line, RSET_OK, false);
            return;
        }
        if self.rng.chance(0.02) {
            // A NOOP of exactly the longest allowed line: accepted.
            let pad = "x".repeat(MAX_COMMAND_LINE - "NOOP \r\n".len());
            self.b.cmd(&format!("NOOP {pad}"), NOOP_OK, true);
        }
        let (body, eight_bit, content) = match error {
            Some(E::Oversize) if !self.ehlo || self.rng.chance(0.7) => {
                let over = self.limits.max_size + 1 + self.rng.below(4096);
                let (b, c) = oversize_body(self.rng, over);
                (b, false, c)
            }
            _ => {
                let target = self.body_size();
                message(self.rng, target)
            }
        };
        let utf8 = self.ehlo && self.rng.chance(0.05);
        let from = if self.rng.chance(0.08) {
            String::new()
        } else if utf8 {
            self.utf8_address()
        } else {
            self.address()
        };
        if error.is_some() && at == 0 {
            self.provoke(error, 0);
            if self.over {
                return;
            }
        }
        if error == Some(E::Oversize) && self.ehlo && body.len() as u64 <= self.limits.max_size {
            // Declared too big at MAIL.
            let line = format!("MAIL FROM:<{}> SIZE={}", from, self.limits.max_size + 1);
            self.b.cmd(&line, TOO_BIG_MAIL, false);
        }
        let mut params = String::new();
        if self.ehlo {
            if self.rng.chance(0.3) && content <= self.limits.max_size {
                params.push_str(&format!(" SIZE={content}"));
            }
            if eight_bit && self.rng.chance(0.7) {
                params.push_str(" BODY=8BITMIME");
            }
            if utf8 {
                params.push_str(" SMTPUTF8");
            }
        }
        let mail = if self.rng.chance(0.1) {
            "mail from:"
        } else {
            "MAIL FROM:"
        };
        self.b
            .cmd(&format!("{mail}<{from}>{params}"), MAIL_OK, false);
        if error.is_some() && at == 1 {
            self.provoke(error, 1);
            if self.over {
                return;
            }
        }
        let nrcpt = match error {
            Some(E::TooManyRecipients) => self.limits.max_recipients + self.rng.range(1, 3),
            _ => match self.rng.below(100) {
                0..70 => 1,
                70..95 => self.rng.range(2, 5),
                _ => self.rng.range(6, 30),
            }
            .min(self.limits.max_recipients),
        };
        for i in 0..nrcpt {
            let to = if utf8 && self.rng.chance(0.5) {
                self.utf8_address()
            } else if self.rng.chance(0.02) {
                "postmaster".to_owned()
            } else {
                self.address()
            };
            let rcpt = if self.rng.chance(0.1) {
                "rcpt to:"
            } else {
                "RCPT TO:"
            };
            let expect = if i < self.limits.max_recipients {
                RCPT_OK
            } else {
                TOO_MANY
            };
            self.b.cmd(&format!("{rcpt}<{to}>"), expect, false);
            if i == 0 && error.is_some() && at == 2 {
                self.provoke(error, 2);
                if self.over {
                    return;
                }
            }
        }
        let line = self.verb("DATA");
        self.b.cmd(&line, DATA_OK, true);
        if error == Some(E::Silent) && at == 3 {
            // Part of the message, then silence.
            // Never the final ".\r\n": that would end the message.
            let cut = (body.len() - 3).min(self.rng.range(0, 300));
            let cut = body[..cut]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            return self.go_silent(body[..cut].to_vec());
        }
        let too_big = content > self.limits.max_size;
        if !too_big {
            self.b.messages += 1;
        }
        self.b
            .bytes(&body, if too_big { TOO_BIG } else { QUEUED }, false);
    }

    /// Adds the commands of `error` at stage `at` (0 before MAIL, 1 after MAIL, 2 after a
    /// RCPT). Each leaves the transaction state unchanged, except the silent class.
    fn provoke(&mut self, error: Option<ErrorClass>, at: u64) {
        use ErrorClass as E;
        let Some(error) = error else { return };
        match error {
            E::UnknownCommand => {
                let verb = *self.rng.pick(&[
                    "XYZZY",
                    "FROB now",
                    "MAILFROM:<a@b.example>",
                    "HELLO x",
                    "QUITT",
                ]);
                self.b.cmd(verb, UNKNOWN, false);
            }
            E::BadSyntax => {
                let (line, expect) = *self.rng.pick(&[
                    ("MAIL FROM:", SYNTAX),
                    ("MAIL TO:<a@b.example>", SYNTAX),
                    ("RCPT FROM:<a@b.example>", SYNTAX),
                    ("RCPT", SYNTAX),
                    ("HELO", SYNTAX),
                    ("EHLO", SYNTAX),
                    ("DATA now", SYNTAX),
                    ("RSET all", SYNTAX),
                    ("QUIT now", SYNTAX),
                    ("VRFY", SYNTAX),
                    ("MAIL FROM:<a@b.example> SIZE=big", SYNTAX),
                    ("MAIL FROM:<a@b.example> BODY=BINARYMIME", BAD_PARAM),
                    ("MAIL FROM:<a@b.example>SIZE=1", SYNTAX),
                    ("MAIL FROM:<a@b.example> FOO=1", BAD_PARAM),
                    ("RCPT TO:<a@b.example> NOTIFY=NEVER,SUCCESS", SYNTAX),
                    ("RCPT TO:<a@b.example> XFOO=1", BAD_PARAM),
                ]);
                self.b.cmd(line, expect, false);
            }
            E::WrongOrder => match at {
                0 => {
                    let line = format!("RCPT TO:<{}>", self.address());
                    self.b.cmd(&line, NEED_MAIL, false);
                }
                1 => self.b.cmd("DATA", NEED_RCPT, true),
                _ => {
                    let line = format!("MAIL FROM:<{}>", self.address());
                    self.b.cmd(&line, NESTED, false);
                }
            },
            E::AddressWhitespace => {
                let bad = *self.rng.pick(&[
                    "a b@c.example",
                    "a@b .example",
                    "a\tb@c.example",
                    " x@y.example",
                ]);
                if at == 0 {
                    self.b.cmd(&format!("MAIL FROM:<{bad}>"), BAD_SENDER, false);
                } else {
                    self.b.cmd(&format!("RCPT TO:<{bad}>"), BAD_RCPT, false);
                }
            }
            E::DuplicateMail => {
                if at == 0 {
                    // Needs a transaction: do it after MAIL instead.
                    return self.duplicate_in_own_transaction();
                }
                let line = format!("MAIL FROM:<{}>", self.address());
                self.b.cmd(&line, NESTED, false);
            }
            E::OverlongLine => {
                let len = match self.rng.below(4) {
                    0 => MAX_COMMAND_LINE + 1,
                    1 => self.rng.range(MAX_COMMAND_LINE + 2, 2_000),
                    2 => self.rng.range(2_000, 20_000),
                    _ => self.rng.range(MAX_COMMAND_LINE + 1, 1_000),
                };
                let head = *self.rng.pick(&["NOOP ", "RCPT TO:<", "MAIL FROM:<"]);
                let mut line = String::from(head);
                while line.len() + 2 < len {
                    line.push(char::from(b'a' + self.rng.below(26) as u8));
                }
                self.b.cmd(&line, UNKNOWN, false);
            }
            E::Silent => {
                self.go_silent(Vec::new());
            }
            // Handled where recipients and bodies are made.
            E::TooManyRecipients | E::Oversize => {}
        }
    }

    /// Duplicate MAIL before this transaction's MAIL: in a transaction of its own, ended by
    /// RSET so the planned transaction still starts from idle.
    fn duplicate_in_own_transaction(&mut self) {
        let line = format!("MAIL FROM:<{}>", self.address());
        self.b.cmd(&line, MAIL_OK, false);
        self.b.cmd(&line, NESTED, false);
        self.b.cmd("RSET", RSET_OK, false);
    }

    fn verb(&mut self, v: &str) -> String {
        if self.rng.chance(0.1) {
            v.to_ascii_lowercase()
        } else {
            v.to_owned()
        }
    }

    fn body_size(&mut self) -> usize {
        let cap = (self.limits.max_size / 2).min(usize::MAX as u64) as usize;
        let n = match self.rng.below(100) {
            0..70 => self.rng.range(100, 2_048),
            70..95 => self.rng.range(2_048, 32 * 1024),
            _ => self.rng.range(32 * 1024, 256 * 1024),
        };
        n.min(cap)
    }

    fn label(&mut self, min: usize, max: usize) -> String {
        let n = self.rng.range(min, max);
        (0..n)
            .map(|_| char::from(*self.rng.pick(b"abcdefghijklmnopqrstuvwxyz0123456789")))
            .collect()
    }

    fn domain(&mut self) -> String {
        let tld = *self
            .rng
            .pick(&["example", "test", "example.com", "example.net", "invalid"]);
        format!("{}.{tld}", self.label(1, 12))
    }

    fn hostname(&mut self) -> String {
        if self.rng.chance(0.1) {
            format!("[127.0.0.{}]", self.rng.range(1, 254))
        } else {
            format!("{}.{}", self.label(2, 10), self.domain())
        }
    }

    fn address(&mut self) -> String {
        let mut local = self.label(1, 10);
        match self.rng.below(10) {
            0 => local.push_str(&format!(".{}", self.label(1, 8))),
            1 => local.push_str(&format!("+{}", self.label(1, 6))),
            2 => local = format!("{}_{}-x", local, self.label(1, 4)),
            _ => {}
        }
        format!("{local}@{}", self.domain())
    }

    fn utf8_address(&mut self) -> String {
        let local = *self
            .rng
            .pick(&["josé", "müller", "用户", "δοκιμή", "ñandú"]);
        let domain = *self
            .rng
            .pick(&["exämple.test", "example.test", "bücher.example"]);
        format!("{local}{}@{domain}", self.rng.below(1000))
    }
}

/// A message of about `target` octets of content: headers, then lines of every sort a real
/// mailer sends (leading dots, long lines, 8-bit text, empty lines). Returns the dot-stuffed
/// wire form ending with `.` CR LF, whether it holds 8-bit octets, and the content size.
pub fn message(rng: &mut Rng, target: usize) -> (Vec<u8>, bool, u64) {
    let mut wire = Vec::with_capacity(target + target / 16 + 64);
    let mut content = 0u64;
    let mut eight_bit = false;
    let id = rng.next_u64();
    let headers = [
        format!("Message-ID: <{id:016x}@smtp-stress.test>"),
        "From: Stress <stress@smtp-stress.test>".to_owned(),
        "To: undisclosed-recipients:;".to_owned(),
        format!("Subject: stress {id:x}"),
        "MIME-Version: 1.0".to_owned(),
        String::new(),
    ];
    for h in headers {
        push_line(&mut wire, &mut content, h.as_bytes());
    }
    let mut line = Vec::new();
    while (content as usize) < target {
        line.clear();
        match rng.below(100) {
            0..60 => words(rng, &mut line, 10, 78),
            60..68 => {}
            68..76 => {
                let dots: &[u8] =
                    rng.pick::<&[u8]>(&[&b"."[..], b"..", b"...", b". leading dot", b".\t", b".."]);
                line.extend_from_slice(dots);
            }
            76..81 => {
                let n = rng.range(999, 4_000);
                words(rng, &mut line, n, n);
            }
            81..89 => {
                eight_bit = true;
                if rng.chance(0.5) {
                    line.extend_from_slice("Grüße aus Köln — ½ € naïve café ✓".as_bytes());
                } else {
                    for _ in 0..rng.range(1, 60) {
                        line.push(0x80 + rng.below(0x80) as u8);
                    }
                }
            }
            89..94 => line.extend_from_slice(b"\t indented\twith tabs  and trailing spaces  "),
            _ => {
                let s: &[u8] = rng.pick::<&[u8]>(&[
                    &b"From the start"[..],
                    b"-- ",
                    b"> quoted",
                    b"=2E encoded dot",
                ]);
                line.extend_from_slice(s);
            }
        }
        push_line(&mut wire, &mut content, &line);
    }
    wire.extend_from_slice(b".\r\n");
    (wire, eight_bit, content)
}

/// A body of at least `min_content` octets of content, made cheaply of repeated lines.
fn oversize_body(rng: &mut Rng, min_content: u64) -> (Vec<u8>, u64) {
    let mut line = Vec::new();
    words(rng, &mut line, 900, 1_000);
    let mut wire = Vec::with_capacity(min_content as usize + min_content as usize / 64 + 8);
    let mut content = 0;
    while content <= min_content {
        push_line(&mut wire, &mut content, &line);
        push_line(&mut wire, &mut content, b".dotted");
    }
    wire.extend_from_slice(b".\r\n");
    (wire, content)
}

fn push_line(wire: &mut Vec<u8>, content: &mut u64, line: &[u8]) {
    if line.first() == Some(&b'.') {
        wire.push(b'.');
    }
    wire.extend_from_slice(line);
    wire.extend_from_slice(b"\r\n");
    *content += line.len() as u64 + 2;
}

fn words(rng: &mut Rng, line: &mut Vec<u8>, min: usize, max: usize) {
    const WORDS: &[&str] = &[
        "mail",
        "relay",
        "queue",
        "the",
        "of",
        "delivery",
        "smtp",
        "message",
        "durable",
        "fsync",
        "rename",
        "pipeline",
        "a",
        "to",
        "and",
        "recipient",
        "sender",
        "body",
    ];
    let n = rng.range(min, max);
    while line.len() < n {
        if !line.is_empty() {
            line.push(b' ');
        }
        line.extend_from_slice(rng.pick(WORDS).as_bytes());
    }
    line.truncate(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(silent: bool) -> Limits {
        Limits {
            max_recipients: 10,
            max_size: 100_000,
            silent_timeout: silent.then(|| Duration::from_secs(2)),
        }
    }

    /// Reverses dot-stuffing; returns the content and checks the end marker appears only last.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        assert!(wire.ends_with(b"\r\n.\r\n") || wire == b".\r\n");
        let body = &wire[..wire.len() - 3];
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            assert!(line.ends_with(b"\r\n"), "line without CRLF: {line:?}");
            assert_ne!(line, b".\r\n", "end marker inside the message");
            assert!(!line[..line.len() - 2].contains(&b'\r'));
            assert!(!line[..line.len() - 2].contains(&b'\n'));
            let l = if line.first() == Some(&b'.') {
                assert_eq!(line.get(1), Some(&b'.'), "unstuffed leading dot");
                &line[1..]
            } else {
                line
            };
            out.extend_from_slice(l);
        }
        out
    }

    #[test]
    fn messages_are_dot_stuffed_and_sized() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let target = rng.range(0, 20_000);
            let (wire, _, content) = message(&mut rng, target);
            let plain = unstuff(&wire);
            assert_eq!(plain.len() as u64, content);
            assert!(content as usize >= target);
        }
        let (wire, content) = oversize_body(&mut Rng::new(1), 50_000);
        assert!(content > 50_000);
        assert_eq!(unstuff(&wire).len() as u64, content);
    }

    #[test]
    fn scripts_are_deterministic() {
        let l = limits(true);
        let a = generate(&mut Rng::for_session(9, 4), 0.5, &l);
        let b = generate(&mut Rng::for_session(9, 4), 0.5, &l);
        assert_eq!(a.exchanges.len(), b.exchanges.len());
        for (x, y) in a.exchanges.iter().zip(&b.exchanges) {
            assert_eq!(x.send, y.send);
            assert_eq!(x.expect, y.expect);
        }
    }

    #[test]
    fn script_invariants() {
        let l = limits(true);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..3_000 {
            let s = generate(&mut Rng::new(seed), 0.5, &l);
            assert_eq!(s.exchanges[0].expect, [GREETING]);
            assert!(s.exchanges[0].send.is_empty());
            let mut errors = 0;
            let mut queued = 0;
            for (i, x) in s.exchanges.iter().enumerate() {
                assert!(!x.expect.is_empty());
                assert!(i == 0 || !x.send.is_empty() || x.silent.is_some());
                errors += x.expect.iter().filter(|e| e.code >= 400).count();
                queued += x.expect.iter().filter(|e| **e == QUEUED).count();
                if x.silent.is_some() {
                    let ends_data = x.send.starts_with(b".\r\n")
                        || x.send.windows(5).any(|w| w == b"\r\n.\r\n");
                    assert!(!ends_data, "seed {seed}: silence after the end of data");
                    assert_eq!(i, s.exchanges.len() - 1, "silence ends the session");
                    assert_eq!(s.end, End::ServerCloses);
                }
                if !s.pipelining {
                    assert_eq!(x.expect.len(), 1);
                }
            }
            assert_eq!(queued as u32, s.messages);
            assert!(errors < 20, "the server closes after 20 errors");
            match s.error {
                None => assert_eq!(errors, 0, "seed {seed}"),
                Some(c) => {
                    assert!(errors >= 1, "seed {seed}: {c:?} provoked nothing");
                    seen.insert(c);
                }
            }
        }
        assert_eq!(seen.len(), ErrorClass::ALL.len());
    }

    #[test]
    fn no_silence_without_a_known_timeout() {
        let l = limits(false);
        for seed in 0..1_000 {
            let s = generate(&mut Rng::new(seed), 1.0, &l);
            assert_ne!(s.error, Some(ErrorClass::Silent));
            assert!(s.exchanges.iter().all(|x| x.silent.is_none()));
        }
    }

    #[test]
    fn error_free_sessions_expect_success() {
        let l = limits(true);
        for seed in 0..500 {
            let s = generate(&mut Rng::new(seed), 0.0, &l);
            assert!(s.error.is_none());
            for x in &s.exchanges {
                assert!(x.expect.iter().all(|e| e.code < 400));
            }
        }
    }
}
