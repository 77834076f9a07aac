//! The listening sockets smtpd serves and what each one serves: SMTP (port 25 style), SMTP
//! over implicit TLS (465), submission (587, MAIL needs AUTH first), submission over implicit
//! TLS, POP3 (110) and POP3 over implicit TLS (995).
//!
//! Every socket is bound here, from the options, before root is given up (`--user`), or taken
//! from systemd under the same names (`FileDescriptorName=`), so that a privileged port works
//! for every service alike.
//!
//! Owns: the kinds of listener, their systemd names, binding them. Must not: accept or serve
//! connections (the reactor and `crate::pop3` do).

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;

/// Pending connections the kernel may queue before they are accepted.
const LISTEN_BACKLOG: i32 = 4096;

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// SMTP, STARTTLS offered with a certificate (`--listen`, socket `smtp`).
    Smtp,
    /// SMTP over implicit TLS (`--tls-listen`, socket `smtps`).
    Smtps,
    /// Message submission (RFC 6409): MAIL needs AUTH first (`--submission-listen`, socket
    /// `submission`).
    Submission,
    /// Submission over implicit TLS (RFC 8314; socket `submissions`).
    Submissions,
    /// POP3, STLS offered with a certificate (`--pop3-listen`, socket `pop3`).
    Pop3,
    /// POP3 over implicit TLS (`--pop3s-listen`, socket `pop3s`).
    Pop3s,
}

impl Service {
    /// Every service, in the order they are listed.
    pub const ALL: [Service; 6] = [
        Service::Smtp,
        Service::Smtps,
        Service::Submission,
        Service::Submissions,
        Service::Pop3,
        Service::Pop3s,
    ];

    /// The name: what systemd's `FileDescriptorName=` says, and what log lines show.
    pub fn name(self) -> &'static str {
        match self {
            Service::Smtp => "smtp",
            Service::Smtps => "smtps",
            Service::Submission => "submission",
            Service::Submissions => "submissions",
            Service::Pop3 => "pop3",
            Service::Pop3s => "pop3s",
        }
    }

    /// The service a systemd socket's name stands for; `unknown` and the empty name (a
    /// socket without `FileDescriptorName=`) are SMTP.
    pub fn from_name(name: &str) -> Result<Service, String> {
        if name.is_empty() || name == "unknown" {
            return Ok(Service::Smtp);
        }
        Service::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "inherited socket named '{name}': expected one of {}",
                    names.join(", ")
                )
            })
    }

    /// True when TLS starts as soon as the connection does.
    pub fn implicit_tls(self) -> bool {
        matches!(self, Service::Smtps | Service::Submissions | Service::Pop3s)
    }

    /// True for submission: MAIL needs AUTH first.
    pub fn submission(self) -> bool {
        matches!(self, Service::Submission | Service::Submissions)
    }

    /// True for POP3.
    pub fn pop3(self) -> bool {
        matches!(self, Service::Pop3 | Service::Pop3s)
    }
}

/// A bound listening socket and what it serves.
#[derive(Debug)]
pub struct Listener {
    /// The socket, non-blocking.
    pub socket: TcpListener,
    /// What it serves.
    pub service: Service,
}

/// Binds every address in `plan` (an error names the address and the service).
pub fn bind(plan: &[(SocketAddr, Service)]) -> io::Result<Vec<Listener>> {
    plan.iter()
        .map(|&(addr, service)| {
            let socket = net::listen(addr, LISTEN_BACKLOG).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} ({}): {e}", service.name()),
                )
            })?;
            Ok(Listener { socket, service })
        })
        .collect()
}

/// Checks that the services of inherited sockets can be served with this configuration:
/// implicit TLS needs a certificate, submission needs accounts, POP3 needs local domains.
pub fn check_servable(
    services: impl IntoIterator<Item = Service>,
    tls: bool,
    accounts: bool,
    pop3: bool,
) -> Result<(), String> {
    for s in services {
        if s.implicit_tls() && !tls {
            return Err(format!(
                "an inherited {} socket needs --tls-cert and --tls-key",
                s.name()
            ));
        }
        if s.submission() && !accounts {
            return Err(format!(
                "an inherited {} socket needs accounts to log in with (--users or --ldap-url)",
                s.name()
            ));
        }
        if s.pop3() && !pop3 {
            return Err(format!(
                "an inherited {} socket needs local delivery (--local-domain, --mailboxes, \
                 --users)",
                s.name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused_by_name() {
        for s in Service::ALL {
            assert_eq!(Service::from_name(s.name()), Ok(s));
        }
        assert_eq!(Service::from_name(""), Ok(Service::Smtp));
        assert_eq!(Service::from_name("unknown"), Ok(Service::Smtp));
        let e = Service::from_name("imap").unwrap_err();
        assert!(e.contains("'imap'") && e.contains("pop3s"), "{e}");
    }

    #[test]
    fn what_each_service_is() {
        let tls: Vec<_> = Service::ALL
            .into_iter()
            .filter(|s| s.implicit_tls())
            .collect();
        assert_eq!(tls, [Service::Smtps, Service::Submissions, Service::Pop3s]);
        let sub: Vec<_> = Service::ALL
            .into_iter()
            .filter(|s| s.submission())
            .collect();
        assert_eq!(sub, [Service::Submission, Service::Submissions]);
        let pop: Vec<_> = Service::ALL.into_iter().filter(|s| s.pop3()).collect();
        assert_eq!(pop, [Service::Pop3, Service::Pop3s]);
    }

    #[test]
    fn inherited_sockets_need_what_they_serve() {
        assert!(check_servable([Service::Smtp], false, false, false).is_ok());
        let e = check_servable([Service::Submissions], false, true, false).unwrap_err();
        assert!(e.contains("--tls-cert"), "{e}");
        let e = check_servable([Service::Submission], false, false, false).unwrap_err();
        assert!(e.contains("--users or --ldap-url"), "{e}");
        let e = check_servable([Service::Pop3], true, true, false).unwrap_err();
        assert!(e.contains("--local-domain"), "{e}");
        assert!(check_servable(Service::ALL, true, true, true).is_ok());
    }

    #[test]
    fn bind_names_the_address_and_service_on_failure() {
        let first = bind(&[("127.0.0.1:0".parse().unwrap(), Service::Pop3)]).unwrap();
        let taken = first[0].socket.local_addr().unwrap();
        let e = bind(&[(taken, Service::Submission)]).unwrap_err();
        assert!(
            e.to_string().contains(&format!("{taken} (submission)")),
            "{e}"
        );
    }
}
