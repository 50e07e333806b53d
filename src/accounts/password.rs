//! Password hashing: bcrypt on a dedicated pool of OS threads, never on the proxy's async
//! workers. The queue in front of the pool is bounded and so is the wait: when sign-ins flood
//! in faster than bcrypt can serve them, callers get `Saturated` at once (→ 503 + Retry-After)
//! instead of queueing without end and slowing the proxy down.
//!
//! The workers run at a lower CPU priority ([`WORKER_NICE`]) than the proxy: bcrypt is built to
//! burn CPU, and on a busy edge a sign-in flood must not take the cores that verify and proxy
//! everyone else's requests. Sign-ins get what the proxy leaves, and the bounded queue turns the
//! rest into fast 503s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use tokio::sync::oneshot;

/// The bcrypt workers' nice value. At 15 the scheduler weighs a worker at about a thirtieth of
/// a proxy thread when both want a core (10 was a tenth: docs/PERFORMANCE.md, 6 and 20); an
/// idle machine still gives bcrypt all it asks for.
pub const WORKER_NICE: i32 = 15;

/// How long a caller waits for a job a worker has already started. `max_wait` bounds the wait
/// for a worker; a started bcrypt run is let finish (at a low priority on a busy machine it can
/// take longer than `max_wait`), up to this.
const MAX_RUN: Duration = Duration::from_secs(30);

/// Why a hash or a check did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The queue is full or the wait ran out: retry later.
    #[error("password hashing is saturated")]
    Saturated,
    /// A stored hash could not be parsed, or bcrypt failed.
    #[error("password hashing failed")]
    Failed,
}

/// One bcrypt run waiting for a worker.
struct Job {
    enqueued: std::time::Instant,
    /// Set when a worker takes it: the caller then waits for the end.
    started: Arc<AtomicBool>,
    password: Vec<u8>,
    work: Work,
}

enum Work {
    Hash {
        cost: u32,
        reply: oneshot::Sender<Result<String, PoolError>>,
    },
    Verify {
        hash: Arc<str>,
        reply: oneshot::Sender<Result<bool, PoolError>>,
    },
}

impl Job {
    fn new(password: &[u8], work: Work) -> (Self, Arc<AtomicBool>) {
        let started = Arc::new(AtomicBool::new(false));
        let job = Self {
            enqueued: std::time::Instant::now(),
            started: Arc::clone(&started),
            password: password.to_vec(),
            work,
        };
        (job, started)
    }
}

/// A bounded bcrypt worker pool.
#[derive(Clone)]
pub struct PasswordPool {
    jobs: SyncSender<Job>,
    cost: u32,
    max_wait: Duration,
    /// A hash of a random password at the configured cost: unknown emails are checked against
    /// it so they take as long as known ones.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordPool")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl PasswordPool {
    /// `workers` threads (default: the machine's cores), `queue` waiting jobs at most, each
    /// waiting at most `max_wait` for its result.
    pub fn new(cost: u32, workers: usize, queue: usize, max_wait: Duration) -> Self {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || {
                    lower_priority();
                    worker(&rx);
                })
                .expect("spawn bcrypt worker");
        }
        let random: [u8; 24] = rand_bytes();
        let dummy_hash = bcrypt::hash(random, cost).expect("bcrypt of a fixed-size input");
        Self {
            jobs,
            cost,
            max_wait,
            dummy_hash: dummy_hash.into(),
        }
    }

    /// Pool sized to the machine: one worker per core, two queued jobs per worker (a burst of
    /// sign-ins waits; a flood beyond it gets 503 at once, or after `max_wait` if no worker
    /// took its job by then).
    /// The bcrypt cost new hashes get.
    pub const fn cost(&self) -> u32 {
        self.cost
    }

    pub fn for_machine(cost: u32) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self::new(cost, cores, cores * 2, Duration::from_secs(2))
    }

    pub async fn hash(&self, password: &[u8]) -> Result<String, PoolError> {
        let (reply, rx) = oneshot::channel();
        let (job, started) = Job::new(
            password,
            Work::Hash {
                cost: self.cost,
                reply,
            },
        );
        self.submit(job)?;
        self.wait(rx, &started).await
    }

    /// Checks `password` against `hash`; `None` checks against the dummy hash (and is false),
    /// so that an unknown email costs what a wrong password costs.
    pub async fn verify(&self, password: &[u8], hash: Option<&str>) -> Result<bool, PoolError> {
        let (reply, rx) = oneshot::channel();
        let known = hash.is_some();
        let hash: Arc<str> = hash.map_or_else(|| Arc::clone(&self.dummy_hash), Arc::from);
        let (job, started) = Job::new(password, Work::Verify { hash, reply });
        self.submit(job)?;
        let ok = self.wait(rx, &started).await?;
        Ok(ok && known)
    }

    fn submit(&self, job: Job) -> Result<(), PoolError> {
        // The gauge is the queue depth: up on submit, down when a worker finishes or refuses.
        crate::ops::metrics::PASSWORD_QUEUE_DEPTH.inc();
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                crate::ops::metrics::PASSWORD_QUEUE_DEPTH.dec();
                crate::ops::metrics::PASSWORD_REFUSED.inc();
                Err(PoolError::Saturated)
            }
        }
    }

    /// Waits `max_wait` for a worker to take the job; a job a worker has started is waited for
    /// until it ends (at most [`MAX_RUN`]). Dropping `rx` tells a worker not to start it.
    async fn wait<T>(
        &self,
        mut rx: oneshot::Receiver<Result<T, PoolError>>,
        started: &AtomicBool,
    ) -> Result<T, PoolError> {
        let answer = match tokio::time::timeout(self.max_wait, &mut rx).await {
            Ok(answer) => Ok(answer),
            Err(_) if started.load(Ordering::Acquire) => tokio::time::timeout(MAX_RUN, rx).await,
            Err(elapsed) => Err(elapsed),
        };
        match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PoolError::Failed),
            Err(_) => {
                crate::ops::metrics::PASSWORD_REFUSED.inc();
                Err(PoolError::Saturated)
            }
        }
    }
}

