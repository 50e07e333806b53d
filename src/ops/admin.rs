//! The private admin listener: `/healthz` (the process serves), `/readyz` (the gateway can do
//! its job: keys loaded, every external issuer's JWKS fetched once, store migrated and
//! answering; and which config is loaded), `/metrics` (Prometheus text). Each path is one arm of
//! `answer`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::accounts::store::StoreHealth;
use crate::authn::KeySet;
use crate::authn::issuers::Issuers;
use crate::problem::{Code, Problem};

#[derive(Debug)]
pub struct Admin {
    /// What the config in force loaded, swapped by a reload.
    pub loaded: Arc<ArcSwap<Loaded>>,
    /// Present when the gateway serves the identity endpoints: the store must answer.
    pub store_health: Option<Arc<StoreHealth>>,
}

/// What readiness looks at of one loaded config.
#[derive(Debug)]
pub struct Loaded {
    pub keys: Arc<KeySet>,
    /// External issuers: each must have fetched its JWKS once before the gateway is ready
    /// (and stays ready on its last good keys while the endpoint fails).
    pub issuers: Arc<Issuers>,
    /// The config text's SHA-256, hex.
    pub sha256: String,
}

impl Admin {
    /// `(status, content type, body)` for a method and path.
    pub fn answer(&self, method: &http::Method, path: &str) -> (u16, &'static str, Vec<u8>) {
        let get = method == http::Method::GET || method == http::Method::HEAD;
        match (get, path) {
            (true, "/healthz") => (200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            (true, "/readyz") => {
                let loaded = self.loaded.load();
                let keys = !loaded.keys.keys.is_empty();
                let health = self.store_health.as_deref();
                let store = health.is_none_or(StoreHealth::ready);
                let issuers = loaded.issuers.ready();
                let ready = keys && store && issuers;
                let body = serde_json::json!({
                    "status": if ready { "ready" } else { "not ready" },
                    "keys": keys,
                    "store": store,
                    "store_migrated": health.is_none_or(|h| h.migrated.load(std::sync::atomic::Ordering::Relaxed)),
                    "store_answers": health.is_none_or(|h| h.up.load(std::sync::atomic::Ordering::Relaxed)),
                    "issuers": loaded.issuers.status(),
                    "config_sha256": loaded.sha256,
                });
                let status = if ready { 200 } else { 503 };
                (status, "application/json", body.to_string().into_bytes())
            }
            (true, "/metrics") => {
                self.loaded.load().issuers.update_age_gauges();
                (
                    200,
                    "text/plain; version=0.0.4",
                    crate::ops::metrics::render(),
                )
            }
            _ => {
                let p = Problem::new(Code::NotFound);
                (p.status(), "application/problem+json", p.body().to_vec())
            }
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, content_type, body) = self.answer(&req.method, req.uri.path());
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .header("cache-control", "no-store")
            .body(body)
            .expect("static parts make a valid response")
    }
}
