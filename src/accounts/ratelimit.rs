//! Rate limits on the identity endpoints: attempts per client IP, failed sign-ins per email.
//! Fixed one-minute windows in a sharded in-memory map (per replica). Only identity requests
//! touch it, never proxied traffic.
//!
//! Memory is bounded: IPv6 clients count by their /64 (one subscriber's whole prefix), and
//! when a shard holds [`MAX_KEYS_PER_SHARD`] live windows (someone spraying addresses or
//! invented emails), new keys are refused until windows expire: the identity endpoints fail
//! closed rather than the process growing without end.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

const SHARDS: usize = 16;
const WINDOW: Duration = Duration::from_secs(60);

/// A key over its limit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

/// Beyond this many keys in a shard, stale windows are swept before inserting.
const SWEEP_AT: usize = 4096;
/// Live windows a shard may hold (16 shards: about 260k keys, a few tens of MiB at most).
pub const MAX_KEYS_PER_SHARD: usize = 16_384;

/// Counts events per key in fixed windows.
#[derive(Debug)]
pub struct Limiter<K> {
    limit: u32,
    max_keys_per_shard: usize,
    shards: Vec<Mutex<Shard<K>>>,
    hasher: RandomState,
}

#[derive(Debug)]
struct Shard<K> {
    windows: HashMap<K, (Instant, u32)>,
    /// Sweeping is O(keys): at most once a second, however hard someone sprays.
    last_sweep: Instant,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// The limit per key and minute.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    pub fn new(per_minute: u32) -> Self {
        Self::with_max_keys(per_minute, MAX_KEYS_PER_SHARD)
    }

    pub fn with_max_keys(per_minute: u32, max_keys_per_shard: usize) -> Self {
        Self {
            limit: per_minute,
            max_keys_per_shard,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        windows: HashMap::new(),
                        last_sweep: Instant::now(),
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<Shard<K>> {
        let h = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.shards[h]
    }

    /// Counts one event; `Err` when the key is over its limit.
    pub fn hit(&self, key: &K) -> Result<(), Limited> {
        self.add(key, 1)
    }

    /// Is the key over its limit, without counting?
    pub fn check(&self, key: &K) -> Result<(), Limited> {
        self.add(key, 0)
    }

    fn add(&self, key: &K, n: u32) -> Result<(), Limited> {
        let now = Instant::now();
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.windows.len() >= SWEEP_AT && !shard.windows.contains_key(key) {
            if now.duration_since(shard.last_sweep) >= Duration::from_secs(1) {
                shard.last_sweep = now;
                shard
                    .windows
                    .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            }
            if shard.windows.len() >= self.max_keys_per_shard {
                return Err(Limited {
                    retry_after_secs: 1,
                });
            }
        }
        let entry = shard.windows.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let left = WINDOW.saturating_sub(now.duration_since(entry.0));
            return Err(Limited {
                retry_after_secs: left.as_secs().max(1),
            });
        }
        entry.1 += n;
        Ok(())
    }
}

/// Trusted proxy networks whose `X-Forwarded-For` names the client.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From the validated networks of the config.
    pub fn new(nets: &[IpNet]) -> Self {
        Self(nets.to_vec())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The rate-limit key of a client: its IP, or for IPv6 its /64.
    pub fn client_key(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        match self.client_ip(peer, forwarded_for) {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                IpAddr::V6(prefix.into())
            }
            v4 @ IpAddr::V4(_) => v4,
        }
    }

    /// The client IP: the peer, or, when the peer is a trusted proxy, the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let Some(xff) = forwarded_for else {
            return peer;
        };
        for hop in xff.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if self.trusts(ip) => {}
                Ok(ip) => return ip,
                Err(_) => return peer,
            }
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_within_a_window_and_names_a_retry_time() {
        let l = Limiter::new(3);
        for _ in 0..3 {
            assert!(l.hit(&"k").is_ok());
        }
        let retry = l.hit(&"k").unwrap_err().retry_after_secs;
        assert!((1..=60).contains(&retry));
        assert!(l.hit(&"other").is_ok());
        assert!(l.check(&"k").is_err());
    }

    #[test]
    fn a_spray_of_keys_is_bounded_and_fails_closed() {
        let cap = SWEEP_AT + 100;
        let l = Limiter::with_max_keys(5, cap);
        let mut refused = 0;
        for i in 0..(SHARDS * cap + 10_000) {
            if l.hit(&i).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        let held: usize = l
            .shards
            .iter()
            .map(|s| s.lock().unwrap().windows.len())
            .sum();
        assert!(held <= SHARDS * cap, "{held}");
    }

    #[test]
    fn ipv6_clients_count_by_their_slash_64() {
        let t = TrustedProxies::default();
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(t.client_key(a, None), t.client_key(b, None));
        assert_ne!(t.client_key(a, None), t.client_key(c, None));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.client_key(v4, None), v4);
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let t = TrustedProxies::new(&["10.0.0.0/8".parse().unwrap()]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(t.client_ip(stranger, Some("1.1.1.1")), stranger);
        assert_eq!(
            t.client_ip(proxy, Some("1.1.1.1, 198.51.100.7, 10.9.9.9")),
            client
        );
        assert_eq!(t.client_ip(proxy, Some("garbage")), proxy);
        assert_eq!(t.client_ip(proxy, None), proxy);
    }
}
