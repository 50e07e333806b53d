//! What operators read: the private admin listener (`admin`: `/healthz`, `/readyz`,
//! `/metrics`), every metric (`metrics`), and the log writer (`logging`).

pub mod admin;
pub mod logging;
pub mod metrics;
