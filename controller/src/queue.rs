//! The work queue of one controller: keys (object names) due at an instant, deduplicated per
//! key, never handed to two workers at once. A key added while it is being reconciled is
//! parked and becomes due again when that reconcile is done (so no change is lost and no key
//! runs twice concurrently). The shape of client-go's workqueue, with delays built in.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    /// Keys waiting, ordered by when they are due (ties by key).
    order: BTreeSet<(Instant, String)>,
    /// Each waiting key's due time (the key of `order`).
    due: HashMap<String, Instant>,
    /// Keys a worker holds now.
    running: HashSet<String>,
    /// Keys added while running: due again at this instant once `done`.
    parked: HashMap<String, Instant>,
    closed: bool,
}

/// A delaying, deduplicating work queue.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
}

impl WorkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `key` due at `at`; if it is already waiting, the earlier time wins.
    pub fn add_at(&self, key: &str, at: Instant) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        if st.running.contains(key) {
            let e = st.parked.entry(key.to_string()).or_insert(at);
            *e = (*e).min(at);
            return;
        }
        match st.due.get(key).copied() {
            Some(old) if old <= at => return,
            Some(old) => {
                st.order.remove(&(old, key.to_string()));
            }
            None => {}
        }
        st.due.insert(key.to_string(), at);
        st.order.insert((at, key.to_string()));
        drop(st);
        self.notify.notify_waiters();
    }

    /// Makes `key` due now.
    pub fn add(&self, key: &str) {
        self.add_at(key, Instant::now());
    }

    /// Waits for the next due key and marks it running; `None` once the queue is closed.
    /// Call [`WorkQueue::done`] when finished with it.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                match st.order.first().cloned() {
                    Some((at, key)) if at <= Instant::now() => {
                        st.order.remove(&(at, key.clone()));
                        st.due.remove(&key);
                        st.running.insert(key.clone());
                        return Some(key);
                    }
                    Some((at, _)) => Some(at),
                    None => None,
                }
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Releases `key`; if it was added while running, it becomes due again.
    pub fn done(&self, key: &str) {
        let mut st = self.lock();
        st.running.remove(key);
        if let Some(at) = st.parked.remove(key) {
            drop(st);
            self.add_at(key, at);
        }
    }

    /// Keys waiting (due now or later), including those parked behind a running reconcile.
    pub fn len(&self) -> usize {
        let st = self.lock();
        st.due.len() + st.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every waiting key (running ones finish); used when leadership is lost.
    pub fn clear(&self) {
        let mut st = self.lock();
        st.order.clear();
        st.due.clear();
        st.parked.clear();
    }

    /// Wakes every waiter with `None`; nothing is accepted afterwards.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn keys_are_deduplicated_and_the_earlier_time_wins() {
        let q = WorkQueue::new();
        let now = Instant::now();
        q.add_at("a", now + Duration::from_secs(10));
        q.add_at("a", now + Duration::from_secs(1));
        q.add_at("a", now + Duration::from_secs(5));
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await.as_deref(), Some("b"));
        let t = Instant::now();
        assert_eq!(q.next().await.as_deref(), Some("a"));
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_while_running_waits_for_done() {
        let q = Arc::new(WorkQueue::new());
        q.add("a");
        assert_eq!(q.next().await.as_deref(), Some("a"));
        q.add("a");
        assert_eq!(q.len(), 1);
        // Not handed out while running.
        let q2 = q.clone();
        let second = tokio::spawn(async move { q2.next().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        q.done("a");
        let got = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("due after done")
            .unwrap();
        assert_eq!(got.as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn close_wakes_waiters() {
        let q = Arc::new(WorkQueue::new());
        let q2 = q.clone();
        let w = tokio::spawn(async move { q2.next().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        assert_eq!(w.await.unwrap(), None);
    }
}
