//! Every metric, defined once. Names start with `portcullis_`; labels are bounded: the route
//! *pattern* (never the raw path), the status, the problem code. No email, token or user id
//! ever becomes a label.

use std::sync::{LazyLock, OnceLock};

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

/// Requests handled at the edge, by route pattern (`none` when no route matched) and status.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests handled, by route pattern and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric"),
    )
});

/// Requests the gateway answered itself with a problem, by problem code.
pub static REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "portcullis_rejections_total",
                "Gateway-made error responses, by problem code",
            ),
            &["code"],
        )
        .expect("valid metric"),
    )
});

/// Time from the request header to the end of the response, by route pattern.
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Request latency through the gateway, by route pattern",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )
        .expect("valid metric"),
    )
});

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

/// Time one token verification (signature, claims, revocation) takes, by outcome.
pub static TOKEN_VERIFY_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "portcullis_token_verification_duration_seconds",
                "Time one token verification takes, by outcome (valid or a problem code)",
            )
            .buckets(seconds_buckets()),
            &["outcome"],
        )
        .expect("valid metric"),
    )
});

/// Time from choosing the upstream to its response header, by route pattern.
pub static UPSTREAM_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "portcullis_upstream_duration_seconds",
                "Time from choosing the upstream to its response header, by route pattern",
            )
            .buckets(seconds_buckets()),
            &["route"],
        )
        .expect("valid metric"),
    )
});

/// Connections to upstreams by whether a pooled connection was reused.
pub static UPSTREAM_CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_connections_total",
                "Upstream connections used, by whether a pooled one was reused",
            ),
            &["reused"],
        )
        .expect("valid metric"),
    )
});

/// Identity endpoint answers, by endpoint and status.
pub static IDENTITY_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "portcullis_identity_requests_total",
                "Identity endpoint answers, by endpoint and status",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric"),
    )
});

/// bcrypt jobs waiting or running.
pub static PASSWORD_QUEUE_DEPTH: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "portcullis_password_queue_depth",
            "bcrypt jobs queued or running",
        )
        .expect("valid metric"),
    )
});

/// Time a bcrypt job waited in the queue before a worker took it.
pub static PASSWORD_WAIT_SECONDS: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_password_queue_wait_seconds",
                "Time a bcrypt job waited for a worker",
            )
            .buckets(seconds_buckets()),
        )
        .expect("valid metric"),
    )
});

/// bcrypt jobs refused because the queue was full or the wait ran out.
pub static PASSWORD_REFUSED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "portcullis_password_refused_total",
            "bcrypt jobs refused (queue full or wait exceeded): answered 503",
        )
        .expect("valid metric"),
    )
});

/// Connections closed because a request head (or identity body) did not arrive in time.
pub static HEAD_TIMEOUTS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "portcullis_request_head_timeouts_total",
            "Connections closed because a request head did not arrive within request_head_timeout_ms",
        )
        .expect("valid metric"),
    )
});

/// The store's connection pool (Postgres): connections by state, and waiters.
pub static STORE_POOL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "portcullis_store_pool_connections",
                "Store pool connections by state (idle, in_use, max) and callers waiting (waiting)",
            ),
            &["state"],
        )
        .expect("valid metric"),
    )
});

/// Entries in the in-memory revocation snapshot.
pub static REVOKED_ENTRIES: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "portcullis_revocation_entries",
            "Entries in the in-memory revocation snapshot",
        )
        .expect("valid metric"),
    )
});

/// 1 while the identity store answers, 0 otherwise.
pub static STORE_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new("portcullis_store_up", "1 when the identity store answers")
            .expect("valid metric"),
    )
});

/// JWKS fetches of each external issuer, by result (`ok` or why it failed).
pub static JWKS_FETCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "portcullis_jwks_fetches_total",
                "JWKS fetches per external issuer, by result (ok, timeout, connect, tls, io, http, status, redirect, too_large, invalid)",
            ),
            &["issuer", "result"],
        )
        .expect("valid metric"),
    )
});

