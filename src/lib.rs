//! Portcullis: an edge auth gateway on Pingora.
//!
//! The request's way through the house: `proxy` (the Pingora phases) asks `path` for the one
//! canonical spelling, `routes` for the route, `identity` for the credential and the header
//! policy, `tokens` to verify, and answers with `problem` when it refuses. `upstream` holds the
//! load-balanced peers, `admin` the private listener, `config` the validated configuration.

pub mod admin;
pub mod config;
pub mod echo;
pub mod endpoints;
pub mod identity;
pub mod metrics;
pub mod password;
pub mod path;
pub mod problem;
pub mod proxy;
pub mod ratelimit;
pub mod revocation;
pub mod routes;
pub mod store;
pub mod tokens;
pub mod upstream;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;

use crate::config::Config;

/// Builds the Pingora server for a validated config: the edge proxy, the admin listener and the
/// background services. Binding happens when it runs.
pub fn build(config: Config) -> Result<Server, String> {
    let conf = ServerConf {
        threads: config.threads,
        // Stop accepting at once, give in-flight requests the grace period, then stop.
        grace_period_seconds: Some(config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    metrics::init();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let keys = Arc::new(config.keys);
    let auth = Arc::new(tokens::Authenticator {
        keys: Arc::clone(&keys),
        revocations: Arc::default(),
    });
    let (upstreams, health_checks) = upstream::build(&config.upstreams)?;
    let gateway = proxy::Gateway {
        routes: config.routes,
        upstreams,
        auth,
        cookie_name: config.cookie.name,
        identity: None,
    };

    let mut edge = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    let listen = config.listen.to_string();
    match &config.tls {
        None => edge.add_tcp(&listen),
        Some(tls) => {
            let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
            let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
                &path(&tls.cert_file),
                &path(&tls.key_file),
            )
            .map_err(|e| format!("server.tls: {e}"))?;
            settings.enable_h2();
            edge.add_tls_with_settings(&listen, None, settings);
        }
    }

    let mut admin = Service::new(
        "admin".to_owned(),
        admin::Admin {
            keys,
            store_health: None,
        },
    );
    admin.add_tcp(&config.admin_listen.to_string());

    server.add_service(edge);
    server.add_service(admin);
    for check in health_checks {
        server.add_service(check);
    }
    Ok(server)
}

/// Runs a built server until SIGTERM or SIGINT, both of which drain gracefully.
pub fn run(server: Server) {
    server.run(RunArgs {
        shutdown_signal: Box::new(GracefulOnTermOrInt),
    });
}

/// Pingora treats SIGINT as a fast shutdown; the contract asks for a graceful one on both.
struct GracefulOnTermOrInt;

#[async_trait]
impl ShutdownSignalWatch for GracefulOnTermOrInt {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutdown signal received; draining in-flight requests");
        ShutdownSignal::GracefulTerminate
    }
}
