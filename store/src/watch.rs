//! A watch: history replay, then live events, with no gap and no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::{Store, StoreError, WatchEvent};

/// Changes after a revision, in revision order.
pub struct WatchStream {
    store: Store,
    rx: broadcast::Receiver<Arc<WatchEvent>>,
    last: u64,
    pending: VecDeque<Arc<WatchEvent>>,
    /// The store's reset count at the start: a snapshot install ends the watch.
    resets: u64,
}

impl WatchStream {
    pub(crate) fn new(
        store: Store,
        rx: broadcast::Receiver<Arc<WatchEvent>>,
        last: u64,
        pending: Vec<Arc<WatchEvent>>,
    ) -> Self {
        let resets = store
            .inner
            .resets
            .load(std::sync::atomic::Ordering::Acquire);
        Self {
            store,
            rx,
            last,
            pending: pending.into(),
            resets,
        }
    }

    /// The revision of the last event delivered (or the starting revision).
    pub fn last_revision(&self) -> u64 {
        self.last
    }

    /// The next change. A watcher that falls behind the live channel catches up from
    /// history; if history was compacted past it meanwhile, this fails with `Compacted`.
    pub async fn recv(&mut self) -> Result<Arc<WatchEvent>, StoreError> {
        loop {
            if self
                .store
                .inner
                .resets
                .load(std::sync::atomic::Ordering::Acquire)
                != self.resets
            {
                return Err(StoreError::Compacted {
                    requested: self.last,
                    compacted: self.store.compacted(),
                });
            }
            if let Some(e) = self.pending.pop_front() {
                if e.revision <= self.last {
                    continue;
                }
                self.last = e.revision;
                return Ok(e);
            }
            match self.rx.recv().await {
                Ok(e) if e.revision <= self.last => continue,
                Ok(e) => {
                    self.last = e.revision;
                    return Ok(e);
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(
                        skipped = n,
                        after = self.last,
                        "watcher lagged; replaying from history"
                    );
                    self.rx = self.rx.resubscribe();
                    self.pending = crate::history::after(&self.store.inner, self.last)?.into();
                }
                Err(RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }
}
