//! Long loops on a background thread that give the CPU away now and then.

use std::time::{Duration, Instant};

/// Work between two yields.
pub(crate) const YIELD_EVERY: Duration = Duration::from_micros(200);

/// Yields the CPU every [`YIELD_EVERY`] of work in a long loop (a persist's inserts), so a
/// thread that answers writers, woken meanwhile, need not wait for the end of the loop's
/// scheduler slice (milliseconds, with 2 cores running 3 members in the benchmark).
///
/// A persist of a second's writes is 15-40 ms of inserts. A CPU burst of that size three
/// times a second (one per member) raised the p99 of sequential writes from 2.9-3.0 to
/// 4.8-5.1 ms run in one go, and not at all given away every 0.2 ms (docs/benchmarks.md).
/// `sched_yield` returns at once when nothing else waits to run, and the loop keeps its share
/// of the CPU when everything is busy.
pub(crate) struct Yielder {
    since: Instant,
}

impl Yielder {
    pub(crate) fn new() -> Yielder {
        Yielder {
            since: Instant::now(),
        }
    }

    /// Called between two steps of work.
    pub(crate) fn step(&mut self) {
        if self.since.elapsed() >= YIELD_EVERY {
            std::thread::yield_now();
            self.since = Instant::now();
        }
    }
}
