//! The login lockout as a pure policy: failed logins counted per client address (SMTP AUTH
//! and POP3 together), a ban after `max_failures` of them, its expiry, exempt networks, and
//! the text form of the bans file (`<queue maildir>/.smtpd/bans`).
//!
//! The clock is passed in (wall time, [`SystemTime`]: a ban outlives a restart). Owns: the
//! counts and the bans, and their file format. Must not: read or write files (see
//! [`super::ban_file`]), log, or decide what a session says to a banned client.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Cidr;

/// A failure older than this (since the address's last failure) no longer counts.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(3600);
/// Most addresses whose failures are counted at once (those with the oldest failures are
/// forgotten first beyond this).
pub const MAX_TRACKED: usize = 100_000;

/// The settings of the lockout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanPolicy {
    /// Failed logins from one address that ban it (`--max-auth-failures`; 0: never).
    pub max_failures: u32,
    /// How long a ban lasts (`--ban-time`).
    pub ban_time: Duration,
    /// Addresses that are never banned (`--ban-exempt`).
    pub exempt: Vec<Cidr>,
}

impl Default for BanPolicy {
    fn default() -> BanPolicy {
        BanPolicy {
            max_failures: 3,
            ban_time: Duration::from_secs(60),
            exempt: Vec::new(),
        }
    }
}

/// One ban: who, until when, after how many failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// The banned client address.
    pub ip: IpAddr,
    /// When it ends.
    pub until: SystemTime,
    /// Failed logins that led to it.
    pub failures: u32,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: SystemTime,
}

