//! Upstream addresses by name (CONTRACT 14): an `[[upstream]]` entry may be `host:port` (a
//! Kubernetes Service, a compose service, a managed endpoint). [`Resolver`] is the upstream's
//! Pingora service discovery: its balancer loop (`upstream::HealthChecks`) asks it every
//! `resolve_secs`, and the health checks run over what it found. A name that stops resolving
//! keeps its last addresses (logged); a name that never resolved adds none, so an upstream with
//! nothing else is unhealthy (502), never a start failure. IP entries pass through.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::lb::discovery::ServiceDiscovery;

use crate::config::UpstreamAddr;

/// How long one name's lookup may take before the last addresses stand.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks a name up: the system resolver in production, a table in the unit tests.
pub type Lookup = Arc<
    dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system resolver (`getaddrinfo`: `/etc/hosts`, then DNS), as tokio runs it.
pub fn system() -> Lookup {
    Arc::new(|host, port| {
        Box::pin(async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(Iterator::collect)
        })
    })
}

/// One upstream's addresses, resolved.
pub struct Resolver {
    upstream: String,
    addrs: Vec<UpstreamAddr>,
    lookup: Lookup,
    /// Per entry (by index in `addrs`), the addresses its name last resolved to.
    last_good: Mutex<HashMap<usize, Vec<SocketAddr>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(upstream: &str, addrs: &[UpstreamAddr], lookup: Lookup) -> Self {
        Self {
            upstream: upstream.to_owned(),
            addrs: addrs.to_vec(),
            lookup,
            last_good: Mutex::new(HashMap::new()),
        }
    }

    /// Every address of the upstream now: IPs as written, names as resolved (or as last
    /// resolved when the lookup fails).
    pub async fn addresses(&self) -> BTreeSet<SocketAddr> {
        let mut out = BTreeSet::new();
        for (index, entry) in self.addrs.iter().enumerate() {
            match entry {
                UpstreamAddr::Ip(addr) => {
                    out.insert(*addr);
                }
                UpstreamAddr::Name { host, port } => {
                    let found =
                        tokio::time::timeout(LOOKUP_TIMEOUT, (self.lookup)(host.clone(), *port))
                            .await;
                    let mut last = self
                        .last_good
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    match found {
                        Ok(Ok(addrs)) if !addrs.is_empty() => {
                            if last.get(&index) != Some(&addrs) {
                                tracing::info!(upstream = self.upstream, name = %entry, addrs = ?addrs, "upstream name resolved");
                            }
                            out.extend(addrs.iter().copied());
                            last.insert(index, addrs);
                        }
                        failed => {
                            let why = match failed {
                                Ok(Ok(_)) => "no addresses".to_owned(),
                                Ok(Err(e)) => e.to_string(),
                                Err(_) => format!("no answer within {LOOKUP_TIMEOUT:?}"),
                            };
                            let kept = last.get(&index);
                            tracing::warn!(
                                upstream = self.upstream,
                                name = %entry,
                                error = why,
                                kept = ?kept,
                                "upstream name did not resolve; its last addresses stay (none if it never resolved)"
                            );
                            out.extend(kept.into_iter().flatten().copied());
                        }
                    }
                }
            }
        }
        out
    }
}

#[async_trait]
impl ServiceDiscovery for Resolver {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let backends = self
            .addresses()
            .await
            .into_iter()
            .map(|addr| Backend::new(&addr.to_string()))
            .collect::<pingora::Result<_>>()?;
        Ok((backends, HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver whose names resolve as `table` says at the moment of asking.
    fn table(table: Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>) -> Lookup {
        Arc::new(move |host, _port| {
            let found = table.lock().unwrap().get(&host).cloned();
            Box::pin(async move { found.ok_or_else(|| std::io::Error::other("no such host")) })
        })
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn name(host: &str) -> UpstreamAddr {
        UpstreamAddr::Name {
            host: host.to_owned(),
            port: 80,
        }
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_addresses_and_a_new_answer_replaces_them() {
        let names = Arc::new(Mutex::new(HashMap::from([(
            "app".to_owned(),
            vec![a("10.0.0.1:80"), a("10.0.0.2:80")],
        )])));
        let r = Resolver::new(
            "u",
            &[name("app"), UpstreamAddr::Ip(a("10.9.9.9:81"))],
            table(Arc::clone(&names)),
        );
        let first = r.addresses().await;
        assert_eq!(
            first,
            BTreeSet::from([a("10.0.0.1:80"), a("10.0.0.2:80"), a("10.9.9.9:81")])
        );
        names.lock().unwrap().clear();
        assert_eq!(r.addresses().await, first, "the last good addresses stay");
        names
            .lock()
            .unwrap()
            .insert("app".to_owned(), vec![a("10.0.0.3:80")]);
        assert_eq!(
            r.addresses().await,
            BTreeSet::from([a("10.0.0.3:80"), a("10.9.9.9:81")])
        );
    }

    #[tokio::test]
    async fn a_name_that_never_resolved_adds_nothing_and_the_others_still_count() {
        let names = Arc::new(Mutex::new(HashMap::from([(
            "up".to_owned(),
            vec![a("10.0.0.7:80")],
        )])));
        let r = Resolver::new("u", &[name("down"), name("up")], table(names));
        assert_eq!(r.addresses().await, BTreeSet::from([a("10.0.0.7:80")]));
        let alone = Resolver::new("u", &[name("down")], table(Arc::default()));
        assert!(alone.addresses().await.is_empty());
        let (backends, _) = alone.discover().await.unwrap();
        assert!(backends.is_empty(), "no backend: the upstream is unhealthy");
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_system_resolver() {
        let r = Resolver::new(
            "u",
            &[UpstreamAddr::Name {
                host: "localhost".to_owned(),
                port: 8080,
            }],
            system(),
        );
        let found = r.addresses().await;
        assert!(found.contains(&a("127.0.0.1:8080")), "{found:?}");
    }
}
