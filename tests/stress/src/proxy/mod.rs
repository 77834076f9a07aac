//! `smtp-stress proxy`: a TCP delay proxy that emulates distance on loopback (kernel netem is not
//! available on the project's machines). Every byte in each direction is delivered a fixed
//! delay after it was read, order kept, so a 25 ms one-way delay gives a 50 ms round trip.
//!
//! Files: `mod.rs` (this: the subcommand's command line, validated into a [`Config`]),
//! `delay.rs` (the pure delay line of one direction: (due time, bytes) chunks and the end of
//! stream, the clock passed in), `reactor.rs` (the mio loop: accepting, connecting to the
//! target, moving bytes between the sockets and the delay lines, the timer heap, closing).

mod delay;
mod reactor;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Forwards TCP connections from LISTEN to TARGET, delivering every byte in each direction
/// DELAY after it was read (order kept; the end of stream too, after the data). One thread;
/// listens on loopback only. Prints `listening on ADDR` on stdout once ready (LISTEN may use
/// port 0), then on stderr one line per connection accepted (`proxy: #N from ADDR accepted`) and
/// one when it ends (bytes moved each way).
#[derive(Debug, Parser)]
#[command(name = "smtp-stress proxy", bin_name = "smtp-stress proxy", version)]
pub struct ProxyArgs {
    /// One-way delay added in each direction: a number with a unit (`25ms`, `0.5s`, `800us`),
    /// or 0. The round trip through the proxy grows by twice this.
    #[arg(long, value_name = "DELAY", value_parser = parse_delay)]
    pub delay: Duration,
    /// Most bytes held per direction of a connection: the proxy stops reading that side while it
    /// holds this many (4 MiB by default), so memory stays bounded.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub buffer: usize,
    /// Where to listen (a loopback address; port 0 picks a free one).
    #[arg(value_name = "LISTEN")]
    pub listen: String,
    /// Where to connect for each accepted connection.
    #[arg(value_name = "TARGET")]
    pub target: String,
}

/// A validated proxy.
#[derive(Debug, Clone)]
pub struct Config {
    /// The loopback address listened on.
    pub listen: SocketAddr,
    /// The address each accepted connection is forwarded to.
    pub target: SocketAddr,
    /// The one-way delay.
    pub delay: Duration,
    /// Most bytes held per direction.
    pub buffer: usize,
}

/// Parses `25ms`, `0.5s`, `800us`, `0`.
pub fn parse_delay(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("{s:?}: give a unit (25ms, 0.5s, 800us), or 0"));
    };
    let v: f64 = num.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    let secs = v * scale;
    if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
        return Err(format!("{s:?}: the delay must be between 0 and 1 hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn resolve(what: &str, s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{what} {s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what} {s}: no address"))
}

impl ProxyArgs {
    /// Validates the arguments: the listening address must be on loopback.
    pub fn into_config(self) -> Result<Config, String> {
        let listen = resolve("LISTEN", &self.listen)?;
        if !listen.ip().is_loopback() {
            return Err(format!(
                "LISTEN {listen}: the proxy listens on loopback only (127.0.0.0/8, ::1)"
            ));
        }
        if self.buffer == 0 {
            return Err("--buffer must be at least 1".into());
        }
        Ok(Config {
            listen,
            target: resolve("TARGET", &self.target)?,
            delay: self.delay,
            buffer: self.buffer,
        })
    }
}

/// True when the command line asks for the proxy (`smtp-stress proxy ...`). No load-run
/// invocation starts with the word: a load run's only positional argument is HOST:PORT, and
/// its options start with `--`.
pub fn requested(args: &[std::ffi::OsString]) -> bool {
    args.get(1).is_some_and(|a| a == "proxy")
}

/// Runs `smtp-stress proxy ...` (`args` is the whole command line); exit 2 on bad arguments or
/// a failure to start, 1 if the loop fails later.
pub fn main(args: &[std::ffi::OsString]) -> ExitCode {
    // "smtp-stress proxy --delay ..." parses as "smtp-stress proxy" + the rest.
    let parsed = match ProxyArgs::try_parse_from(args.iter().skip(1)) {
        Ok(a) => a,
        Err(e) => e.exit(), // usage errors exit 2, --help and --version 0
    };
    let cfg = match parsed.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtp-stress proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crate::raise_nofile() {
        eprintln!("smtp-stress proxy: cannot raise the open-files limit: {e}");
    }
    let mut proxy = match reactor::Proxy::bind(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("smtp-stress proxy: listen on {}: {e}", cfg.listen);
            return ExitCode::from(2);
        }
    };
    match proxy.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtp-stress proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        ProxyArgs::try_parse_from(std::iter::once("proxy").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?
            .into_config()
    }

    #[test]
    fn delays() {
        assert_eq!(parse_delay("25ms"), Ok(Duration::from_millis(25)));
        assert_eq!(parse_delay("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_delay("800us"), Ok(Duration::from_micros(800)));
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("0ms"), Ok(Duration::ZERO));
        for bad in ["25", "ms", "-1ms", "2h", "1e9s", "NaNs", "x ms", ""] {
            assert!(parse_delay(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn proxy_arguments() {
        let c = parse(&["--delay", "25ms", "127.0.0.1:0", "127.0.0.1:25"]).unwrap();
        assert_eq!(c.delay, Duration::from_millis(25));
        assert_eq!(c.buffer, 4 * 1024 * 1024);
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.target.port(), 25);
        let c = parse(&[
            "--buffer",
            "1000",
            "--delay",
            "0",
            "[::1]:7",
            "localhost:25",
        ])
        .unwrap();
        assert_eq!(c.buffer, 1000);
        assert!(parse(&["--delay", "1ms", "0.0.0.0:2525", "127.0.0.1:25"]).is_err());
        assert!(parse(&["--delay", "1ms", "192.0.2.1:2525", "127.0.0.1:25"]).is_err());
        assert!(parse(&["--delay", "1ms", "127.0.0.1:2525"]).is_err());
        assert!(
            parse(&["127.0.0.1:2525", "127.0.0.1:25"]).is_err(),
            "--delay is required"
        );
        assert!(
            parse(&[
                "--delay",
                "1ms",
                "--buffer",
                "0",
                "127.0.0.1:1",
                "127.0.0.1:2"
            ])
            .is_err()
        );
    }

    #[test]
    fn only_the_word_proxy_selects_the_proxy() {
        let argv = |a: &[&str]| -> Vec<std::ffi::OsString> {
            std::iter::once("smtp-stress")
                .chain(a.iter().copied())
                .map(Into::into)
                .collect()
        };
        assert!(requested(&argv(&["proxy", "--delay", "1ms", "a:1", "b:2"])));
        assert!(!requested(&argv(&["127.0.0.1:25"])));
        assert!(!requested(&argv(&["--connections", "5", "proxy:25"])));
        assert!(!requested(&argv(&[])));
    }
}
