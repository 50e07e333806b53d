//! One background task per member of a set that a reload republishes (`crate::reload`): the
//! upstreams' health-check loops (`edge::upstream::HealthChecks`) and the issuers' JWKS
//! refreshers (`authn::issuers::JwksRefresh`). A member is known by its `Arc`: a new one gets
//! its task, a removed one's task is stopped, one carried over by the reload keeps its task.

use std::future::Future;
use std::sync::Arc;

use pingora::server::ShutdownWatch;
use tokio::sync::watch;

/// Runs `start(member)` as a task for each member of the set `members` reads off `set`, until
/// shutdown (or the set's publisher goes away).
pub async fn one_task_each<V, T, Fut>(
    mut set: watch::Receiver<V>,
    mut shutdown: ShutdownWatch,
    members: impl Fn(&V) -> Vec<Arc<T>>,
    mut start: impl FnMut(&Arc<T>) -> Fut,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut running: Vec<(Arc<T>, tokio::task::AbortHandle)> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let current = members(&set.borrow_and_update());
        running.retain(|(m, task)| {
            let kept = current.iter().any(|c| Arc::ptr_eq(c, m));
            if !kept {
                task.abort();
            }
            kept
        });
        for m in current {
            if !running.iter().any(|(r, _)| Arc::ptr_eq(r, &m)) {
                let task = tasks.spawn(start(&m));
                running.push((m, task));
            }
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            changed = set.changed() => if changed.is_err() { break },
        }
        while tasks.try_join_next().is_some() {}
    }
    tasks.abort_all();
}