/// Lowers the calling thread's CPU priority to [`WORKER_NICE`] (Linux: per thread).
fn lower_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), WORKER_NICE) {
        tracing::warn!(error = %e, "bcrypt worker keeps the default CPU priority");
    }
}

fn worker(rx: &std::sync::Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        job.started.store(true, Ordering::Release);
        crate::ops::metrics::PASSWORD_WAIT_SECONDS.observe(job.enqueued.elapsed().as_secs_f64());
        // A caller that gave up waiting no longer needs the work.
        match job.work {
            Work::Hash { cost, reply } if !reply.is_closed() => {
                let _ =
                    reply.send(bcrypt::hash(&job.password, cost).map_err(|_| PoolError::Failed));
            }
            Work::Verify { hash, reply } if !reply.is_closed() => {
                let _ =
                    reply.send(bcrypt::verify(&job.password, &hash).map_err(|_| PoolError::Failed));
            }
            Work::Hash { .. } | Work::Verify { .. } => {}
        }
        crate::ops::metrics::PASSWORD_QUEUE_DEPTH.dec();
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).expect("system randomness");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of every thread of this process named `bcrypt-*`.
    fn bcrypt_thread_nice_values() -> Vec<i32> {
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("bcrypt-") {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            // Fields after the `(comm)`: state is field 3, nice is field 19.
            let after = stat.rsplit_once(')').unwrap().1;
            out.push(after.split_whitespace().nth(16).unwrap().parse().unwrap());
        }
        out
    }

    #[tokio::test]
    async fn bcrypt_workers_run_below_the_proxy_cpu_priority() {
        let pool = PasswordPool::new(4, 2, 2, Duration::from_secs(5));
        // A finished job means its worker started, and lowered itself first.
        pool.hash(b"correct horse").await.unwrap();
        pool.hash(b"correct horse").await.unwrap();
        let nice = bcrypt_thread_nice_values();
        assert!(nice.len() >= 2, "bcrypt workers found: {nice:?}");
        assert!(nice.iter().all(|n| *n == WORKER_NICE), "{nice:?}");
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let pool = PasswordPool::new(4, 1, 4, Duration::from_secs(5));
        let hash = pool.hash(b"correct horse").await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(pool.verify(b"correct horse", Some(&hash)).await.unwrap());
        assert!(!pool.verify(b"wrong horse", Some(&hash)).await.unwrap());
        assert!(!pool.verify(b"anything", None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_answers_saturated_at_once() {
        let pool = PasswordPool::new(12, 1, 1, Duration::from_secs(10));
        let results = futures_join(&pool).await;
        let refused: Vec<_> = results
            .iter()
            .filter(|(r, _)| *r == Err(PoolError::Saturated))
            .collect();
        // One runs and one waits (or, if the worker had not yet taken the first, only one
        // waits): the other four or five are refused.
        assert!(refused.len() >= 4, "{results:?}");
        // The refused ones did not wait for bcrypt.
        assert!(
            refused
                .iter()
                .all(|(_, took)| *took < Duration::from_secs(1)),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn a_started_run_finishes_past_max_wait_and_a_waiting_job_is_refused_at_it() {
        // One worker, one queue slot, a wait far shorter than one bcrypt run.
        let pool = PasswordPool::new(12, 1, 1, Duration::from_millis(50));
        let first = tokio::spawn({
            let p = pool.clone();
            async move { p.hash(b"password").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = std::time::Instant::now();
        let second = pool.hash(b"password").await;
        assert_eq!(second, Err(PoolError::Saturated));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "refused after {:?}",
            t.elapsed()
        );
        let first = first.await.unwrap();
        assert!(first.is_ok_and(|h| h.starts_with("$2b$12$")));
    }

    /// Six hashes at once: each result with how long it took.
    async fn futures_join(pool: &PasswordPool) -> Vec<(Result<String, PoolError>, Duration)> {
        let mut handles = Vec::new();
        for _ in 0..6 {
            let p = pool.clone();
            handles.push(tokio::spawn(async move {
                let t = std::time::Instant::now();
                let r = p.hash(b"password").await;
                (r, t.elapsed())
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
