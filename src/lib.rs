//! Portcullis: an edge auth gateway on Pingora.
//!
//! The house has four wings, and arrows run downward only: `edge` (the Pingora phases and what
//! only they use) → `accounts` (the identity service) → `authn` (who is this request: tokens,
//! keys, issuers, revocations) ; `ops` (admin listener, metrics) beside them. Every wing uses
//! `problem` (the one mapping of errors to responses), `config` (validated plain data) and
//! `clock`. `build` wires the wings into one Pingora server.

pub mod accounts;
pub mod authn;
pub mod clock;
pub mod config;
pub mod demo;
pub mod edge;
pub mod follow;
#[doc(hidden)]
pub mod fuzzing;
pub mod ops;
pub mod path;
pub mod problem;
pub mod reload;
pub mod tls;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::accounts::{store, sync};
use crate::authn::{issuers, revocation};
use crate::config::Config;
use crate::edge::{deadline, drain, proxy, upstream};
use crate::ops::{admin, metrics};

/// Builds the Pingora server for a validated config: the edge proxy, the admin listener and the
/// background services. Binding happens when it runs. With the `path` it was read from,
/// `SIGHUP` reloads it (`reload`).
pub fn build(config: &Config, path: Option<&std::path::Path>) -> Result<Server, Vec<String>> {
    let parts = assemble(config)?;
    build_server(config, parts, path).map_err(|e| vec![e])
}

/// What the wings build from the validated config before anything runs: every runtime object
/// whose making can still refuse the config (key material that does not parse for its
/// algorithm, a signing key jsonwebtoken refuses, ...). `check-config` runs it too, so it
/// reports what `serve` would refuse, and a reload, so it refuses what `serve` would.
#[derive(Debug)]
pub struct Assembled {
    /// Shared by the edge, the endpoints and the admin listener.
    pub keys: Arc<authn::KeySet>,
    pub issuer: authn::issue::TokenIssuer,
    pub routes: edge::routes::RouteTable,
    pub cors: edge::cors::CorsPolicy,
    /// `[assertion]`'s signer, its public key already in `keys`' JWKS.
    pub asserter: Option<Arc<authn::assertion::Asserter>>,
}

/// Builds the [`Assembled`] parts, or every problem found, one line each.
pub fn assemble(config: &Config) -> Result<Assembled, Vec<String>> {
    let mut problems = Vec::new();
    let keys = authn::KeySet::from_config(&config.tokens)
        .map_err(|p| problems.extend(p))
        .ok();
    // The signing key is checked with the verification keys above; its second refusal (by
    // jsonwebtoken, for the same bytes) would only repeat the line.
    let issuer = keys.as_ref().and_then(|_| {
        authn::issue::TokenIssuer::new(&config.tokens)
            .map_err(|p| problems.push(p))
            .ok()
    });
    let routes = edge::routes::RouteTable::new(&config.routes)
        .map_err(|p| problems.push(p))
        .ok();
    let asserter = config.assertion.as_ref().and_then(|a| {
        authn::assertion::Asserter::new(a, &config.tokens.issuer)
            .map_err(|p| problems.push(p))
            .ok()
    });
    match (keys, issuer, routes) {
        (Some(mut keys), Some(issuer), Some(routes)) if problems.is_empty() => {
            if let Some(a) = &asserter {
                keys.publish_also(a.jwk().clone());
            }
            Ok(Assembled {
                keys: Arc::new(keys),
                issuer,
                routes,
                cors: edge::cors::CorsPolicy::new(&config.cors),
                asserter: asserter.map(Arc::new),
            })
        }
        _ => Err(problems.into_iter().map(config::one_line).collect()),
    }
}

fn build_server(
    config: &Config,
    parts: Assembled,
    path: Option<&std::path::Path>,
) -> Result<Server, String> {
    check_bindable(&[
        ("server.listen", config.listen),
        ("server.admin_listen", config.admin_listen),
    ])?;
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

    let (opened, health) = start_store(&config.store)?;
    let lasting = reload::Lasting {
        revocations: Arc::new(revocation::Revocations::default()),
        store: Arc::clone(&opened.store),
        health: Arc::clone(&health),
    };
    store_services(&mut server, config, &opened, &health, &lasting.revocations);
    let gateway = reload::gateway(config, parts, &lasting, None)?;
    on_temporary_runtime(async {
        upstream::settle(&gateway.upstreams, &[]).await;
        Ok(())
    })?;
    let published = Arc::new(reload::Published::new(gateway, &config.sha256));

    let in_flight = Arc::new(drain::InFlight::default());
    // The proxy, with a deadline for every request head (Pingora has none: `deadline`).
    let edge_proxy = proxy::Edge {
        live: Arc::clone(&published.gateway),
        in_flight: Arc::clone(&in_flight),
    };
    let mut edge = Service::new(
        "edge".to_owned(),
        deadline::Guarded::new(
            pingora::proxy::http_proxy(&server.configuration, edge_proxy),
            config.request_head_timeout,
        ),
    );
    add_edge_listener(&mut edge, config)?;

    let mut admin = Service::new(
        "admin".to_owned(),
        admin::Admin {
            loaded: Arc::clone(&published.loaded),
            store_health: Some(health),
        },
    );
    admin.add_tcp(&config.admin_listen.to_string());

    server.add_service(edge);
    server.add_service(admin);
    server.add_service(background_service("drain", drain::Drain { in_flight }));
    server.add_service(background_service(
        "jwks refresh",
        issuers::JwksRefresh {
            issuers: published.issuers(),
        },
    ));
    server.add_service(background_service(
        "health checks",
        upstream::HealthChecks {
            balancers: published.balancers(),
        },
    ));
    on_temporary_runtime(async {
        reload::hangups()
            .map(drop)
            .map_err(|e| format!("cannot listen for SIGHUP: {e}"))
    })?;
    server.add_service(background_service(
        "config reload",
        reload::Reloader {
            path: path.map(std::path::Path::to_owned),
            started: config.clone(),
            published,
            lasting,
        },
    ));
    Ok(server)
}

