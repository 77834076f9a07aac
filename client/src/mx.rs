//! MX resolution (RFC 5321 §5.1, RFC 7505) with hickory-resolver, on a thread of its own.
//!
//! Owns: the tokio runtime hickory needs (a current-thread runtime on a dedicated thread, so the
//! reactor never blocks on DNS), looking up every domain concurrently, preference order with
//! equal preferences shuffled (one seed per run, so domains sharing MX hosts pick the same one),
//! implicit MX (A/AAAA), null MX, and what a failure means (permanent or temporary).
//! Must not: open connections or decide retries.

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::config::{Config, Route};

/// One address to try, with the host name it came from (for logs and DSNs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
}

/// What a domain resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Addresses in the order to try them.
    Targets(Vec<Target>),
    /// Give up: enhanced status and text (null MX, NXDOMAIN).
    Permanent { status: &'static str, text: String },
    /// Try later (SERVFAIL, timeout).
    Temporary(String),
}

/// Resolves every domain (lower-case names, or `[literal]`) on a DNS thread; blocks the
/// caller until all are done. With a smarthost, every domain gets the smarthost's addresses.
pub fn resolve_all(
    cfg: &Config,
    domains: Vec<String>,
) -> Result<HashMap<String, Resolution>, String> {
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start DNS runtime: {e}"))?;
            rt.block_on(resolve_inner(cfg, domains))
        })
        .map_err(|e| format!("cannot start DNS thread: {e}"))?
        .join()
        .map_err(|_| "DNS thread panicked".to_owned())?
}

fn resolver(cfg: &Config) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match cfg.dns {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                provider,
            )
        }
        None => TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    builder
        .build()
        .map_err(|e| format!("cannot build resolver: {e}"))
}

async fn resolve_inner(
    cfg: Config,
    domains: Vec<String>,
) -> Result<HashMap<String, Resolution>, String> {
    let res = resolver(&cfg)?;
    let seed = fastrand::u64(..);
    if let Route::Smarthost { host, port, .. } = &cfg.route {
        let port = port.unwrap_or(cfg.port);
        let r = match host.parse::<IpAddr>() {
            Ok(ip) => Resolution::Targets(vec![Target {
                host: host.clone(),
                addr: SocketAddr::new(ip, port),
            }]),
            Err(_) => match host_targets(&res, host, port).await {
                // A smarthost that does not resolve is a configuration or DNS problem, not a
                // verdict on the recipients: defer (as Postfix does), never bounce the queue.
                Resolution::Permanent { text, .. } => {
                    Resolution::Temporary(format!("smarthost {host}: {text}"))
                }
                other => other,
            },
        };
        return Ok(domains.into_iter().map(|d| (d, r.clone())).collect());
    }
    let mut set = tokio::task::JoinSet::new();
    for d in domains {
        let res = res.clone();
        let port = cfg.port;
        set.spawn(async move {
            let r = resolve_domain(&res, &d, port, seed).await;
            (d, r)
        });
    }
    let mut out = HashMap::new();
    while let Some(j) = set.join_next().await {
        let (d, r) = j.map_err(|e| format!("DNS task failed: {e}"))?;
        out.insert(d, r);
    }
    Ok(out)
}

async fn resolve_domain(res: &TokioResolver, domain: &str, port: u16, seed: u64) -> Resolution {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip = lit.strip_prefix("IPv6:").unwrap_or(lit);
        return match ip.parse::<IpAddr>() {
            Ok(ip) => Resolution::Targets(vec![Target {
                host: domain.to_owned(),
                addr: SocketAddr::new(ip, port),
            }]),
            Err(_) => Resolution::Permanent {
                status: "5.1.2",
                text: format!("bad address literal {domain}"),
            },
        };
    }
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let mut mxs: Vec<(u16, String)> = match res.lookup(fqdn.as_str(), RecordType::MX).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((
                    mx.preference,
                    mx.exchange.to_ascii().trim_end_matches('.').to_lowercase(),
                )),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_nx_domain() => {
            return Resolution::Permanent {
                status: "5.1.2",
                text: format!("Host or domain name not found: {domain} (NXDOMAIN)"),
            };
        }
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => return Resolution::Temporary(format!("MX lookup for {domain} failed: {e}")),
    };
    // RFC 7505: a lone MX whose exchange is the root means "accepts no mail".
    if mxs.iter().any(|(_, h)| h.is_empty()) {
        let real: Vec<_> = mxs.iter().filter(|(_, h)| !h.is_empty()).cloned().collect();
        if real.is_empty() {
            return Resolution::Permanent {
                status: "5.1.10",
                text: format!("Domain {domain} does not accept mail (null MX)"),
            };
        }
        mxs = real;
    }
    if mxs.is_empty() {
        // RFC 5321 §5.1: no MX, the domain itself is the host.
        return host_targets(res, domain, port).await;
    }
    let key = |h: &str| {
        // A fixed-key hasher mixed with the run's seed: the same order for every domain.
        let mut s = std::collections::hash_map::DefaultHasher::new();
        s.write_u64(seed);
        s.write(h.as_bytes());
        s.finish()
    };
    mxs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| key(&a.1).cmp(&key(&b.1))));
    mxs.dedup_by(|a, b| a.1 == b.1);
    let mut targets = Vec::new();
    let mut temp = None;
    for (_, host) in &mxs {
        match host_targets(res, host, port).await {
            Resolution::Targets(t) => targets.extend(t),
            Resolution::Temporary(e) => temp = Some(e),
            Resolution::Permanent { .. } => {}
        }
    }
    if !targets.is_empty() {
        return Resolution::Targets(targets);
    }
    match temp {
        Some(e) => Resolution::Temporary(e),
        None => Resolution::Permanent {
            status: "5.4.4",
            text: format!("no address found for any MX host of {domain}"),
        },
    }
}

async fn host_targets(res: &TokioResolver, host: &str, port: u16) -> Resolution {
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    match res.lookup_ip(fqdn.as_str()).await {
        Ok(ips) => {
            let t: Vec<Target> = ips
                .iter()
                .map(|ip| Target {
                    host: host.to_owned(),
                    addr: SocketAddr::new(ip, port),
                })
                .collect();
            if t.is_empty() {
                Resolution::Permanent {
                    status: "5.4.4",
                    text: format!("no address for {host}"),
                }
            } else {
                Resolution::Targets(t)
            }
        }
        Err(e) if e.is_nx_domain() => Resolution::Permanent {
            status: "5.1.2",
            text: format!("Host or domain name not found: {host} (NXDOMAIN)"),
        },
        Err(e) if e.is_no_records_found() => Resolution::Permanent {
            status: "5.4.4",
            text: format!("no address for {host}"),
        },
        Err(e) => Resolution::Temporary(format!("address lookup for {host} failed: {e}")),
    }
}
