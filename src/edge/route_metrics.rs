//! The per-route metric handles the proxy phases update, resolved once when the gateway starts.

use std::sync::OnceLock;

use crate::edge::routes::RouteTable;
use crate::ops::metrics;

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
    /// Resolved on the route's first claim-rule refusal: routes without rules show none.
    claim_rule_refusals: OnceLock<prometheus::IntCounter>,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        Self {
            route: route.to_owned(),
            request_seconds: metrics::REQUEST_SECONDS.with_label_values(&[route]),
            upstream_seconds: metrics::UPSTREAM_SECONDS.with_label_values(&[route]),
            by_status: (0..=500).map(|_| OnceLock::new()).collect(),
            claim_rule_refusals: OnceLock::new(),
        }
    }

    /// The `portcullis_claim_rule_refusals_total` counter for this route.
    pub fn claim_rule_refusals(&self) -> &prometheus::IntCounter {
        self.claim_rule_refusals
            .get_or_init(|| metrics::CLAIM_RULE_REFUSALS.with_label_values(&[self.route.as_str()]))
    }

    /// The `portcullis_requests_total` counter for this route and `status`.
    pub fn requests(&self, status: u16) -> &prometheus::IntCounter {
        let (slot, label) = match status {
            100..=599 => (usize::from(status - 100), status.to_string()),
            _ => (500, "other".to_owned()),
        };
        self.by_status[slot]
            .get_or_init(|| metrics::REQUESTS.with_label_values(&[self.route.as_str(), &label]))
    }
}

/// [`RouteMetrics`] for every route of a table (same order) and for unmatched requests.
#[derive(Debug)]
pub struct TableMetrics {
    pub routes: Vec<RouteMetrics>,
    pub unmatched: RouteMetrics,
}

impl TableMetrics {
    pub fn new(table: &RouteTable) -> Self {
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
