//! Upstreams: one round-robin load balancer per `[[upstream]]`, its health checked by a
//! Pingora background service so the proxy only reads the result. Picking a peer does no I/O.

use std::sync::Arc;
use std::time::Duration;

use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer, health_check::TcpHealthCheck};
use pingora::prelude::HttpPeer;
use pingora::services::background::{GenBackgroundService, background_service};

use crate::config;

/// A ready upstream: its balancer and the peer settings every connection to it uses.
pub struct Upstream {
    pub name: String,
    balancer: Arc<LoadBalancer<RoundRobin>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    pub forward_token: bool,
    /// The only address of a one-address upstream, and its peer built once: a request asks
    /// its health and nothing else (no selection, no peer built per request).
    single: Option<(Backend, HttpPeer)>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How long an idle pooled connection to an upstream is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Upstream {
    /// The next healthy peer, or `None` when every address is down.
    pub fn peer(&self) -> Option<Box<HttpPeer>> {
        if let Some((backend, peer)) = &self.single {
            return self
                .balancer
                .backends()
                .ready(backend)
                .then(|| Box::new(peer.clone()));
        }
        let backend = self.balancer.select(b"", 256)?;
        let addr = *backend.addr.as_inet()?;
        Some(Box::new(peer_for(
            addr,
            self.connect_timeout,
            self.read_timeout,
        )))
    }
}

/// The peer settings every connection to an upstream address uses.
fn peer_for(addr: std::net::SocketAddr, connect: Duration, read: Duration) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    let o = &mut peer.options;
    o.connection_timeout = Some(connect);
    o.total_connection_timeout = Some(connect);
    o.read_timeout = Some(read);
    o.write_timeout = Some(read);
    o.idle_timeout = Some(IDLE_TIMEOUT);
    peer
}

/// The background service that keeps one upstream's health current.
pub type HealthCheck = GenBackgroundService<LoadBalancer<RoundRobin>>;

/// Builds the upstreams and the health-check services that keep their health current.
pub fn build(configs: &[config::Upstream]) -> Result<(Vec<Upstream>, Vec<HealthCheck>), String> {
    let mut upstreams = Vec::with_capacity(configs.len());
    let mut services = Vec::with_capacity(configs.len());
    for c in configs {
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(c.addrs.iter())
            .map_err(|e| format!("upstream `{}`: {e}", c.name))?;
        let mut check = TcpHealthCheck::new();
        check.peer_template.options.connection_timeout = Some(c.connect_timeout);
        lb.set_health_check(check);
        lb.health_check_frequency = Some(c.health_check_interval);
        let single = match c.addrs.as_slice() {
            [addr] => Some((
                Backend::new(&addr.to_string())
                    .map_err(|e| format!("upstream `{}`: {e}", c.name))?,
                peer_for(*addr, c.connect_timeout, c.read_timeout),
            )),
            _ => None,
        };
        let service = background_service(&format!("health check {}", c.name), lb);
        upstreams.push(Upstream {
            name: c.name.clone(),
            balancer: service.task(),
            connect_timeout: c.connect_timeout,
            read_timeout: c.read_timeout,
            forward_token: c.forward_token,
            single,
        });
        services.push(service);
    }
    Ok((upstreams, services))
}
