//! The store as a raft state machine: entries arrive in log order, each a batch of operations,
//! and every operation that passes its precondition gets the next revision
//! (`resourceVersion`), as in etcd. Every member applies the same entries in the same order
//! from the same state, so every member assigns the same revisions; the revision is in the
//! snapshot with the objects. The raft layer (crate `groundwork-raft`) keeps its log in a
//! write-ahead log of its own (`raft-wal/`); the state-machine metadata (last applied log id,
//! membership) travels with the applied objects in the in-memory tail (`tail.rs`) and is
//! persisted with them, in one transaction, when the applies pause, at least every
//! `--raft-persist-every-ms`, and before a snapshot. A crash loses only the tail, which the
//! log applies again.
//!
//! In replicated mode [`Store::write`] goes to the installed [`Proposer`] (the raft leader,
//! directly or forwarded) and returns once the entry is applied here; reads wait for
//! [`Store::linearize`] first.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::store::{HISTORY, META, OBJECTS, read_revision};
use crate::{Committed, Json, Store, StoreError, WriteOp};

/// Raft state-machine metadata, opaque to the store ("applied", "membership").
pub(crate) const RAFT_SM: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_sm");

/// A boxed future, as the [`Proposer`] methods return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Proposes writes to the replicated log and orders reads.
pub trait Proposer: Send + Sync + 'static {
    /// Replicates `op` and returns its result once it is applied on this member.
    fn propose(&self, op: WriteOp) -> BoxFuture<'_, Result<Committed, StoreError>>;
    /// Returns once this member has applied everything committed before the call.
    fn linearize(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// One replicated entry to apply: its log index and its operations (none for blank and
/// membership entries).
pub struct Entry {
    pub index: u64,
    pub ops: Vec<WriteOp>,
}

/// A point-in-time copy of the state machine.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Dump {
    pub revision: u64,
    /// Raft metadata stored with the objects (`RAFT_SM`), by name.
    pub meta: Vec<(String, Vec<u8>)>,
    /// key, revision of last change, object.
    pub objects: Vec<(String, u64, Json)>,
}

