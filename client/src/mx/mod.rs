//! MX resolution (RFC 5321 §5.1, RFC 7505) with hickory-resolver, on a thread of its own.
//!
//! Owns: the tokio runtime hickory needs (a current-thread runtime on a dedicated thread, so the
//! reactor never blocks on DNS), looking up every domain concurrently, and the MX policy (the
//! pure [`mx_hosts`]): preference order with equal preferences shuffled (one seed per run, so
//! domains sharing MX hosts pick the same one), implicit MX (A/AAAA), null MX, MX lists that
//! name this relay (RFC 5321 §5.1: only hosts strictly more preferred than itself, none → bounce
//! 5.4.6 "mail loops back to myself", as Postfix), MX targets written as IP addresses, and what a
//! failure means (permanent or temporary).
//! Must not: open connections or decide retries.
//!
//! MX targets that are IP addresses in text (`MX 10 192.0.2.1.`): RFC 5321 §5.1 and RFC 7505
//! say an MX target is a host name, and looking such a "name" up in the DNS is pointless. Like
//! Postfix (which warns "numeric domain name in resource data of MX record" and ignores the
//! record), such records are skipped with a warning; a domain left with no usable MX record
//! bounces with 5.4.4 and says why.

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use maildir_core::address::literal_ip;

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

/// What a domain's MX records say to do, before any address lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// No MX records: the domain itself is the host (RFC 5321 §5.1 implicit MX).
    Implicit,
    /// Host names to look up and try, in this order, with their preferences.
    Hosts(Vec<(u16, String)>),
    /// Give up on the domain (null MX, mail loop, nothing usable).
    Fail(Resolution),
}

/// The MX policy, pure: `records` are (preference, exchange) as received (exchange in lower
/// case without the trailing dot, "" for the root), `seed` shuffles equal preferences, `me` is
/// this relay's host name. Also returns warnings to log.
pub fn mx_hosts(
    domain: &str,
    records: Vec<(u16, String)>,
    seed: u64,
    me: &str,
) -> (MxPlan, Vec<String>) {
    let mut warnings = Vec::new();
    if records.is_empty() {
        return (MxPlan::Implicit, warnings);
    }
    // RFC 7505: an MX whose exchange is the root means "accepts no mail".
    let mut mxs: Vec<(u16, String)> = records.into_iter().filter(|(_, h)| !h.is_empty()).collect();
    if mxs.is_empty() {
        let fail = Resolution::Permanent {
            status: "5.1.10",
            text: format!("Domain {domain} does not accept mail (null MX)"),
        };
        return (MxPlan::Fail(fail), warnings);
    }
    let mut numeric = Vec::new();
    mxs.retain(|(_, h)| {
        let ip = h.trim_start_matches('[').trim_end_matches(']');
        if ip.parse::<IpAddr>().is_ok() {
            warnings.push(format!(
                "numeric domain name in resource data of MX record for {domain}: {h} (ignored: an MX target must be a host name)"
            ));
            numeric.push(h.clone());
            false
        } else {
            true
        }
    });
    if mxs.is_empty() {
        let fail = Resolution::Permanent {
            status: "5.4.4",
            text: format!(
                "no usable MX host for {domain}: the MX target {} is an IP address, not a host name",
                numeric.join(", ")
            ),
        };
        return (MxPlan::Fail(fail), warnings);
    }
    let key = |h: &str| {
        // A fixed-key hasher mixed with the run's seed: the same order for every domain.
        let mut s = std::collections::hash_map::DefaultHasher::new();
        s.write_u64(seed);
        s.write(h.as_bytes());
        s.finish()
    };
    mxs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| key(&a.1).cmp(&key(&b.1))));
    // A host listed twice keeps its best preference.
    let mut seen = std::collections::HashSet::new();
    mxs.retain(|(_, h)| seen.insert(h.clone()));
    let me = me.trim_end_matches('.');
    match below_self(domain, mxs, |h| h.eq_ignore_ascii_case(me)) {
        Ok(mxs) => (MxPlan::Hosts(mxs), warnings),
        Err(fail) => (MxPlan::Fail(fail), warnings),
    }
}

