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
}

/// The Prometheus text exposition of every metric.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    out
}