/// The store's background services: its upkeep, and the revocation sync from its log.
fn store_services(
    server: &mut Server,
    config: &Config,
    opened: &store::Opened,
    health: &Arc<store::StoreHealth>,
    revocations: &Arc<revocation::Revocations>,
) {
    server.add_service(background_service(
        "store upkeep",
        store::upkeep::StoreUpkeep {
            store: Arc::clone(&opened.store),
            migrator: config
                .store
                .auto_migrate
                .then(|| Arc::clone(&opened.migrator)),
            health: Arc::clone(health),
        },
    ));
    server.add_service(background_service(
        "revocation sync",
        sync::RevocationSync {
            store: Arc::clone(&opened.store),
            listener: opened.listener.clone(),
            revocations: Arc::clone(revocations),
            health: Arc::clone(health),
        },
    ));
}

/// Opens the store without connecting and migrates it now when it answers; otherwise the sync
/// service migrates it once it does. The edge starts either way.
fn start_store(conf: &config::Store) -> Result<(store::Opened, Arc<store::StoreHealth>), String> {
    use std::sync::atomic::Ordering::Relaxed;
    let opened = store::open(&conf.url)?;
    let health = Arc::new(store::StoreHealth::default());
    if !conf.auto_migrate {
        health.migrated.store(true, Relaxed);
        return Ok((opened, health));
    }
    match migrate_now(&opened, MIGRATE_AT_START_WITHIN) {
        Ok(()) => {
            health.migrated.store(true, Relaxed);
            health.set_up(true);
        }
        Err(e) => {
            tracing::warn!(error = %e, "store not reachable at start; serving the edge and retrying");
        }
    }
    Ok((opened, health))
}

/// The public listener: plain TCP, or TLS (rustls) offering HTTP/2 by ALPN.
fn add_edge_listener(
    edge: &mut Service<deadline::Guarded<pingora::proxy::HttpProxy<proxy::Edge>>>,
    config: &Config,
) -> Result<(), String> {
    use pingora::listeners::{L4BufferSettings, ListenerConfig};
    // Pingora gives every connection a 64 KiB read buffer, held for as long as an idle
    // keep-alive connection lives. Plain HTTP reads straight into the session's own header
    // and body buffers (none: one copy and 8 KiB per connection less); TLS keeps 8 KiB under
    // rustls, which reads record by record (docs/PERFORMANCE.md, optimisations 1 and 18).
    let read = if config.tls.is_some() {
        DOWNSTREAM_TLS_READ_BUFFER
    } else {
        0
    };
    let mut listener = ListenerConfig::tcp(config.listen.to_string())
        .l4_buffer(L4BufferSettings::default().read(read));
    if let Some(tls) = &config.tls {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
            &path(&tls.cert_file),
            &path(&tls.key_file),
        )
        .map_err(|e| format!("server.tls: {e}"))?;
        settings.enable_h2();
        listener = listener.tls(settings);
    }
    edge.add_listener(listener);
    Ok(())
}

/// Proves each address can be bound now (as Pingora binds: with `SO_REUSEADDR`). Pingora
/// retries a taken port for a while and then panics inside its service, which would leave
/// the admin listener up and ready over a dead public port: better to refuse to start.
fn check_bindable(addrs: &[(&str, std::net::SocketAddr)]) -> Result<(), String> {
    on_temporary_runtime(async {
        for (key, addr) in addrs {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| format!("{key} {addr}: {e}"))?;
            socket
                .set_reuseaddr(true)
                .map_err(|e| format!("{key} {addr}: {e}"))?;
            socket
                .bind(*addr)
                .and_then(|()| socket.listen(1).map(drop))
                .map_err(|e| format!("{key} {addr} cannot be bound: {e}"))?;
        }
        Ok(())
    })
}

/// Runs start-up work (before Pingora has its runtimes) on a runtime of its own.
fn on_temporary_runtime<T>(
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?
        .block_on(work)
}

/// Read buffer per downstream TLS connection (see `add_edge_listener`).
const DOWNSTREAM_TLS_READ_BUFFER: usize = 8 * 1024;

/// How long `serve` waits for the store to take its migrations before serving without it.
const MIGRATE_AT_START_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Applies pending migrations now, waiting at most `within`. Used by `serve` at start and by
/// `portcullis migrate`.
pub fn migrate_now(opened: &store::Opened, within: std::time::Duration) -> Result<(), String> {
    on_temporary_runtime(async {
        match tokio::time::timeout(within, opened.migrator.migrate()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the store did not answer within {within:?}")),
        }
    })
}

/// `portcullis users roles`: applies pending migrations when `migrate` (`store.auto_migrate`:
/// the `roles` column may be new), then replaces the roles of the user with `email`. The roles
/// are checked first (one line why).
pub fn set_roles_now(
    opened: &store::Opened,
    migrate: bool,
    email: &str,
    roles: &[String],
    within: std::time::Duration,
) -> Result<store::User, String> {
    let roles = store::valid_roles(roles)?;
    let email = email.trim();
    on_temporary_runtime(async {
        let work = async {
            if migrate {
                opened.migrator.migrate().await?;
            }
            opened.store.set_roles(email, &roles).await
        };
        match tokio::time::timeout(within, work).await {
            Ok(Ok(Some(user))) => Ok(user),
            Ok(Ok(None)) => Err(format!("no user with the email {email}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the store did not answer within {within:?}")),
        }
    })
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
