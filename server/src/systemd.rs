//! smtpd under systemd: listening sockets handed over by socket activation (`LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`, through the `sd-notify` crate) and the readiness protocol
//! (`READY=1` once serving, `STOPPING=1` on a stop signal, to `NOTIFY_SOCKET`). Without those
//! variables both do nothing.
//!
//! Which inherited socket is which comes from its name (`FileDescriptorName=` in the
//! `.socket` units), the names of [`crate::listeners::Service`]: `smtp`, `smtps`,
//! `submission` (MAIL needs AUTH), `submissions`, `pop3`, `pop3s`; sockets without names
//! (`unknown`, as systemd calls them) are SMTP. Any other name is an error, never a guess.
//! With inherited sockets, no listen option (`--listen`, `--pop3-listen`, ...) is bound.
//!
//! Owns: taking and checking the inherited sockets, and the notifications.
//! Must not: bind, or decide anything about sessions.

use std::os::fd::{FromRawFd, RawFd};

use mio::net::TcpListener;

use crate::listeners::{Listener, Service};

/// The listening sockets systemd handed over (empty when not socket-activated), each with
/// the service its name stands for ([`Service::from_name`]). Each must be a listening TCP
/// socket.
pub fn listeners() -> Result<Vec<Listener>, String> {
    let fds = sd_notify::listen_fds_with_names().map_err(|e| format!("socket activation: {e}"))?;
    let mut out = Vec::new();
    for (fd, name) in fds {
        let service = Service::from_name(&name)?;
        let socket =
            take_listener(fd).map_err(|e| format!("inherited socket {fd} ({name}): {e}"))?;
        out.push(Listener { socket, service });
    }
    Ok(out)
}

/// Takes ownership of `fd` as a non-blocking TCP listener, after checking it is one.
fn take_listener(fd: RawFd) -> Result<TcpListener, String> {
    let int_opt = |opt: libc::c_int| -> Result<libc::c_int, String> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(format!("not a socket: {}", std::io::Error::last_os_error()));
        }
        Ok(v)
    };
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not a stream socket (ListenStream= is needed)".into());
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err("not listening".into());
    }
    let domain = int_opt(libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err("not a TCP/IP socket".into());
    }
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID), it is taken once.
    let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    l.set_nonblocking(true)
        .map_err(|e| format!("cannot make it non-blocking: {e}"))?;
    Ok(TcpListener::from_std(l))
}

/// Tells systemd that smtpd serves (`Type=notify`).
pub fn ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells systemd that smtpd is stopping (sessions get `--shutdown-timeout` to finish).
pub fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_listening_socket_is_refused() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        use std::os::fd::IntoRawFd;
        let fd = s.into_raw_fd();
        assert!(take_listener(fd).unwrap_err().contains("stream"));
        // SAFETY: closing the descriptor taken above, once.
        unsafe { libc::close(fd) };
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        let fd = l.into_raw_fd();
        let taken = take_listener(fd).expect("a listening TCP socket");
        assert!(taken.local_addr().is_ok());
    }
}
