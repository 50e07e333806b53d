//! Every metric, defined once. Names start with `portcullis_`; labels are bounded: the route
//! *pattern* (never the raw path), the status, the problem code. No email, token or user id
//! ever becomes a label.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

/// Defines every metric once: its static, and its place in the list `init` registers.
macro_rules! metrics {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $make:expr;)*) => {
        $(
            $(#[$doc])*
            pub static $name: LazyLock<$ty> =
                LazyLock::new(|| register($make.expect("valid metric")));
        )*

        /// Forces every metric of the list, so that `/metrics` lists them from the first
        /// scrape.
        fn register_all() {
            $(LazyLock::force(&$name);)*
        }
    };
}

metrics! {
    /// Requests handled at the edge, by route pattern (`none` when no route matched) and status.
    REQUESTS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_requests_total",
            "Requests handled, by route pattern and status",
        ),
        &["route", "status"],
    );

    /// Requests the gateway answered itself with a problem, by problem code.
    REJECTIONS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_rejections_total",
            "Gateway-made error responses, by problem code",
        ),
        &["code"],
    );

    /// Verified tokens refused by a route's claim rules (403 `insufficient_scope`), by route
    /// pattern.
    CLAIM_RULE_REFUSALS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_claim_rule_refusals_total",
            "Valid tokens refused by a route's require / require_scopes, by route pattern",
        ),
        &["route"],
    );

    /// Identity assertions handed to upstreams (CONTRACT section 9), by how: `minted` or
    /// `cached`.
    ASSERTIONS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_assertions_total",
            "Signed identity assertions handed to upstreams, minted or from the cache",
        ),
        &["result"],
    );

    /// Forward-auth answers (CONTRACT section 11), by asking proxy and result (`allow` or the
    /// problem code).
    FORWARD_AUTH_DECISIONS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_forward_auth_decisions_total",
            "Forward-auth answers, by asking proxy (nginx, traefik, envoy) and result",
        ),
        &["proxy", "result"],
    );

    /// Time from the request header to the end of the response, by route pattern.
    REQUEST_SECONDS: HistogramVec = HistogramVec::new(
        HistogramOpts::new(
            "portcullis_request_duration_seconds",
            "Request latency through the gateway, by route pattern",
        )
        .buckets(vec![
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["route"],
    );

    /// Time one token verification (signature, claims, revocation) takes, by outcome.
    TOKEN_VERIFY_SECONDS: HistogramVec = HistogramVec::new(
        HistogramOpts::new(
            "portcullis_token_verification_duration_seconds",
            "Time one token verification takes, by outcome (valid or a problem code)",
        )
        .buckets(seconds_buckets()),
        &["outcome"],
    );

    /// Time from choosing the upstream to its response header, by route pattern.
    UPSTREAM_SECONDS: HistogramVec = HistogramVec::new(
        HistogramOpts::new(
            "portcullis_upstream_duration_seconds",
            "Time from choosing the upstream to its response header, by route pattern",
        )
        .buckets(seconds_buckets()),
        &["route"],
    );

    /// Connections to upstreams by whether a pooled connection was reused.
    UPSTREAM_CONNECTIONS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_upstream_connections_total",
            "Upstream connections used, by whether a pooled one was reused",
        ),
        &["reused"],
    );

    /// Identity endpoint answers, by endpoint and status.
    IDENTITY_REQUESTS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_identity_requests_total",
            "Identity endpoint answers, by endpoint and status",
        ),
        &["endpoint", "status"],
    );

    /// bcrypt jobs waiting or running.
    PASSWORD_QUEUE_DEPTH: IntGauge = IntGauge::new(
        "portcullis_password_queue_depth",
        "bcrypt jobs queued or running",
    );

    /// Time a bcrypt job waited in the queue before a worker took it.
    PASSWORD_WAIT_SECONDS: prometheus::Histogram = prometheus::Histogram::with_opts(
        HistogramOpts::new(
            "portcullis_password_queue_wait_seconds",
            "Time a bcrypt job waited for a worker",
        )
        .buckets(seconds_buckets()),
    );

    /// bcrypt jobs refused because the queue was full or the wait ran out.
    PASSWORD_REFUSED: prometheus::IntCounter = prometheus::IntCounter::new(
        "portcullis_password_refused_total",
        "bcrypt jobs refused (queue full or wait exceeded): answered 503",
    );

    /// Cluster-wide limit checks the store could not answer (down, or slower than 300 ms):
    /// decided by the replica's own count, by limit (`ip`, `email`).
    RATE_LIMIT_FALLBACKS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_rate_limit_fallbacks_total",
            "Cluster-wide rate-limit checks decided by the replica's own count because the store did not answer",
        ),
        &["limit"],
    );

    /// Config reloads (SIGHUP), by result: `ok` (the new config serves) or `error` (refused,
    /// the old one keeps serving).
    CONFIG_RELOADS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_config_reloads_total",
            "Config reloads by SIGHUP, by result",
        ),
        &["result"],
    );

    /// Long-lived connections (upgraded, streamed) ended because their token ended
    /// (`edge::lifetime`).
    CONNECTIONS_CLOSED: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_connections_closed_total",
            "Upgraded connections and streamed responses the gateway closed because their token expired or was revoked",
        ),
        &["reason"],
    );

    /// Connections closed because a request head (or identity body) did not arrive in time.
    HEAD_TIMEOUTS: prometheus::IntCounter = prometheus::IntCounter::new(
        "portcullis_request_head_timeouts_total",
        "Connections closed because a request head did not arrive within request_head_timeout_ms",
    );

    /// The store's connection pool (Postgres): connections by state, and waiters.
    STORE_POOL: IntGaugeVec = IntGaugeVec::new(
        Opts::new(
            "portcullis_store_pool_connections",
            "Store pool connections by state (idle, in_use, max) and callers waiting (waiting)",
        ),
        &["state"],
    );

    /// Entries in the in-memory revocation snapshot.
    REVOKED_ENTRIES: IntGauge = IntGauge::new(
        "portcullis_revocation_entries",
        "Entries in the in-memory revocation snapshot",
    );

    /// 1 while the identity store answers, 0 otherwise.
    STORE_UP: IntGauge = IntGauge::new("portcullis_store_up", "1 when the identity store answers");

    /// JWKS fetches of each external issuer, by result (`ok` or why it failed).
    JWKS_FETCHES: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_jwks_fetches_total",
            "JWKS fetches per external issuer, by result (ok, timeout, connect, tls, io, http, status, redirect, too_large, invalid)",
        ),
        &["issuer", "result"],
    );

    /// Keys of the last good JWKS of each external issuer that were skipped (unsupported
    /// type, curve or algorithm, another use, malformed): the set keeps its usable keys.
    JWKS_KEYS_SKIPPED: IntGaugeVec = IntGaugeVec::new(
        Opts::new(
            "portcullis_jwks_keys_skipped",
            "Keys skipped in each issuer's last good JWKS (unsupported or malformed)",
        ),
        &["issuer"],
    );

    /// Keys in force for each external issuer.
    JWKS_KEYS: IntGaugeVec = IntGaugeVec::new(
        Opts::new(
            "portcullis_jwks_keys",
            "Verification keys in force per external issuer",
        ),
        &["issuer"],
    );

    /// Age of the keys in force for each external issuer (absent before the first fetch).
    JWKS_AGE: IntGaugeVec = IntGaugeVec::new(
        Opts::new(
            "portcullis_jwks_age_seconds",
            "Seconds since the keys in force were fetched, per external issuer",
        ),
        &["issuer"],
    );

    /// Tokens naming a `kid` the issuer's key set does not hold.
    JWKS_UNKNOWN_KID: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_jwks_unknown_kid_total",
            "Tokens of an external issuer naming a kid its key set does not hold",
        ),
        &["issuer"],
    );

    /// How each request's wait on an unknown kid ended (`authn::issuers::refetch`).
    JWKS_KID_WAITS: IntCounterVec = IntCounterVec::new(
        Opts::new(
            "portcullis_jwks_kid_waits_total",
            "Requests that waited for a JWKS refetch on an unknown kid, by result (found, unknown, timeout, refused)",
        ),
        &["issuer", "result"],
    );

    /// Log lines dropped because the log writer's queue was full (`ops::logging`).
    LOG_LINES_DROPPED: prometheus::IntCounter = prometheus::IntCounter::new(
        "portcullis_log_lines_dropped_total",
        "Log lines dropped because the log writer fell behind (the queue was full)",
    );

    /// Always 1; the labels say which build is running.
    BUILD_INFO: IntGaugeVec = IntGaugeVec::new(
        Opts::new("portcullis_build_info", "Build information"),
        &["version"],
    );
}

fn seconds_buckets() -> Vec<f64> {
    vec![
        0.000_001,
        0.000_002_5,
        0.000_005,
        0.000_01,
        0.000_025,
        0.000_05,
        0.000_1,
        0.000_25,
        0.000_5,
        0.001,
        0.002_5,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
    ]
}

/// Successful verifications, the common case, resolved once.
pub static TOKEN_VALID_SECONDS: LazyLock<prometheus::Histogram> =
    LazyLock::new(|| TOKEN_VERIFY_SECONDS.with_label_values(&["valid"]));
pub static UPSTREAM_REUSED: LazyLock<prometheus::IntCounter> =
    LazyLock::new(|| UPSTREAM_CONNECTIONS.with_label_values(&["true"]));
pub static UPSTREAM_NEW: LazyLock<prometheus::IntCounter> =
    LazyLock::new(|| UPSTREAM_CONNECTIONS.with_label_values(&["false"]));

/// Registers every metric so that `/metrics` lists them from the first scrape.
pub fn init() {
    register_all();
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
}

/// The Prometheus text exposition of every metric.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    out
}
