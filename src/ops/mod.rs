//! What operators read: the private admin listener (`admin`: `/healthz`, `/readyz`,
//! `/metrics`) and every metric (`metrics`).

pub mod admin;
pub mod metrics;
