//! Graceful shutdown that ends when the work does. On SIGTERM / SIGINT Pingora stops accepting
//! at once and then waits out the whole grace period, even with nothing in flight. This
//! service watches the in-flight count instead: once shutdown has begun and no request is in
//! flight, the process exits 0; the grace period remains the upper bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Requests between their first phase and their end.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    /// Counts a request until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(Arc::clone(self))
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long after the signal a connection accepted just before it gets to send its request.
const SETTLE: Duration = Duration::from_millis(200);
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub struct Drain {
    pub in_flight: Arc<InFlight>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        tokio::time::sleep(SETTLE).await;
        while self.in_flight.count() > 0 {
            tokio::time::sleep(POLL).await;
        }
        tracing::info!("drained: no request in flight; exiting");
        std::process::exit(0);
    }
}