impl Store {
    /// The redb database, for the raft log tables kept beside the objects.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// Switches the store to replicated mode: from now on writes go to `p`.
    pub fn set_proposer(&self, p: Arc<dyn Proposer>) {
        *self
            .inner
            .proposer
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    pub(crate) fn proposer(&self) -> Option<Arc<dyn Proposer>> {
        self.inner
            .proposer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until reads here reflect every write committed before the call (a no-op on a
    /// single, unreplicated store).
    pub async fn linearize(&self) -> Result<(), StoreError> {
        match self.proposer() {
            Some(p) => p.linearize().await,
            None => Ok(()),
        }
    }

    /// Raft metadata stored with the objects.
    pub fn sm_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut tail = self.inner.tail();
        if let Some(v) = tail.meta(name) {
            return Ok(Some(v.clone()));
        }
        let txn = tail.snapshot(&self.inner.db)?;
        drop(tail);
        let t = match txn.open_table(RAFT_SM) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(name)?.map(|g| g.value().to_vec()))
    }

    /// Applies replicated entries, with `meta` (the raft metadata after the last of them).
    /// Each operation that passes its precondition gets the next revision; a rejected one
    /// consumes none. Returns, per entry, one result per operation.
    ///
    /// The writes go to the in-memory tail (`tail.rs`), readable at once; [`Store::flush`]
    /// (which [`Store::spawn_flusher`] runs, and a snapshot build) persists them in one
    /// fsync'd transaction. A crash before that loses them here, and openraft applies the
    /// entries again from the raft log.
    pub fn apply_entries(
        &self,
        entries: &[Entry],
        meta: &[(&str, Vec<u8>)],
    ) -> Result<Vec<Vec<Result<Committed, StoreError>>>, StoreError> {
        let inner = &self.inner;
        let mut results = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let mut rev = inner.revision.load(Ordering::Acquire);
        let mut index = *inner.applied_index.borrow();
        {
            let mut tail = inner.tail();
            // Taken under the lock: a persist of what the layers held is in it (tail.rs).
            let txn = tail.snapshot(&inner.db)?;
            let objects = txn.open_table(OBJECTS)?;
            // openraft hands each entry to the state machine once (it resumes from the applied
            // log id stored with the objects), so nothing is skipped here.
            for e in entries {
                index = index.max(e.index);
                let mut out = Vec::with_capacity(e.ops.len());
                for op in &e.ops {
                    let key = op.key();
                    let current: Option<(u64, Json)> = match tail.lookup(key) {
                        Some((r, Some(j))) => Some((*r, j.clone())),
                        Some((_, None)) => None,
                        None => match objects.get(key)? {
                            Some(g) => {
                                let (r, b) = g.value();
                                Some((r, Json::from_stored(b)?))
                            }
                            None => None,
                        },
                    };
                    match crate::store::change(op, current, rev + 1) {
                        Ok((event, prev_revision)) => {
                            rev += 1;
                            out.push(Ok(Committed {
                                revision: rev,
                                object: event.raw.clone(),
                            }));
                            let stored = match op {
                                WriteOp::Put { value, .. } => Some(value.clone()),
                                WriteOp::Delete { .. } => None,
                            };
                            tail.active.bytes += key.len()
                                + event.raw.as_str().len()
                                + event.raw_prev.as_ref().map_or(0, |p| p.as_str().len());
                            tail.active.objects.insert(key.to_string(), (rev, stored));
                            let event = Arc::new(event);
                            tail.active.events.push((event.clone(), prev_revision));
                            events.push(event);
                        }
                        Err(rejected) => out.push(Err(rejected)),
                    }
                }
                results.push(out);
            }
            tail.active.revision = rev;
            for (k, v) in meta {
                tail.active.meta.insert((*k).to_string(), v.clone());
            }
            if tail.active.bytes > crate::tail::PERSIST_BYTES {
                inner.persist_due.notify_one();
            }
        }
        inner.revision.store(rev, Ordering::Release);
        for e in events {
            let _ = inner.events.send(e);
        }
        inner.applied.send_replace(rev);
        inner.applied_index.send_replace(index);
        Ok(results)
    }

    /// Records the raft log index the state reflects (at start, and after a snapshot).
    pub fn set_applied_index(&self, index: u64) {
        self.inner.applied_index.send_replace(index);
    }

    /// Waits until this member has applied the raft log up to `index` (bounded by `timeout`).
    pub async fn wait_applied_index(
        &self,
        index: u64,
        timeout: std::time::Duration,
    ) -> Result<(), StoreError> {
        wait_reached(&self.inner.applied_index, index, timeout, "log index").await
    }

    /// Makes applied state durable while the store is open (replicated mode, where applies
    /// are not fsync'd: see [`Store::apply_entries`]): once no entry has been applied for
    /// `idle`, and at least every `every` under a steady load (sooner when the tail outgrows
    /// its limit).
    ///
    /// Persisting when the writes pause leaves a burst's tail durable while nothing waits on
    /// the CPU and the disk; a tail persisted on the period after a burst ran into the next
    /// writes and was the slowest of them (docs/benchmarks.md).
    pub fn spawn_flusher(&self, every: std::time::Duration, idle: std::time::Duration) {
        use std::time::Instant;
        let weak = Arc::downgrade(&self.inner);
        // Its own handle: the task holds no strong reference to the store while it waits.
        let due = self.inner.persist_due.clone();
        tokio::spawn(async move {
            let mut flushed = None;
            // After a failed persist, retries wait for the period (an early wake-up from a
            // tail still over its limit would otherwise retry at the rate of applies).
            let mut failed = false;
            let mut tick =
                tokio::time::interval((idle / 2).clamp(std::time::Duration::from_millis(1), every));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut attempted = Instant::now();
            // The last index seen applied, and when it was first seen.
            let mut seen = (0, Instant::now());
            loop {
                let urgent = tokio::select! {
                    _ = tick.tick() => false,
                    _ = due.notified(), if !failed => true,
                };
                let Some(inner) = weak.upgrade() else { return };
                let index = *inner.applied_index.borrow();
                let now = Instant::now();
                if index != seen.0 {
                    seen = (index, now);
                }
                if flushed == Some(index) {
                    continue;
                }
                let period_up = now.duration_since(attempted) >= every;
                let quiet = now.duration_since(seen.1) >= idle;
                if !(period_up || (!failed && (urgent || quiet))) {
                    continue;
                }
                attempted = now;
                let store = Store { inner };
                match tokio::task::spawn_blocking(move || store.flush()).await {
                    Ok(Ok(())) => {
                        flushed = Some(index);
                        failed = false;
                    }
                    Ok(Err(e)) => {
                        failed = true;
                        tracing::error!(error = %e, "making applied writes durable failed; retrying")
                    }
                    Err(e) => {
                        failed = true;
                        tracing::error!(error = %e, "the store's flush task failed")
                    }
                }
            }
        });
    }

    /// Makes everything applied so far durable: the in-memory tail of replicated mode
    /// (`tail.rs`) in one fsync'd transaction, which also makes every earlier commit durable;
    /// then compacts history.
    pub fn flush(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _persist = inner.persist.lock().unwrap_or_else(|e| e.into_inner());
        let layer = inner.tail().freeze();
        let started = std::time::Instant::now();
        let txn = inner.db.begin_write()?;
        let compacted = {
            let mut objects = txn.open_table(OBJECTS)?;
            let mut hist = txn.open_table(HISTORY)?;
            let mut m = txn.open_table(META)?;
            let mut sm = txn.open_table(RAFT_SM)?;
            let mut pace = crate::pace::Yielder::new();
            if let Some(layer) = &layer {
                for (k, (rev, v)) in &layer.objects {
                    pace.step();
                    match v {
                        Some(j) => {
                            objects.insert(k.as_str(), (*rev, j.as_str().as_bytes()))?;
                        }
                        None => {
                            objects.remove(k.as_str())?;
                        }
                    }
                }
                let mut chunk = crate::history::Chunk::default();
                for (e, prev_revision) in &layer.events {
                    if let Some((k, v)) = chunk.push(e, *prev_revision) {
                        pace.step();
                        hist.insert(k, v.as_slice())?;
                    }
                }
                if let Some((k, v)) = chunk.take() {
                    hist.insert(k, v.as_slice())?;
                }
                if layer.revision > 0 {
                    m.insert("revision", layer.revision)?;
                }
                for (k, v) in &layer.meta {
                    sm.insert(k.as_str(), v.as_slice())?;
                }
            }
            // History this transaction leaves in the database reaches its revision:
            // compaction, in the same commit, never passes it.
            let persisted = m.get("revision")?.map(|g| g.value()).unwrap_or(1);
            crate::history::compact_in(inner, &mut hist, &mut m, persisted, &mut pace)?
        };
        let written = started.elapsed();
        txn.commit()?;
        {
            let mut tail = inner.tail();
            tail.frozen = None;
            tail.snapshot = None;
        }
        tracing::debug!(
            objects = layer.as_ref().map_or(0, |l| l.objects.len()),
            events = layer.as_ref().map_or(0, |l| l.events.len()),
            write_us = written.as_micros() as u64,
            commit_us = (started.elapsed() - written).as_micros() as u64,
            "persisted"
        );
        if let Some(upto) = compacted {
            inner.compacted.store(upto, Ordering::Release);
        }
        Ok(())
    }

    /// A consistent copy of every object and the raft metadata, from one read snapshot.
    pub fn dump(&self) -> Result<Dump, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let revision = read_revision(&txn)?;
        let mut meta = Vec::new();
        match txn.open_table(RAFT_SM) {
            Ok(t) => {
                for e in t.iter()? {
                    let (k, v) = e?;
                    meta.push((k.value().to_string(), v.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let mut objects = Vec::new();
        for e in txn.open_table(OBJECTS)?.iter()? {
            let (k, v) = e?;
            let (rev, bytes) = v.value();
            objects.push((k.value().to_string(), rev, Json::from_stored(bytes)?));
        }
        Ok(Dump {
            revision,
            meta,
            objects,
        })
    }

    /// Replaces the whole state with `dump` (a snapshot from the leader, covering the log up to
    /// `index`). History is cleared:
    /// watches from before it get `Compacted` (410) and relist; open watches are ended.
    pub fn restore(&self, dump: &Dump, index: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _persist = inner.persist.lock().unwrap_or_else(|e| e.into_inner());
        // Held until the new state is committed: no reader sees the layers gone and the old
        // state still in the database.
        let mut tail = inner.tail();
        *tail = Default::default();
        let txn = inner.db.begin_write()?;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            objects.retain(|_, _| false)?;
            for (k, rev, v) in &dump.objects {
                objects.insert(k.as_str(), (*rev, v.as_str().as_bytes()))?;
            }
            txn.open_table(HISTORY)?.retain(|_, _| false)?;
            let mut m = txn.open_table(META)?;
            m.insert("revision", dump.revision)?;
            m.insert("compacted", dump.revision)?;
            let mut sm = txn.open_table(RAFT_SM)?;
            sm.retain(|_, _| false)?;
            for (k, v) in &dump.meta {
                sm.insert(k.as_str(), v.as_slice())?;
            }
        }
        txn.commit()?;
        drop(tail);
        inner.revision.store(dump.revision, Ordering::Release);
        inner.compacted.store(dump.revision, Ordering::Release);
        inner.resets.fetch_add(1, Ordering::AcqRel);
        inner.applied.send_replace(dump.revision);
        inner.applied_index.send_replace(index);
        tracing::info!(
            revision = dump.revision,
            objects = dump.objects.len(),
            "state replaced by a snapshot"
        );
        Ok(())
    }

    /// Waits until this member has applied `revision` (bounded by `timeout`).
    pub async fn wait_applied(
        &self,
        revision: u64,
        timeout: std::time::Duration,
    ) -> Result<(), StoreError> {
        wait_reached(&self.inner.applied, revision, timeout, "revision").await
    }
}

/// Waits until `counter` reaches `target` (bounded by `timeout`); `what` names it in the error.
async fn wait_reached(
    counter: &tokio::sync::watch::Sender<u64>,
    target: u64,
    timeout: std::time::Duration,
    what: &str,
) -> Result<(), StoreError> {
    let mut rx = counter.subscribe();
    match tokio::time::timeout(timeout, rx.wait_for(|a| *a >= target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(StoreError::Closed),
        Err(_) => Err(StoreError::Unavailable(format!(
            "{what} {target} not applied here within {timeout:?}"
        ))),
    }
}