/// RFC 5321 §5.1: when this host is an MX of the domain (`is_self`), only strictly more
/// preferred hosts may be used; none left means the mail would loop back here (5.4.6).
pub fn below_self(
    domain: &str,
    mut mxs: Vec<(u16, String)>,
    is_self: impl Fn(&str) -> bool,
) -> Result<Vec<(u16, String)>, Resolution> {
    let Some((mine, host)) = mxs
        .iter()
        .filter(|(_, h)| is_self(h))
        .min_by_key(|(p, _)| *p)
        .cloned()
    else {
        return Ok(mxs);
    };
    mxs.retain(|(p, _)| *p < mine);
    if mxs.is_empty() {
        return Err(Resolution::Permanent {
            status: "5.4.6",
            text: format!("mail for {domain} loops back to myself (MX host {host} is this host)"),
        });
    }
    Ok(mxs)
}

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
            let r = resolve_domain(&res, &d, port, seed, &me).await;
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
    // A host with an address of this machine is this host, whatever its name.
    let mine: HashSet<&str> = hosts
        .iter()
        .zip(&found)
        .filter(|(_, r)| match r {
            Resolution::Targets(t) => t
                .iter()
                .any(|t| me.addrs.contains(&t.addr.ip().to_canonical())),
            _ => false,
        })
        .map(|((_, h), _)| h.as_str())
        .collect();
    let keep = match below_self(domain, hosts.clone(), |h| mine.contains(h)) {
        Ok(keep) => keep.len(),
        Err(fail) => return fail,
    };
    let mut targets = Vec::new();
    let mut temp = None;
    // The hosts kept are a prefix of the preference order.
    for r in found.into_iter().take(keep) {
        match r {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, h)| (*p, h.to_string())).collect()
    }

    fn hosts(list: &[(u16, &str)], me: &str) -> MxPlan {
        mx_hosts("d.test", recs(list), 7, me).0
    }

    fn fail_status(p: &MxPlan) -> Option<&'static str> {
        match p {
            MxPlan::Fail(Resolution::Permanent { status, .. }) => Some(status),
            _ => None,
        }
    }

    #[test]
    fn preference_order_and_dedup() {
        let p = hosts(
            &[
                (20, "c.test"),
                (5, "a.test"),
                (10, "b.test"),
                (30, "a.test"),
            ],
            "me.test",
        );
        assert_eq!(
            p,
            MxPlan::Hosts(recs(&[(5, "a.test"), (10, "b.test"), (20, "c.test")]))
        );
        assert_eq!(hosts(&[], "me.test"), MxPlan::Implicit);
        // The same seed orders equal preferences the same way for every domain.
        let a = mx_hosts("x.test", recs(&[(10, "p.test"), (10, "q.test")]), 99, "me").0;
        let b = mx_hosts("y.test", recs(&[(10, "q.test"), (10, "p.test")]), 99, "me").0;
        assert_eq!(a, b);
    }

    #[test]
    fn null_mx() {
        assert_eq!(fail_status(&hosts(&[(0, "")], "me.test")), Some("5.1.10"));
        // A null MX beside real ones is ignored.
        assert_eq!(
            hosts(&[(0, ""), (10, "a.test")], "me.test"),
            MxPlan::Hosts(recs(&[(10, "a.test")]))
        );
    }

    #[test]
    fn self_in_the_mx_list_keeps_only_strictly_better_hosts() {
        let me = "Relay.Test.";
        let p = hosts(
            &[
                (5, "a.test"),
                (10, "relay.test"),
                (20, "c.test"),
                (5, "b.test"),
            ],
            me,
        );
        let MxPlan::Hosts(h) = p else { panic!("{p:?}") };
        let mut h: Vec<String> = h.into_iter().map(|(_, h)| h).collect();
        h.sort();
        assert_eq!(h, vec!["a.test".to_string(), "b.test".to_string()]);
        // Equal preference to itself: dropped, and nothing better is left.
        let p = hosts(
            &[(10, "relay.test"), (10, "other.test"), (20, "c.test")],
            me,
        );
        assert_eq!(fail_status(&p), Some("5.4.6"), "{p:?}");
        let p = hosts(&[(10, "relay.test")], me);
        assert_eq!(fail_status(&p), Some("5.4.6"));
        let MxPlan::Fail(Resolution::Permanent { text, .. }) = p else {
            panic!()
        };
        assert!(text.contains("loops back to myself"), "{text}");
        // Listed twice: the best of its preferences counts.
        let p = hosts(
            &[(30, "relay.test"), (10, "a.test"), (20, "relay.test")],
            me,
        );
        assert_eq!(p, MxPlan::Hosts(recs(&[(10, "a.test")])));
        // Not itself: a name that merely contains it.
        let p = hosts(&[(10, "relay.test.example")], me);
        assert_eq!(p, MxPlan::Hosts(recs(&[(10, "relay.test.example")])));
    }

    #[test]
    fn self_by_address() {
        let mxs = recs(&[(5, "a.test"), (10, "me-by-ip.test"), (20, "c.test")]);
        let kept = below_self("d.test", mxs.clone(), |h| h == "me-by-ip.test").unwrap();
        assert_eq!(kept, recs(&[(5, "a.test")]));
        let none = below_self("d.test", mxs.clone(), |_| false).unwrap();
        assert_eq!(none, mxs);
        let Err(Resolution::Permanent { status, text }) =
            below_self("d.test", mxs, |h| h == "a.test")
        else {
            panic!()
        };
        assert_eq!(status, "5.4.6");
        assert!(text.contains("a.test is this host"), "{text}");
        // This machine's addresses never include loopback.
        assert!(local_addrs().iter().all(|a| !a.is_loopback()));
    }

    #[test]
    fn ip_address_targets_are_skipped_with_a_warning() {
        let (p, w) = mx_hosts(
            "d.test",
            recs(&[(10, "192.0.2.1"), (20, "b.test")]),
            1,
            "me",
        );
        assert_eq!(p, MxPlan::Hosts(recs(&[(20, "b.test")])));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("numeric domain name"), "{w:?}");
        let (p, _) = mx_hosts("d.test", recs(&[(10, "2001:db8::1")]), 1, "me");
        assert_eq!(fail_status(&p), Some("5.4.4"));
        let MxPlan::Fail(Resolution::Permanent { text, .. }) = p else {
            panic!()
        };
        assert!(text.contains("is an IP address"), "{text}");
    }
}
