//! smtpd: parse and validate the command line ([`smtpd::config`]), load the accounts
//! ([`smtpd::accounts`]), open the Maildirs, load the certificate, bind, run the reactor.
//! Settings are assembled in `config`, not here. `smtpd hash-password` is the one subcommand.

use std::process::ExitCode;

use std::sync::Arc;

use clap::Parser;
use maildir_core::local::Mailboxes;
use maildir_core::{Durability, Maildir};
use proto::smtp::server::policy::{LocalPolicy, QuotaView};
use smtpd::config::{Args, Cmd};
use smtpd::reactor::Server;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.command == Some(Cmd::HashPassword) {
        return smtpd::password::hash_password_command();
    }
    let log = maildir_core::logging::init("info");
    let code = match run(args) {
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

fn run(args: Args) -> Result<(), String> {
    let mut config = args.validate()?;
    // Every file is read before anything is created: a bad one is one line and exit 1.
    let directory = match &config.local {
        Some(local) => Some(smtpd::accounts::load(&local.accounts)?),
        None => None,
    };
    let open_files = raise_open_files_limit();
    let maildir = Maildir::open(&config.maildir).map_err(|e| e.to_string())?;
    let mut mailboxes = None;
    if let (Some(local), Some(directory)) = (&config.local, directory) {
        let m = Arc::new(Mailboxes::open(&local.mailboxes).map_err(|e| e.to_string())?);
        let quota = match local.quota {
            Some(limit) => {
                let users = directory.users().iter().map(|u| u.name.as_str());
                let q = smtpd::quota::Quota::start(Arc::clone(&m), limit, users)?;
                Some(q as Arc<dyn QuotaView>)
            }
            None => None,
        };
        // A message for local users only is spooled as the first user's copy and renamed
        // into that Maildir, which needs one file system for the queue and the mailboxes.
        let spool_is_copy = same_device(maildir.root(), m.root());
        log::info!(
            "local delivery for {} to {} ({} users, {} aliases)",
            directory.domains().join(" "),
            local.mailboxes.display(),
            directory.users().len(),
            directory.aliases().len()
        );
        config.session.local = Some(LocalPolicy {
            directory: Arc::new(directory),
            quota,
            spool_is_copy,
        });
        mailboxes = Some(m);
    }
    let max_connections = config.max_connections(open_files);
    let tls = match &config.tls {
        Some(files) => Some(smtpd::tls::load(&files.cert, &files.key)?),
        None => None,
    };
    if config.durability == Durability::NoFsync {
        log::warn!("--no-fsync: accepted mail is not flushed to disk before 250 (benchmarks only)");
    }
    let mut server_config = config.server_config(max_connections, tls, mailboxes);
    server_config.auth = smtpd::auth::settings::login_service(&config);
    let server = Server::bind(&config.listen, &config.tls_listen, maildir, server_config)
        .map_err(|e| e.to_string())?;
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    log::info!(
        "listening on {}, Maildir {}",
        addrs.join(" "),
        config.maildir.display()
    );
    server.run().map_err(|e| format!("event loop failed: {e}"))
}

/// True when both directories are on one file system (a rename moves a file between them).
fn same_device(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
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
