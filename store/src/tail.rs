//! Replicated mode: the writes applied since the last persist, kept in memory in front of
//! the database.
//!
//! A raft member applies every committed entry at once (the leader answers its writers after
//! the apply) but writes redb only when `spawn_flusher` persists (once the applies pause, or
//! every period under a steady load): one fsync'd transaction then instead of one
//! copy-on-write transaction per entry, which was half a follower's CPU
//! (docs/benchmarks.md). Until a persist has committed them, the applied writes live here:
//! the objects they changed (or deleted), their events with their previous objects, the last
//! revision, and the raft metadata of the last applied entry.
//!
//! Consistency with the database: a reader looks here first and, holding the lock, takes the
//! shared read snapshot ([`Tail::snapshot`]); a persist commits the layer it froze, then
//! (under the lock) drops it and the snapshot. So a reader either finds a write in a layer or
//! its snapshot already contains the commit that persisted it. A crash loses the layers; the raft log holds their entries,
//! and openraft applies them again after the last applied log id the database records.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Json, WatchEvent};

/// Writes applied together since a persist.
#[derive(Default)]
pub(crate) struct Layer {
    /// key → (revision of the change, the object; `None`: deleted).
    pub(crate) objects: BTreeMap<String, (u64, Option<Json>)>,
    /// The events in revision order, each with the revision of the object's previous
    /// version (0: none), as history records them.
    pub(crate) events: Vec<(Arc<WatchEvent>, u64)>,
    /// The last revision assigned (0: none yet).
    pub(crate) revision: u64,
    /// Raft metadata after the last applied entry, by name.
    pub(crate) meta: BTreeMap<String, Vec<u8>>,
    /// About how many bytes of object text the layer holds (its objects and its events'
    /// previous objects): a persist is due early when it grows past [`PERSIST_BYTES`].
    pub(crate) bytes: usize,
}

/// The size of the active layer at which a persist is started before its period is up (a
/// burst of large objects does not hold the whole period's worth in memory).
pub(crate) const PERSIST_BYTES: usize = 64 << 20;

impl Layer {
    fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.events.is_empty() && self.meta.is_empty()
    }
}

/// The layer applies go to, the one being persisted, and the database snapshot that goes
/// with them.
#[derive(Default)]
pub(crate) struct Tail {
    pub(crate) active: Layer,
    pub(crate) frozen: Option<Arc<Layer>>,
    /// A read transaction begun after the database's last commit, shared by the readers
    /// until the next one ([`Tail::snapshot`]).
    pub(crate) snapshot: Option<Arc<redb::ReadTransaction>>,
}

impl Tail {
    /// The database as of its last commit, for a reader holding the lock: with the layers,
    /// everything applied. Every commit ends the shared snapshot (under the lock, with the
    /// layer it persisted), so the first reader after it begins the next.
    ///
    /// Shared because beginning a read transaction waits for the header lock a commit holds
    /// through its `fsync`: one per reader stalled every apply and read that began during a
    /// persist, by up to the persist's commit (1-8 ms; the slowest 1 % of sequential writes,
    /// docs/benchmarks.md). Readers after a commit share one snapshot instead, begun once the
    /// commit is done.
    pub(crate) fn snapshot(
        &mut self,
        db: &redb::Database,
    ) -> Result<Arc<redb::ReadTransaction>, redb::TransactionError> {
        use redb::ReadableDatabase;
        if let Some(s) = &self.snapshot {
            return Ok(s.clone());
        }
        let s = Arc::new(db.begin_read()?);
        self.snapshot = Some(s.clone());
        Ok(s)
    }

    /// The newest layers' entry for `key`, if a layer has one.
    pub(crate) fn lookup(&self, key: &str) -> Option<&(u64, Option<Json>)> {
        self.active
            .objects
            .get(key)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.objects.get(key)))
    }

    /// The newest layers' value of a raft metadata entry.
    pub(crate) fn meta(&self, name: &str) -> Option<&Vec<u8>> {
        self.active
            .meta
            .get(name)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.meta.get(name)))
    }

    /// The last revision the layers hold (0: none).
    pub(crate) fn revision(&self) -> u64 {
        match (self.active.revision, &self.frozen) {
            (0, Some(f)) => f.revision,
            (r, _) => r,
        }
    }

    /// The layers' entries for keys under `prefix` from `lower` on, newest first per key.
    pub(crate) fn range(
        &self,
        prefix: &str,
        lower: std::ops::Bound<&str>,
    ) -> BTreeMap<String, (u64, Option<Json>)> {
        let mut out = BTreeMap::new();
        let layers = self
            .frozen
            .as_deref()
            .into_iter()
            .chain(std::iter::once(&self.active));
        for layer in layers {
            let lower = lower.map(str::to_string);
            for (k, v) in layer
                .objects
                .range::<String, _>((lower, std::ops::Bound::Unbounded))
            {
                if !k.starts_with(prefix) {
                    break;
                }
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }

    /// The layers' events after `revision`, in order, and the first revision they hold
    /// (history in the database is read below it).
    pub(crate) fn events_after(&self, revision: u64) -> (Vec<Arc<WatchEvent>>, Option<u64>) {
        let layers: Vec<&Layer> = self
            .frozen
            .as_deref()
            .into_iter()
            .chain(std::iter::once(&self.active))
            .collect();
        let first = layers
            .iter()
            .find_map(|l| l.events.first().map(|(e, _)| e.revision));
        let events = layers
            .iter()
            .flat_map(|l| l.events.iter())
            .filter(|(e, _)| e.revision > revision)
            .map(|(e, _)| e.clone())
            .collect();
        (events, first)
    }

    /// Freezes the active layer for a persist: the frozen one if a persist of it failed,
    /// else the active one (`None`: nothing to persist).
    pub(crate) fn freeze(&mut self) -> Option<Arc<Layer>> {
        if let Some(f) = &self.frozen {
            return Some(f.clone());
        }
        if self.active.is_empty() {
            return None;
        }
        let layer = Arc::new(std::mem::take(&mut self.active));
        self.frozen = Some(layer.clone());
        Some(layer)
    }
}
