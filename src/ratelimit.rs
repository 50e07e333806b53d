//! Rate limits on the identity endpoints: attempts per client IP, failed sign-ins per email.
//! Fixed one-minute windows in a sharded in-memory map (per replica). Only identity requests
//! touch it, never proxied traffic.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
const WINDOW: Duration = Duration::from_secs(60);
/// Beyond this many keys in a shard, stale windows are swept before inserting.
const SWEEP_AT: usize = 4096;

/// Counts events per key in fixed windows.
#[derive(Debug)]
pub struct Limiter<K> {
    limit: u32,
    shards: Vec<Mutex<HashMap<K, (Instant, u32)>>>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(per_minute: u32) -> Self {
        Self {
            limit: per_minute,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, (Instant, u32)>> {
        let h = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.shards[h]
    }

    /// Counts one event; `Err(retry_after_secs)` when the key is over its limit.
    pub fn hit(&self, key: &K) -> Result<(), u64> {
        self.add(key, 1)
    }

    /// Is the key over its limit, without counting?
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.add(key, 0)
    }

    fn add(&self, key: &K, n: u32) -> Result<(), u64> {
        let now = Instant::now();
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= SWEEP_AT {
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = map.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let left = WINDOW.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += n;
        Ok(())
    }
}

/// Trusted proxy networks whose `X-Forwarded-For` names the client.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// From validated CIDR strings (see config).
    pub fn parse(cidrs: &[String]) -> Self {
        Self(
            cidrs
                .iter()
                .filter_map(|c| {
                    let (ip, len) = c.split_once('/').unwrap_or((c, ""));
                    let ip: IpAddr = ip.parse().ok()?;
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let len = if len.is_empty() {
                        max
                    } else {
                        len.parse().ok()?
                    };
                    Some((ip, len))
                })
                .collect(),
        )
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|&(net, len)| in_net(ip, net, len))
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

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
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
        let retry = l.hit(&"k").unwrap_err();
        assert!((1..=60).contains(&retry));
        assert!(l.hit(&"other").is_ok());
        assert!(l.check(&"k").is_err());
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]);
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
