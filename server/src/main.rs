//! smtpd: parse and validate the command line and its `--config` file, load the accounts and
//! the certificate ([`smtpd::load`]), bind (or take systemd's sockets), drop root (`--user`),
//! open the Maildirs, run the reactor (which reloads on SIGHUP from the same command line),
//! telling systemd it is ready. `--check-config` stops after loading.
//! Settings are assembled in `config`, not here. `smtpd hash-password` is the one subcommand.

use std::process::ExitCode;

use std::sync::Arc;

use std::ffi::OsString;

use maildir_core::local::Mailboxes;
use maildir_core::{Durability, Maildir};
use smtpd::config::{Args, Cmd};
use smtpd::reactor::{ReloadSource, Server};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let loaded = match smtpd::load::args(&argv) {
        Ok(l) => l,
        Err(config_file::Error::Cli(e)) => e.exit(),
        Err(config_file::Error::File(e)) => {
            eprintln!("smtpd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if loaded.args.command == Some(Cmd::HashPassword) {
        return smtpd::password::hash_password_command();
    }
    if let Some(show) = loaded.args.check_config {
        return match smtpd::load::complete(loaded) {
            Ok(l) => {
                print!("{}", smtpd::load::render(&l, show));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("smtpd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(format) = &loaded.args.log_format {
        maildir_core::logging::choose_journal_format(format == "journal");
    }
    let log = maildir_core::logging::init("info");
    let code = match run(loaded, argv) {
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

fn run(loaded: config_file::Loaded<Args>, argv: Vec<OsString>) -> Result<(), String> {
    // Every file is read before anything is created: a bad one is one line and exit 1.
    let smtpd::load::Loaded {
        mut config,
        directory,
        tls,
        ..
    } = smtpd::load::complete(loaded)?;
    let start_level = log::max_level();
    if config.log_level.is_some() {
        smtpd::load::apply_log_level(config.log_level, start_level);
    }
    let open_files = raise_open_files_limit();
    // Bound (or taken from systemd) and the key read before root is given up (--user).
    let signals =
        smtpd::reactor::stop_signals().map_err(|e| format!("cannot handle signals: {e}"))?;
    let mut listeners = smtpd::systemd::listeners()?;
    if listeners.is_empty() {
        listeners = smtpd::listeners::bind(&config.listen_plan()).map_err(|e| e.to_string())?;
    } else {
        smtpd::listeners::check_servable(
            listeners.iter().map(|l| l.service),
            config.tls.is_some(),
            config.session.auth.enabled,
            config.pop3.is_some(),
        )?;
    }
    let auth = &config.session.auth;
    if config.tls.is_none() && !auth.allow_plaintext {
        for l in listeners.iter().filter(|l| l.service.submission()) {
            let addr = l.socket.local_addr().map_or("?".into(), |a| a.to_string());
            log::warn!(
                "{} on {addr}: without a certificate AUTH is offered only to loopback clients, \
                 and MAIL needs it there: give --tls-cert and --tls-key (or \
                 --allow-plaintext-auth)",
                l.service.name()
            );
        }
    }
    if let Some(run_as) = &config.run_as {
        smtpd::privileges::drop_to(run_as)?;
    }
    let maildir = Maildir::open(&config.maildir)
        .and_then(Maildir::with_open_dirs)
        .map_err(|e| e.to_string())?;
    let mut mailboxes = None;
    let mut spool_is_copy = false;
    if let (Some(local), Some(directory)) = (&config.local, directory) {
        let m = Arc::new(Mailboxes::open(&local.mailboxes).map_err(|e| e.to_string())?);
        // A message for local users only is spooled as the first user's copy and renamed
        // into that Maildir, which needs one file system for the queue and the mailboxes.
        spool_is_copy = same_device(maildir.root(), m.root());
        log::info!(
            "local delivery for {} to {} ({} users, {} aliases)",
            directory.domains().join(" "),
            local.mailboxes.display(),
            directory.users().len(),
            directory.aliases().len()
        );
        config.session.local = Some(smtpd::load::local_policy(
            local,
            directory,
            &m,
            spool_is_copy,
        )?);
        mailboxes = Some(m);
    }
    let max_connections = config.max_connections(open_files);
    if config.durability == Durability::NoFsync {
        log::warn!("--no-fsync: accepted mail is not flushed to disk before 250 (benchmarks only)");
    }
    let mut server = Server::with_listeners(
        listeners,
        signals,
        maildir,
        config.server_config(max_connections, tls, mailboxes.clone()),
    )
    .map_err(|e| e.to_string())?;
    if let Some(addr) = config.metrics {
        let exporter = smtpd::metrics::serve(addr, std::sync::Arc::clone(server.stats()))
            .map_err(|e| e.to_string())?;
        log::info!("metrics on http://{}/metrics", exporter.local_addr());
    }
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    log::info!(
        "listening on {}, Maildir {}",
        addrs.join(" "),
        config.maildir.display()
    );
    let as_root = config.run_as.is_none() && smtpd::privileges::is_root();
    server.set_reload(ReloadSource {
        argv,
        open_files,
        config,
        mailboxes,
        spool_is_copy,
        start_level,
    });
    if as_root {
        log::warn!("serving as root: give --user (and --group) to drop privileges");
    }
    smtpd::systemd::ready(&format!("listening on {}", addrs.join(" ")));
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
