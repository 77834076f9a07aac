//! MX and address lookups with hickory-resolver, on a thread of its own.
//!
//! Owns: the tokio runtime hickory needs (a current-thread runtime on a dedicated thread, so the
//! reactor never blocks on DNS), looking up every domain concurrently, the `--transport` routes
//! (before everything else, their targets marked [`Target::transport`]), the smarthost route,
//! address literals, this machine's interface addresses, and what a lookup failure means
//! (permanent or temporary).
//! Must not: open connections or decide retries; order MX hosts itself (that is
//! [`super::order`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use maildir_core::address::literal_ip;

use super::{MxPlan, Resolution, Target, mx_hosts, targets_below_self};
use crate::config::{Config, NextHop, Route};

/// This machine's interface addresses, loopback excepted (empty if they cannot be listed).
pub fn local_addrs() -> HashSet<IpAddr> {
    let mut set = HashSet::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs(3) fills in a list we free below with freeifaddrs(3).
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        log::warn!(
            "cannot list interface addresses: {}",
            std::io::Error::last_os_error()
        );
        return set;
    }
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: p is a node of the list getifaddrs returned, not freed yet; ifa_addr, when
        // not null, points to a sockaddr whose family says which struct it is.
        let (addr, next) = unsafe {
            let ifa = &*p;
            let addr = if ifa.ifa_addr.is_null() {
                None
            } else {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                    }
                    _ => None,
                }
            };
            (addr, ifa.ifa_next)
        };
        if let Some(a) = addr.map(|a| a.to_canonical())
            && !a.is_loopback()
        {
            set.insert(a);
        }
        p = next;
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    set
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
    let mut out = HashMap::new();
    // `--transport` routes first: they take precedence over the smarthost and the MX records.
    let mut hops: HashMap<(String, u16), Resolution> = HashMap::new();
    let mut rest = Vec::new();
    for d in domains {
        let Some(hop) = transport_for(&cfg, &d) else {
            rest.push(d);
            continue;
        };
        let key = (hop.host.clone(), hop.port.unwrap_or(cfg.port));
        let r = match hops.get(&key) {
            Some(r) => r.clone(),
            None => {
                let r = match next_hop(&res, "transport", &key.0, key.1).await {
                    Resolution::Targets(t) => Resolution::Targets(
                        t.into_iter()
                            .map(|t| Target {
                                transport: true,
                                ..t
                            })
                            .collect(),
                    ),
                    other => other,
                };
                hops.insert(key, r.clone());
                r
            }
        };
        out.insert(d, r);
    }
    let domains = rest;
    if domains.is_empty() {
        return Ok(out);
    }
    if let Route::Smarthost { host, port, .. } = &cfg.route {
        let r = next_hop(&res, "smarthost", host, port.unwrap_or(cfg.port)).await;
        out.extend(domains.into_iter().map(|d| (d, r.clone())));
        return Ok(out);
    }
    let me = Arc::new(Me {
        name: cfg.helo.clone(),
        addrs: local_addrs(),
    });
    let mut set = tokio::task::JoinSet::new();
    for d in domains {
        let res = res.clone();
        let port = cfg.port;
        let me = me.clone();
        set.spawn(async move {
            let began = Instant::now();
            let r = resolve_domain(&res, &d, port, seed, &me).await;
            crate::metrics::relay()
                .dns_latency
                .observe_duration(began.elapsed());
            (d, r)
        });
    }
    while let Some(j) = set.join_next().await {
        let (d, r) = j.map_err(|e| format!("DNS task failed: {e}"))?;
        out.insert(d, r);
    }
    Ok(out)
}

/// The `--transport` next hop for a domain (lower case), if any; a trailing dot is ignored.
fn transport_for<'a>(cfg: &'a Config, domain: &str) -> Option<&'a NextHop> {
    cfg.transports.get(domain.trim_end_matches('.'))
}

/// A next hop configured by name or address (`what`: "smarthost" or "transport"): an IP
/// address as it is, a name looked up by A/AAAA. A name that does not resolve is a
/// configuration or DNS problem, not a verdict on the recipients: defer (as Postfix does),
/// never bounce the queue.
async fn next_hop(res: &TokioResolver, what: &str, host: &str, port: u16) -> Resolution {
    match host.parse::<IpAddr>() {
        Ok(ip) => Resolution::Targets(vec![Target {
            host: host.to_owned(),
            addr: SocketAddr::new(ip, port),
            transport: false,
        }]),
        Err(_) => match timed(host_targets(res, host, port)).await {
            Resolution::Permanent { text, .. } => {
                Resolution::Temporary(format!("{what} {host}: {text}"))
            }
            other => other,
        },
    }
}

/// Awaits a look-up, its time added to the DNS latency histogram.
async fn timed(lookup: impl std::future::Future<Output = Resolution>) -> Resolution {
    let began = Instant::now();
    let r = lookup.await;
    crate::metrics::relay()
        .dns_latency
        .observe_duration(began.elapsed());
    r
}

/// What "this host" is, for MX lists that name it.
struct Me {
    /// The `--helo` name.
    name: String,
    /// Interface addresses, loopback excepted.
    addrs: HashSet<IpAddr>,
}

async fn resolve_domain(
    res: &TokioResolver,
    domain: &str,
    port: u16,
    seed: u64,
    me: &Me,
) -> Resolution {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match literal_ip(lit) {
            Some(ip) => Resolution::Targets(vec![Target {
                host: domain.to_owned(),
                addr: SocketAddr::new(ip, port),
                transport: false,
            }]),
            None => Resolution::Permanent {
                status: "5.1.2",
                text: format!("bad address literal {domain}"),
            },
        };
    }
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let records: Vec<(u16, String)> = match res.lookup(fqdn.as_str(), RecordType::MX).await {
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
    let (plan, warnings) = mx_hosts(domain, records, seed, &me.name);
    for w in warnings {
        log::warn!("{w}");
    }
    let hosts = match plan {
        // RFC 5321 §5.1: no MX, the domain itself is the host.
        MxPlan::Implicit => return host_targets(res, domain, port).await,
        MxPlan::Fail(r) => return r,
        MxPlan::Hosts(h) => h,
    };
    let mut found = Vec::with_capacity(hosts.len());
    for (_, host) in &hosts {
        found.push(host_targets(res, host, port).await);
    }
    targets_below_self(domain, &hosts, found, &me.addrs)
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
                    transport: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addrs_never_include_loopback() {
        assert!(local_addrs().iter().all(|a| !a.is_loopback()));
    }
}
