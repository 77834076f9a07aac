//! The MX policy, pure.
//!
//! Owns: what a domain's MX records mean (RFC 5321 §5.1, RFC 7505): preference order with equal
//! preferences shuffled by a seed, implicit MX, null MX, MX targets written as IP addresses, and
//! MX lists that name this relay, by name ([`mx_hosts`]) or, once the hosts were looked up, by
//! address ([`targets_below_self`], which also picks the addresses to try).
//! Must not: look anything up, read the clock or draw random numbers (the seed is passed in).
//!
//! MX lists that name this relay (RFC 5321 §5.1): only hosts strictly more preferred than itself
//! are used; none left bounces with 5.4.6 "mail loops back to myself", as Postfix does.
//!
//! MX targets that are IP addresses in text (`MX 10 192.0.2.1.`): RFC 5321 §5.1 and RFC 7505
//! say an MX target is a host name, and looking such a "name" up in the DNS is pointless. Like
//! Postfix (which warns "numeric domain name in resource data of MX record" and ignores the
//! record), such records are skipped with a warning; a domain left with no usable MX record
//! bounces with 5.4.4 and says why.

use std::collections::HashSet;
use std::hash::Hasher;
use std::net::IpAddr;

use super::Resolution;

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
    let mxs = order_mx(mxs, seed);
    let me = me.trim_end_matches('.');
    match below_self(domain, mxs, |h| h.eq_ignore_ascii_case(me)) {
        Ok(mxs) => (MxPlan::Hosts(mxs), warnings),
        Err(fail) => (MxPlan::Fail(fail), warnings),
    }
}

/// Preference order: lowest preference first, equal preferences shuffled by `seed` (a fixed-key
/// hash of the seed and the host name, so every domain of a run orders the same hosts the same
/// way); a host listed twice keeps its best preference.
pub fn order_mx(mut mxs: Vec<(u16, String)>, seed: u64) -> Vec<(u16, String)> {
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
    mxs
}

/// What a domain resolves to once its MX hosts (`hosts`, in preference order) were looked up
/// (`found`, one per host): a host with an address of this machine (`local`) is this host,
/// whatever its name, so only hosts strictly more preferred are kept ([`below_self`]); their
/// addresses in order, else the last temporary failure, else 5.4.4.
pub fn targets_below_self(
    domain: &str,
    hosts: &[(u16, String)],
    found: Vec<Resolution>,
    local: &HashSet<IpAddr>,
) -> Resolution {
    let mine: HashSet<&str> = hosts
        .iter()
        .zip(&found)
        .filter(|(_, r)| match r {
            Resolution::Targets(t) => t
                .iter()
                .any(|t| local.contains(&t.addr.ip().to_canonical())),
            _ => false,
        })
        .map(|((_, h), _)| h.as_str())
        .collect();
    let keep = match below_self(domain, hosts.to_vec(), |h| mine.contains(h)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mx::Target;

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

    #[test]
    fn order_mx_sorts_by_preference_and_shuffles_ties_by_seed() {
        let list = recs(&[
            (20, "c.test"),
            (10, "b.test"),
            (10, "a.test"),
            (10, "d.test"),
            (5, "e.test"),
        ]);
        let ordered = order_mx(list.clone(), 42);
        let prefs: Vec<u16> = ordered.iter().map(|(p, _)| *p).collect();
        assert_eq!(prefs, [5, 10, 10, 10, 20]);
        assert_eq!(ordered[0].1, "e.test");
        assert_eq!(ordered[4].1, "c.test");
        // The order of the records as received does not matter; the seed alone does.
        let mut reversed = list.clone();
        reversed.reverse();
        assert_eq!(order_mx(reversed, 42), ordered);
        assert_eq!(order_mx(list.clone(), 42), ordered);
        // Some seed orders the three equal preferences differently.
        let ties = |seed| -> Vec<String> {
            order_mx(list.clone(), seed)[1..4]
                .iter()
                .map(|(_, h)| h.clone())
                .collect()
        };
        assert!(
            (0..64).any(|seed| ties(seed) != ties(42)),
            "the seed never changed the order of equal preferences"
        );
        assert!(order_mx(Vec::new(), 1).is_empty());
    }

    #[test]
    fn order_mx_keeps_a_host_listed_twice_at_its_best_preference() {
        let ordered = order_mx(recs(&[(30, "a.test"), (10, "b.test"), (5, "a.test")]), 3);
        assert_eq!(ordered, recs(&[(5, "a.test"), (10, "b.test")]));
    }

    fn at(host: &str, ip: &str) -> Target {
        Target {
            host: host.into(),
            addr: std::net::SocketAddr::new(ip.parse().unwrap(), 25),
            transport: false,
        }
    }

    #[test]
    fn targets_in_preference_order_skipping_failed_hosts() {
        let hosts = recs(&[(5, "a.test"), (10, "b.test"), (20, "c.test")]);
        let found = vec![
            Resolution::Targets(vec![at("a.test", "192.0.2.1"), at("a.test", "2001:db8::1")]),
            Resolution::Permanent {
                status: "5.4.4",
                text: "no address for b.test".into(),
            },
            Resolution::Targets(vec![at("c.test", "192.0.2.3")]),
        ];
        let r = targets_below_self("d.test", &hosts, found, &HashSet::new());
        assert_eq!(
            r,
            Resolution::Targets(vec![
                at("a.test", "192.0.2.1"),
                at("a.test", "2001:db8::1"),
                at("c.test", "192.0.2.3"),
            ])
        );
    }

    #[test]
    fn targets_a_host_with_a_local_address_is_this_host() {
        let local: HashSet<IpAddr> = ["192.0.2.9".parse().unwrap()].into();
        let hosts = recs(&[(5, "a.test"), (10, "alias.test"), (20, "c.test")]);
        let found = vec![
            Resolution::Targets(vec![at("a.test", "192.0.2.1")]),
            Resolution::Targets(vec![at("alias.test", "192.0.2.9")]),
            Resolution::Targets(vec![at("c.test", "192.0.2.3")]),
        ];
        let r = targets_below_self("d.test", &hosts, found.clone(), &local);
        assert_eq!(r, Resolution::Targets(vec![at("a.test", "192.0.2.1")]));
        // The most preferred host is this host: the mail would loop.
        let local: HashSet<IpAddr> = ["192.0.2.1".parse().unwrap()].into();
        let Resolution::Permanent { status, text } =
            targets_below_self("d.test", &hosts, found, &local)
        else {
            panic!()
        };
        assert_eq!(status, "5.4.6");
        assert!(text.contains("a.test is this host"), "{text}");
    }

    #[test]
    fn targets_none_found_is_temporary_if_any_lookup_was() {
        let hosts = recs(&[(5, "a.test"), (10, "b.test")]);
        let perm = || Resolution::Permanent {
            status: "5.1.2",
            text: "NXDOMAIN".into(),
        };
        let r = targets_below_self(
            "d.test",
            &hosts,
            vec![Resolution::Temporary("SERVFAIL".into()), perm()],
            &HashSet::new(),
        );
        assert_eq!(r, Resolution::Temporary("SERVFAIL".into()));
        let Resolution::Permanent { status, text } =
            targets_below_self("d.test", &hosts, vec![perm(), perm()], &HashSet::new())
        else {
            panic!()
        };
        assert_eq!(status, "5.4.4");
        assert!(text.contains("any MX host of d.test"), "{text}");
    }
}
