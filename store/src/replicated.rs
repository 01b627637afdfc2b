//! The store as a raft state machine: operations arrive with their log index, which becomes
//! their revision (`resourceVersion`), so every member assigns the same one. The raft layer
//! (crate `groundwork-raft`) keeps its log in the same redb file ([`Store::database`]) and its
//! state-machine metadata (last applied log id, membership) next to the objects, written in
//! the same transaction as the operations it describes.
//!
//! In replicated mode [`Store::write`] goes to the installed [`Proposer`] (the raft leader,
//! directly or forwarded) and returns once the entry is applied here; reads wait for
//! [`Store::linearize`] first.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

use crate::store::{HISTORY, META, OBJECTS, apply_one, read_revision};
use crate::{Committed, Store, StoreError, WriteOp};

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

/// One replicated entry to apply: its log index and, for application entries, the operation.
pub struct Entry {
    pub index: u64,
    pub op: Option<WriteOp>,
}

/// A point-in-time copy of the state machine.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Dump {
    pub revision: u64,
    /// Raft metadata stored with the objects (`RAFT_SM`), by name.
    pub meta: Vec<(String, Vec<u8>)>,
    /// key, revision of last change, object.
    pub objects: Vec<(String, u64, Value)>,
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
        let txn = self.inner.db.begin_read()?;
        let t = match txn.open_table(RAFT_SM) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(name)?.map(|g| g.value().to_vec()))
    }

    /// Applies replicated entries in one transaction, with `meta` (the raft metadata after the
    /// last of them) in the same transaction. Each operation's revision is its index; entries
    /// without one (blank, membership) only advance the revision. Returns one result per entry
    /// (`None` for entries without an operation).
    ///
    /// With `durable: false` the commit is not fsync'd: it becomes durable with the next
    /// durable commit to the same file (the raft log's next append, or [`Store::flush`]); a
    /// crash before that loses it and the entries are applied again from the log.
    pub fn apply_entries(
        &self,
        entries: &[Entry],
        meta: &[(&str, Vec<u8>)],
        durable: bool,
    ) -> Result<Vec<Option<Result<Committed, StoreError>>>, StoreError> {
        let inner = &self.inner;
        let mut txn = inner.db.begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        let mut results = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let mut last = inner.revision.load(Ordering::Acquire);
        {
            let mut objects = txn.open_table(OBJECTS)?;
            let mut hist = txn.open_table(HISTORY)?;
            let mut m = txn.open_table(META)?;
            let mut sm = txn.open_table(RAFT_SM)?;
            // openraft hands each entry to the state machine once (it resumes from the applied
            // log id stored with the objects), so nothing is skipped here.
            for e in entries {
                last = last.max(e.index);
                match &e.op {
                    None => results.push(None),
                    Some(op) => match apply_one(&mut objects, &mut hist, op, e.index)? {
                        Ok(event) => {
                            results.push(Some(Ok(Committed {
                                revision: e.index,
                                object: event.object.clone(),
                            })));
                            events.push(event);
                        }
                        Err(rejected) => results.push(Some(Err(rejected))),
                    },
                }
            }
            m.insert("revision", last)?;
            for (k, v) in meta {
                sm.insert(*k, v.as_slice())?;
            }
        }
        txn.commit()?;
        inner.revision.store(last, Ordering::Release);
        for e in events {
            let _ = inner.events.send(Arc::new(e));
        }
        inner.applied.send_replace(last);
        if let Err(e) = crate::history::maybe_compact(inner, inner.retention) {
            tracing::warn!(error = %e, "history compaction failed; will retry after the next write");
        }
        Ok(results)
    }

    /// Makes every earlier commit durable (an empty fsync'd commit).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.begin_write()?.commit()?;
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
            objects.push((k.value().to_string(), rev, serde_json::from_slice(bytes)?));
        }
        Ok(Dump {
            revision,
            meta,
            objects,
        })
    }

    /// Replaces the whole state with `dump` (a snapshot from the leader). History is cleared:
    /// watches from before it get `Compacted` (410) and relist; open watches are ended.
    pub fn restore(&self, dump: &Dump) -> Result<(), StoreError> {
        let inner = &self.inner;
        let txn = inner.db.begin_write()?;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            objects.retain(|_, _| false)?;
            for (k, rev, v) in &dump.objects {
                objects.insert(k.as_str(), (*rev, serde_json::to_vec(v)?.as_slice()))?;
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
        inner.revision.store(dump.revision, Ordering::Release);
        inner.compacted.store(dump.revision, Ordering::Release);
        inner.resets.fetch_add(1, Ordering::AcqRel);
        inner.applied.send_replace(dump.revision);
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
        let mut rx = self.inner.applied.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(|a| *a >= revision)).await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Unavailable(format!(
                "revision {revision} not applied here within {timeout:?}"
            ))),
        }
    }
}
