//! smtpd: parse the command line, open the Maildir, bind, run the reactor.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use maildir_core::{Durability, Maildir};
use smtpd::config::Args;
use smtpd::reactor::{Server, ServerConfig};
use smtpd::session::SessionConfig;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "hash-password")
    {
        return smtpd::password::hash_password_command();
    }
    let args = Args::parse();
    let log = maildir_core::logging::init("info");
    let code = match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, not also through the logger.
            eprintln!("smtpd: {e}");
            ExitCode::FAILURE
        }
    };
    drop(log);
    code
}

fn run(args: &Args) -> Result<(), String> {
    let open_files = raise_open_files_limit();
    let maildir = Maildir::open(&args.maildir).map_err(|e| e.to_string())?;
    let hostname = args
        .hostname
        .clone()
        .or_else(maildir_core::maildir::system_hostname)
        .unwrap_or_else(|| "localhost".to_owned());
    // Keep descriptors for listeners, queue files being written and logging; a queue file
    // that cannot be opened is answered 451, not a crash.
    let fd_budget = open_files.map_or(usize::MAX, |n| (n as usize).saturating_sub(256));
    let max_connections = match args.max_connections {
        Some(n) if n > fd_budget => {
            log::warn!(
                "--max-connections lowered from {n} to {fd_budget} to fit the open-files limit"
            );
            fd_budget.max(1)
        }
        Some(n) => n,
        None => fd_budget.max(1),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(smtpd::tls::load(cert, key)?),
        _ => None,
    };
    let durability = if args.no_fsync {
        log::warn!("--no-fsync: accepted mail is not flushed to disk before 250 (benchmarks only)");
        Durability::NoFsync
    } else {
        Durability::Fsync
    };
    let config = ServerConfig {
        session: Arc::new(SessionConfig {
            hostname,
            max_size: args.max_size,
            max_recipients: args.max_recipients,
            timeout: args.timeout(),
            max_errors: 20,
            starttls: tls.is_some(),
            max_hops: args.max_hops,
            postmaster: args.postmaster.clone(),
        }),
        trusted: args.trusted_networks(),
        max_connections,
        max_per_ip: args.max_per_ip,
        durability,
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
        tls,
    };
    let server =
        Server::bind(&args.listen, &args.tls_listen, maildir, config).map_err(|e| e.to_string())?;
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    log::info!(
        "listening on {}, Maildir {}",
        addrs.join(" "),
        args.maildir.display()
    );
    server.run().map_err(|e| format!("event loop failed: {e}"))
}

/// Raises the soft open-files limit to the hard limit; returns the limit in force.
fn raise_open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}