/// The failure counts and the bans in force.
#[derive(Debug, Clone, Default)]
pub struct Bans {
    policy: BanPolicy,
    failures: HashMap<IpAddr, Failures>,
    banned: HashMap<IpAddr, Ban>,
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Bans {
    /// No failures and no bans yet.
    pub fn new(policy: BanPolicy) -> Bans {
        Bans {
            policy,
            failures: HashMap::new(),
            banned: HashMap::new(),
        }
    }

    /// The bans read back at start: those already over are dropped.
    pub fn with_bans(
        policy: BanPolicy,
        bans: impl IntoIterator<Item = Ban>,
        now: SystemTime,
    ) -> Bans {
        let mut b = Bans::new(policy);
        for ban in bans {
            if ban.until > now && !b.is_exempt(ban.ip) {
                let ip = canonical(ban.ip);
                b.banned.insert(ip, Ban { ip, ..ban });
            }
        }
        b
    }

    /// The settings in force.
    pub fn policy(&self) -> &BanPolicy {
        &self.policy
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.policy.exempt.iter().any(|n| n.contains(ip))
    }

    /// True while `ip` is banned.
    pub fn is_banned(&self, ip: IpAddr, now: SystemTime) -> bool {
        self.banned
            .get(&canonical(ip))
            .is_some_and(|b| b.until > now)
    }

    /// A failed login from `ip`. Returns the ban when this failure starts one (the caller
    /// logs it, saves the file and closes the session). Failures while banned, and from
    /// exempt addresses, change nothing.
    pub fn record_failure(&mut self, ip: IpAddr, now: SystemTime) -> Option<Ban> {
        let ip = canonical(ip);
        if self.policy.max_failures == 0 || self.is_exempt(ip) || self.is_banned(ip, now) {
            return None;
        }
        if !self.failures.contains_key(&ip) && self.failures.len() >= MAX_TRACKED {
            self.forget_oldest(now);
        }
        let f = self.failures.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(f.last).unwrap_or_default() > FAILURE_WINDOW {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count < self.policy.max_failures {
            return None;
        }
        let ban = Ban {
            ip,
            until: now + self.policy.ban_time,
            failures: f.count,
        };
        self.failures.remove(&ip);
        self.banned.insert(ip, ban);
        Some(ban)
    }

    /// A successful login from `ip`: its failures are forgotten. A ban in force stays (the
    /// caller refuses the login anyway).
    pub fn record_success(&mut self, ip: IpAddr) {
        self.failures.remove(&canonical(ip));
    }

    /// Drops bans that are over and failure counts out of the window. True when a ban was
    /// dropped (the file is worth rewriting).
    pub fn expire(&mut self, now: SystemTime) -> bool {
        let before = self.banned.len();
        self.banned.retain(|_, b| b.until > now);
        self.failures
            .retain(|_, f| now.duration_since(f.last).unwrap_or_default() <= FAILURE_WINDOW);
        self.banned.len() != before
    }

    /// Bans kept (those over are dropped by [`Bans::expire`]).
    pub fn len(&self) -> usize {
        self.banned.len()
    }

    /// True when no address is banned.
    pub fn is_empty(&self) -> bool {
        self.banned.is_empty()
    }

    /// When the next ban ends, if any.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.banned.values().map(|b| b.until).min()
    }

    /// The bans in force, sorted by address (for the file).
    pub fn bans(&self) -> Vec<Ban> {
        let mut v: Vec<Ban> = self.banned.values().copied().collect();
        v.sort_by_key(|b| b.ip);
        v
    }

    fn forget_oldest(&mut self, now: SystemTime) {
        self.expire(now);
        if self.failures.len() < MAX_TRACKED {
            return;
        }
        let mut lasts: Vec<SystemTime> = self.failures.values().map(|f| f.last).collect();
        lasts.sort();
        let cut = lasts[lasts.len() / 2];
        self.failures.retain(|_, f| f.last > cut);
    }
}

/// The bans file's text: a comment line, then `ADDRESS UNTIL FAILURES` per ban (`UNTIL` in
/// seconds since the Unix epoch).
pub fn format(bans: &[Ban]) -> String {
    let mut s = String::from("# smtpd login bans: address, until (Unix seconds), failures\n");
    for b in bans {
        let until = b
            .until
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        s.push_str(&format!("{} {until} {}\n", b.ip, b.failures));
    }
    s
}

/// Reads the bans file's text. A line that does not parse is an error naming its number.
pub fn parse(text: &str) -> Result<Vec<Ban>, String> {
    let mut bans = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: expected ADDRESS UNTIL FAILURES", i + 1);
        let mut words = line.split_ascii_whitespace();
        let (Some(ip), Some(until), Some(failures), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(bad());
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let until: u64 = until.parse().map_err(|_| bad())?;
        let failures: u32 = failures.parse().map_err(|_| bad())?;
        let until = UNIX_EPOCH
            .checked_add(Duration::from_secs(until))
            .ok_or_else(bad)?;
        bans.push(Ban {
            ip,
            until,
            failures,
        });
    }
    Ok(bans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy() -> BanPolicy {
        BanPolicy {
            max_failures: 3,
            ban_time: Duration::from_secs(60),
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn third_failure_bans_until_expiry() {
        let mut b = Bans::new(policy());
        let a = ip("192.0.2.1");
        assert_eq!(b.record_failure(a, at(0)), None);
        assert_eq!(b.record_failure(a, at(1)), None);
        assert!(!b.is_banned(a, at(1)));
        let ban = b.record_failure(a, at(2)).unwrap();
        assert_eq!(ban.until, at(62));
        assert_eq!(ban.failures, 3);
        assert!(b.is_banned(a, at(2)));
        assert!(b.is_banned(a, at(61)));
        // Another address is not concerned.
        assert!(!b.is_banned(ip("192.0.2.2"), at(3)));
        // Failures while banned do not extend it, success does not lift it.
        assert_eq!(b.record_failure(a, at(30)), None);
        b.record_success(a);
        assert!(b.is_banned(a, at(61)));
        assert!(!b.is_banned(a, at(62)));
        assert_eq!(b.next_expiry(), Some(at(62)));
        assert!(b.expire(at(62)));
        assert!(b.bans().is_empty());
        // After the ban the count starts again.
        assert_eq!(b.record_failure(a, at(63)), None);
    }

    #[test]
    fn success_resets_the_count_and_old_failures_expire() {
        let mut b = Bans::new(policy());
        let a = ip("192.0.2.1");
        b.record_failure(a, at(0));
        b.record_failure(a, at(1));
        b.record_success(a);
        assert_eq!(b.record_failure(a, at(2)), None);
        assert_eq!(b.record_failure(a, at(3)), None);
        let late = at(3) + FAILURE_WINDOW + Duration::from_secs(1);
        assert_eq!(b.record_failure(a, late), None, "window passed: count is 1");
    }

    #[test]
    fn exempt_mapped_and_disabled() {
        let mut b = Bans::new(policy());
        for _ in 0..10 {
            assert_eq!(b.record_failure(ip("10.1.2.3"), at(0)), None);
        }
        // An IPv4-mapped IPv6 address is the IPv4 address.
        let v4 = ip("192.0.2.9");
        let mapped = ip("::ffff:192.0.2.9");
        b.record_failure(mapped, at(0));
        b.record_failure(v4, at(0));
        assert!(b.record_failure(mapped, at(0)).is_some());
        assert!(b.is_banned(v4, at(1)));
        let mut off = Bans::new(BanPolicy {
            max_failures: 0,
            ..policy()
        });
        for _ in 0..10 {
            assert_eq!(off.record_failure(v4, at(0)), None);
        }
    }

    #[test]
    fn file_round_trip_drops_expired() {
        let mut b = Bans::new(policy());
        for a in ["192.0.2.1", "2001:db8::1"] {
            for s in 0..3 {
                b.record_failure(ip(a), at(s));
            }
        }
        let text = format(&b.bans());
        assert_eq!(
            text,
            format!(
                "# smtpd login bans: address, until (Unix seconds), failures\n\
                 192.0.2.1 {0} 3\n2001:db8::1 {0} 3\n",
                1_800_000_062
            )
        );
        let read = parse(&text).unwrap();
        assert_eq!(read, b.bans());
        let again = Bans::with_bans(policy(), read.clone(), at(10));
        assert!(again.is_banned(ip("2001:db8::1"), at(10)));
        let later = Bans::with_bans(policy(), read, at(62));
        assert!(later.bans().is_empty());
        for bad in ["1.2.3.4 5", "x 1 2", "1.2.3.4 1 2 3", "1.2.3.4 -1 2"] {
            assert!(parse(bad).unwrap_err().starts_with("line 1:"), "{bad}");
        }
    }
}
