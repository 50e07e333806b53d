//! Logs: JSON lines on stderr, filtered by `RUST_LOG` (default `info`), written by a thread of
//! their own. A worker thread hands each line to a bounded in-memory queue and goes on; it never
//! waits for stderr (a slow terminal, a full pipe, a stalled log shipper). When the queue is full
//! the line is dropped and counted (`portcullis_log_lines_dropped_total`): under overload the
//! gateway keeps serving and says how much it did not log.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// Lines the queue holds before new ones are dropped: about 2.5 MiB of access lines.
pub const QUEUE_LINES: usize = 8 * 1024;

/// Pingora's crates log whole request headers at debug (a forwarded Bearer token among them):
/// they never go below info, whatever `RUST_LOG` asks.
const PINGORA_CLAMPS: [&str; 4] = [
    "pingora_proxy=info",
    "pingora_core=info",
    "pingora_http=info",
    "pingora_load_balancing=info",
];

/// Flushes the queued lines when dropped: keep it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard(#[allow(dead_code, reason = "held for its Drop")] WorkerGuard);

/// Installs the process's logger (once; later calls change nothing and return a guard of a
/// writer that is never used).
pub fn init() -> LogGuard {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for clamp in PINGORA_CLAMPS {
        filter = filter.add_directive(clamp.parse().expect("static directive"));
    }
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUE_LINES)
        .lossy(true)
        .thread_name("portcullis-log")
        .finish(std::io::stderr());
    super::metrics::count_dropped_log_lines(writer.error_counter());
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_current_span(false)
        .try_init();
    LogGuard(guard)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Barrier};

    use tracing_appender::non_blocking::NonBlockingBuilder;

    /// A writer that blocks until the test lets it go: stderr stalled.
    struct Stalled(Arc<Barrier>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.wait();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stderr_never_blocks_the_caller_and_drops_are_counted() {
        let release = Arc::new(Barrier::new(2));
        let (mut writer, guard) = NonBlockingBuilder::default()
            .buffered_lines_limit(4)
            .lossy(true)
            .finish(Stalled(Arc::clone(&release)));
        let counter = writer.error_counter();
        let started = std::time::Instant::now();
        for i in 0..100 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        // 100 lines against a writer stuck on the first: the caller went on at once.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let dropped = counter.dropped_lines();
        assert!((90..=99).contains(&dropped), "{dropped} dropped");
        super::super::metrics::count_dropped_log_lines(counter);
        let text = String::from_utf8(super::super::metrics::render()).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("portcullis_log_lines_dropped_total "))
            .expect("the counter is exposed");
        let exposed: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(exposed >= dropped, "{line}");
        // Let the writer drain what it kept, so that dropping the guard can flush.
        std::thread::spawn(move || {
            for _ in 0..16 {
                release.wait();
            }
        });
        drop(guard);
    }
}