/// Keys in force for each external issuer.
pub static JWKS_KEYS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "portcullis_jwks_keys",
                "Verification keys in force per external issuer",
            ),
            &["issuer"],
        )
        .expect("valid metric"),
    )
});

/// Age of the keys in force for each external issuer (absent before the first fetch).
pub static JWKS_AGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "portcullis_jwks_age_seconds",
                "Seconds since the keys in force were fetched, per external issuer",
            ),
            &["issuer"],
        )
        .expect("valid metric"),
    )
});

/// Tokens naming a `kid` the issuer's key set does not hold.
pub static JWKS_UNKNOWN_KID: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "portcullis_jwks_unknown_kid_total",
                "Tokens of an external issuer naming a kid its key set does not hold",
            ),
            &["issuer"],
        )
        .expect("valid metric"),
    )
});

/// Always 1; the labels say which build is running.
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("portcullis_build_info", "Build information"),
            &["version"],
        )
        .expect("valid metric"),
    )
});

/// The handles a request on one route updates, resolved when the gateway starts: the hot path
/// hashes no label and takes no lock (`with_label_values` does both). A status counter is
/// resolved the first time its status is seen, then read lock-free.
#[derive(Debug)]
pub struct RouteMetrics {
    route: String,
    pub request_seconds: prometheus::Histogram,
    pub upstream_seconds: prometheus::Histogram,
    /// Index `status - 100` for 100..=599; the last slot for anything else.
    by_status: Box<[OnceLock<prometheus::IntCounter>]>,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        Self {
            route: route.to_owned(),
            request_seconds: REQUEST_SECONDS.with_label_values(&[route]),
            upstream_seconds: UPSTREAM_SECONDS.with_label_values(&[route]),
            by_status: (0..=500).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The `portcullis_requests_total` counter for this route and `status`.
    pub fn requests(&self, status: u16) -> &prometheus::IntCounter {
        let (slot, label) = match status {
            100..=599 => (usize::from(status - 100), status.to_string()),
            _ => (500, "other".to_owned()),
        };
        self.by_status[slot]
            .get_or_init(|| REQUESTS.with_label_values(&[self.route.as_str(), &label]))
    }
}

/// [`RouteMetrics`] for every route of a table (same order) and for unmatched requests.
#[derive(Debug)]
pub struct TableMetrics {
    pub routes: Vec<RouteMetrics>,
    pub unmatched: RouteMetrics,
}

impl TableMetrics {
    pub fn new(table: &crate::edge::routes::RouteTable) -> Self {
        Self {
            routes: table
                .routes()
                .iter()
                .map(|r| RouteMetrics::new(&r.pattern))
                .collect(),
            unmatched: RouteMetrics::new("none"),
        }
    }

    pub fn route(&self, index: Option<usize>) -> &RouteMetrics {
        index
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.unmatched)
    }
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
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REJECTIONS);
    LazyLock::force(&REQUEST_SECONDS);
    LazyLock::force(&REVOKED_ENTRIES);
    LazyLock::force(&STORE_UP);
    LazyLock::force(&TOKEN_VERIFY_SECONDS);
    LazyLock::force(&UPSTREAM_SECONDS);
    LazyLock::force(&UPSTREAM_CONNECTIONS);
    LazyLock::force(&IDENTITY_REQUESTS);
    LazyLock::force(&PASSWORD_QUEUE_DEPTH);
    LazyLock::force(&PASSWORD_WAIT_SECONDS);
    LazyLock::force(&PASSWORD_REFUSED);
    LazyLock::force(&HEAD_TIMEOUTS);
    LazyLock::force(&STORE_POOL);
    LazyLock::force(&JWKS_FETCHES);
    LazyLock::force(&JWKS_KEYS);
    LazyLock::force(&JWKS_AGE);
    LazyLock::force(&JWKS_UNKNOWN_KID);
}

/// The Prometheus text exposition of every metric.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    out
}
