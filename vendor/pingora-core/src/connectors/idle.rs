// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! Idle upstream connections, kept without a task per connection.
//!
//! Portcullis patch 1 (vendor/README.md). Upstream Pingora hands every released connection to
//! `pingora_pool::ConnectionPool` and spawns a task that polls it until it is reused, evicted,
//! closed by the server or idle too long: per request a task, an `Arc<Mutex>`, a oneshot
//! channel, a `Notify`, an LRU entry and a timer, and on reuse a wake-up of that task and an
//! await on its lock. Here a released connection goes on a last-in-first-out stack per peer key
//! under one short lock; it is checked when it is taken (idle timeout, then the caller's
//! closed-or-unexpected-data probe) and by one sweep a second per pool, which closes the ones
//! the server closed or that outlived their idle timeout, so a dead connection holds its file
//! descriptor for at most about a second longer than before.

use super::test_reusable_stream;
use crate::protocols::Stream;
use log::debug;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Once, Weak};
use std::time::{Duration, Instant};

/// How often the sweep looks at every idle connection.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

#[derive(Default)]
struct Stacks {
    /// Per peer key, oldest first: the one taken is the most recently released (its server is
    /// the least likely to have closed it).
    by_key: HashMap<u64, Vec<Idle>>,
    count: usize,
}

impl Stacks {
    /// Removes the connection idle the longest, of any key.
    fn evict_oldest(&mut self) -> Option<Idle> {
        let key = *self
            .by_key
            .iter()
            .filter_map(|(k, v)| v.first().map(|i| (k, i.since)))
            .min_by_key(|(_, since)| *since)?
            .0;
        let stack = self.by_key.get_mut(&key)?;
        let idle = stack.remove(0);
        if stack.is_empty() {
            self.by_key.remove(&key);
        }
        self.count -= 1;
        Some(idle)
    }
}

/// The idle connections of one `TransportConnector`, at most `size` of them.
pub(crate) struct IdlePool {
    stacks: Mutex<Stacks>,
    size: usize,
    sweeper: Once,
    unexpected_data: Arc<AtomicU64>,
}

impl IdlePool {
    pub(crate) fn new(size: usize, unexpected_data: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(IdlePool {
            stacks: Mutex::new(Stacks::default()),
            size,
            sweeper: Once::new(),
            unexpected_data,
        })
    }

    /// Keeps `stream` for reuse under `key`. Returns the connections the size limit pushed
    /// out, the longest idle first, for the caller to drop outside the lock.
    pub(crate) fn put(
        self: &Arc<Self>,
        key: u64,
        stream: Stream,
        timeout: Option<Duration>,
    ) -> Option<(Stream, Duration)> {
        self.start_sweeper();
        if self.size == 0 {
            return None;
        }
        let now = Instant::now();
        let mut stacks = self.stacks.lock();
        let evicted = if stacks.count >= self.size {
            stacks.evict_oldest()
        } else {
            None
        };
        stacks.by_key.entry(key).or_default().push(Idle {
            stream,
            since: now,
            timeout,
        });
        stacks.count += 1;
        drop(stacks);
        evicted.map(|i| (i.stream, now.saturating_duration_since(i.since)))
    }

    /// The most recently released connection under `key` that has not outlived its idle
    /// timeout. Expired ones met on the way are closed.
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut stacks = self.stacks.lock();
        let mut found = None;
        if let Some(stack) = stacks.by_key.get_mut(&key) {
            while let Some(idle) = stack.pop() {
                if idle.expired(now) {
                    expired.push(idle);
                } else {
                    found = Some(idle.stream);
                    break;
                }
            }
            let taken = expired.len() + usize::from(found.is_some());
            if stack.is_empty() {
                stacks.by_key.remove(&key);
            }
            stacks.count -= taken;
        }
        drop(stacks);
        if !expired.is_empty() {
            debug!("closing {} idle connections past their timeout", expired.len());
        }
        found
    }

    /// Closes every idle connection that is past its timeout, closed by its server or holding
    /// data nobody asked for. The probes do not block: they read what the reactor already
    /// knows.
    fn sweep(&self) {
        let now = Instant::now();
        let mut dead = Vec::new();
        let mut stacks = self.stacks.lock();
        let mut removed = 0;
        stacks.by_key.retain(|_, stack| {
            let mut i = 0;
            while i < stack.len() {
                let idle = &mut stack[i];
                if idle.expired(now) || !test_reusable_stream(&mut idle.stream, &self.unexpected_data)
                {
                    dead.push(stack.remove(i));
                    removed += 1;
                } else {
                    i += 1;
                }
            }
            !stack.is_empty()
        });
        stacks.count -= removed;
        drop(stacks);
        if !dead.is_empty() {
            debug!("swept {} idle connections", dead.len());
        }
    }

    /// One sweep task per pool, on the runtime of its first release; it ends with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.call_once(|| {
            let pool: Weak<Self> = Arc::downgrade(self);
            pingora_runtime::current_handle().spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(pool) = pool.upgrade() else { return };
                    pool.sweep();
                }
            });
        });
    }
}
