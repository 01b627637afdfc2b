//! The redb-backed store and its writer thread (group commit).

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::history;
use crate::{
    Committed, EventType, Json, Precondition, StoreError, WatchEvent, WatchStream, WriteOp,
    set_resource_version,
};

/// Live objects: key → (revision of last change, JSON text; its resourceVersion is the
/// revision, set when read).
pub(crate) const OBJECTS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("objects");
/// Change history: revision → change record (`history::encode`).
pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
/// Counters: "revision" (last assigned) and "compacted" (history holds revisions above it).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The database file.
    pub path: PathBuf,
    /// How many events of history watches can resume from.
    pub history_retention: u64,
    /// Most writes committed in one transaction (one fsync).
    pub max_batch: usize,
    /// redb's page cache for the database file, in bytes. redb's own default (1 GiB) is
    /// filled by every page a write touches, so memory grows until it is reached.
    pub cache_bytes: usize,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            history_retention: 100_000,
            max_batch: 512,
            cache_bytes: 128 << 20,
        }
    }
}

/// One stored object and the revision of its last change.
#[derive(Clone, Debug)]
pub struct StoredObject {
    pub revision: u64,
    pub object: Value,
}

/// A page of a list, read from one consistent snapshot.
#[derive(Clone, Debug)]
pub struct ListPage {
    pub items: Vec<StoredObject>,
    /// The store's revision at the snapshot.
    pub revision: u64,
    /// The last key returned when more keys follow.
    pub continue_after: Option<String>,
    /// How many keys under the prefix follow this page.
    pub remaining: u64,
}

struct Request {
    op: WriteOp,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

pub(crate) struct Inner {
    pub(crate) db: Database,
    writer: mpsc::Sender<Request>,
    pub(crate) events: broadcast::Sender<Arc<WatchEvent>>,
    pub(crate) revision: AtomicU64,
    pub(crate) compacted: AtomicU64,
    /// The last applied revision, for waiters ([`Store::wait_applied`]).
    pub(crate) applied: tokio::sync::watch::Sender<u64>,
    /// Replicated mode: the last raft log index applied ([`Store::wait_applied_index`]).
    pub(crate) applied_index: tokio::sync::watch::Sender<u64>,
    /// Bumped when the state is replaced by a snapshot: open watches end.
    pub(crate) resets: AtomicU64,
    pub(crate) retention: u64,
    /// Set in replicated mode: writes go through raft.
    pub(crate) proposer: std::sync::RwLock<Option<Arc<dyn crate::Proposer>>>,
    /// Replicated mode: applied writes not yet persisted (`tail.rs`); empty otherwise.
    pub(crate) tail: std::sync::Mutex<crate::tail::Tail>,
    /// Held by a persist and a snapshot install (one database writer of the tail at a time).
    pub(crate) persist: std::sync::Mutex<()>,
    /// Replicated mode: woken when the tail has outgrown [`crate::tail::PERSIST_BYTES`].
    pub(crate) persist_due: Arc<tokio::sync::Notify>,
}

impl Inner {
    pub(crate) fn tail(&self) -> std::sync::MutexGuard<'_, crate::tail::Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The object store. Cheap to clone; all clones share one database and writer.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("revision", &self.revision())
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the database and starts the writer thread.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        if let Some(dir) = config.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Storage(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::builder()
            .set_cache_size(config.cache_bytes)
            .create(&config.path)
            .map_err(|e| StoreError::Storage(format!("{}: {e}", config.path.display())))?;
        let (revision, compacted) = {
            let txn = db.begin_write()?;
            let r;
            let c;
            {
                let mut meta = txn.open_table(META)?;
                txn.open_table(OBJECTS)?;
                txn.open_table(HISTORY)?;
                r = meta.get("revision")?.map(|g| g.value());
                c = meta.get("compacted")?.map(|g| g.value()).unwrap_or(0);
                if r.is_none() {
                    // Revision 1 is the empty store: lists never report "0", which clients
                    // read as "any revision".
                    meta.insert("revision", 1)?;
                }
            }
            txn.commit()?;
            (r.unwrap_or(1), c)
        };
        let (tx, rx) = mpsc::channel(4096);
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            db,
            writer: tx,
            events,
            revision: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            applied: tokio::sync::watch::Sender::new(revision),
            applied_index: tokio::sync::watch::Sender::new(0),
            resets: AtomicU64::new(0),
            retention: config.history_retention,
            proposer: Default::default(),
            tail: Default::default(),
            persist: Default::default(),
            persist_due: Default::default(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(weak, rx, config))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        tracing::info!(revision, compacted, "store opened");
        Ok(Store { inner })
    }

    /// The last assigned revision.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// History holds the revisions above this one.
    pub fn compacted(&self) -> u64 {
        self.inner.compacted.load(Ordering::Acquire)
    }

    /// Applies one write durably. Returns when it is on disk (replicated: on a majority of
    /// the members, and applied here).
    pub async fn write(&self, op: WriteOp) -> Result<Committed, StoreError> {
        if let WriteOp::Put { key, value, .. } = &op
            && value.as_str().len() > crate::MAX_OBJECT_BYTES
        {
            return Err(StoreError::TooLarge {
                key: key.clone(),
                size: value.as_str().len(),
                limit: crate::MAX_OBJECT_BYTES,
            });
        }
        if let Some(p) = self.proposer() {
            return p.propose(op).await;
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(Request { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Reads one object.
    pub fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let mut tail = self.inner.tail();
        if let Some((revision, v)) = tail.lookup(key) {
            let (revision, v) = (*revision, v.clone());
            drop(tail);
            return match v {
                Some(j) => Ok(Some(StoredObject {
                    revision,
                    object: parse_stored(j.as_str().as_bytes(), revision)?,
                })),
                None => Ok(None),
            };
        }
        // Taken under the lock: a persist of what the layers held is in it (tail.rs).
        let txn = tail.snapshot(&self.inner.db)?;
        drop(tail);
        let table = txn.open_table(OBJECTS)?;
        match table.get(key)? {
            Some(g) => {
                let (revision, bytes) = g.value();
                Ok(Some(StoredObject {
                    revision,
                    object: parse_stored(bytes, revision)?,
                }))
            }
            None => Ok(None),
        }
    }

    /// Lists objects whose key starts with `prefix`, in key order, after `start_after`, at
    /// most `limit` (0 = all) that pass `filter` (none: every object, and the keys past the
    /// limit are counted without parsing their objects).
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        filter: Option<&dyn Fn(&Value) -> bool>,
    ) -> Result<ListPage, StoreError> {
        let lower = match start_after {
            Some(k) if k >= prefix => Bound::Excluded(k),
            _ => Bound::Included(prefix),
        };
        let mut tail = self.inner.tail();
        let layered = tail.range(prefix, lower);
        let layered_rev = tail.revision();
        // Taken under the lock: a persist of what the layers held is in it (tail.rs).
        let txn = tail.snapshot(&self.inner.db)?;
        drop(tail);
        let revision = read_revision(&txn)?.max(layered_rev);
        let table = txn.open_table(OBJECTS)?;
        let mut items = Vec::new();
        let mut continue_after = None;
        let mut remaining = 0u64;
        let mut stored = table.range::<&str>((lower, Bound::Unbounded))?.peekable();
        let mut layered = layered.into_iter().peekable();
        // One key's object: counted without reading it past the limit (no filter), else
        // parsed, filtered and kept.
        let mut visit = |key: &str, rev: u64, bytes: &[u8]| -> Result<(), StoreError> {
            if filter.is_none() && limit > 0 && items.len() == limit {
                remaining += 1;
                return Ok(());
            }
            let object = parse_stored(bytes, rev)?;
            if filter.is_some_and(|f| !f(&object)) {
                return Ok(());
            }
            if limit > 0 && items.len() == limit {
                remaining += 1;
                return Ok(());
            }
            if limit > 0 && items.len() + 1 == limit {
                continue_after = Some(key.to_string());
            }
            items.push(StoredObject {
                revision: rev,
                object,
            });
            Ok(())
        };
        /// Where the next key comes from.
        enum Next {
            Done,
            Db,
            /// The layers' entry; `shadows`: the database has the same key (skipped).
            Layered {
                shadows: bool,
            },
        }
        loop {
            // The next key of either source (the layers' entry wins over the database's),
            // decided on the peeked keys without copying them.
            let next = match stored.peek() {
                Some(Err(_)) => None,
                peeked => {
                    let db = match peeked {
                        Some(Ok((k, _))) => Some(k.value()).filter(|k| k.starts_with(prefix)),
                        _ => None,
                    };
                    Some(match (db, layered.peek()) {
                        (None, None) => Next::Done,
                        (Some(d), Some((l, _))) if l.as_str() <= d => Next::Layered {
                            shadows: l.as_str() == d,
                        },
                        (None, Some(_)) => Next::Layered { shadows: false },
                        (Some(_), _) => Next::Db,
                    })
                }
            };
            match next {
                None => {
                    return Err(stored.next().and_then(|r| r.err()).expect("peeked").into());
                }
                Some(Next::Done) => break,
                Some(Next::Layered { shadows }) => {
                    if shadows {
                        stored.next();
                    }
                    let (k, (rev, v)) = layered.next().expect("peeked");
                    if let Some(j) = v {
                        visit(&k, rev, j.as_str().as_bytes())?;
                    }
                }
                Some(Next::Db) => {
                    let (k, v) = stored.next().expect("peeked")?;
                    let (rev, bytes) = v.value();
                    visit(k.value(), rev, bytes)?;
                }
            }
        }
        if remaining == 0 {
            continue_after = None;
        }
        Ok(ListPage {
            items,
            revision,
            continue_after,
            remaining,
        })
    }

    /// Streams every change after `revision`, first from history, then live.
    /// Fails with [`StoreError::Compacted`] when history no longer reaches back that far.
    pub fn watch(&self, revision: u64) -> Result<WatchStream, StoreError> {
        let rx = self.inner.events.subscribe();
        let pending = history::after(&self.inner, revision)?;
        Ok(WatchStream::new(self.clone(), rx, revision, pending))
    }
}

/// A stored object's text, parsed, with `metadata.resourceVersion` set to its revision.
fn parse_stored(bytes: &[u8], revision: u64) -> Result<Value, StoreError> {
    let mut v: Value = serde_json::from_slice(bytes)?;
    set_resource_version(&mut v, revision);
    Ok(v)
}

/// The store's revision as of a read snapshot.
pub(crate) fn read_revision(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(META)?
        .get("revision")?
        .map(|g| g.value())
        .unwrap_or(1))
}

fn writer_loop(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::Receiver<Request>,
    config: StoreConfig,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let start = inner.revision.load(Ordering::Acquire);
        match apply_batch(&inner.db, &batch, start) {
            Ok((results, events, last)) => {
                // Readers from now on see the commit (tail.rs, `Tail::snapshot`).
                inner.tail().snapshot = None;
                inner.revision.store(last, Ordering::Release);
                inner.applied.send_replace(last);
                for e in events {
                    // No receivers is fine: nobody is watching.
                    let _ = inner.events.send(Arc::new(e));
                }
                for (req, res) in batch.into_iter().zip(results) {
                    let _ = req.reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "commit failed; no write of the batch was applied");
                for req in batch {
                    let _ = req.reply.send(Err(StoreError::Storage(e.to_string())));
                }
            }
        }
        if let Err(e) = history::maybe_compact(&inner) {
            tracing::warn!(error = %e, "history compaction failed; will retry after the next write");
        }
    }
}

type BatchOutcome = (Vec<Result<Committed, StoreError>>, Vec<WatchEvent>, u64);

fn apply_batch(db: &Database, batch: &[Request], mut rev: u64) -> Result<BatchOutcome, StoreError> {
    let txn = db.begin_write()?;
    let mut results = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    {
        let mut objects = txn.open_table(OBJECTS)?;
        let mut hist = txn.open_table(HISTORY)?;
        let mut meta = txn.open_table(META)?;
        for req in batch {
            results.push(apply_next(
                &mut objects,
                &mut hist,
                &req.op,
                &mut rev,
                &mut events,
            )?);
        }
        meta.insert("revision", rev)?;
    }
    txn.commit()?;
    Ok((results, events, rev))
}

/// Applies `op` at the revision after `rev`, advancing `rev` and recording the event in
/// `events` if it passes its precondition (a failed precondition consumes no revision). The
/// outer error is a storage failure, the inner one the failed precondition.
pub(crate) fn apply_next(
    objects: &mut redb::Table<'_, &'static str, (u64, &'static [u8])>,
    hist: &mut redb::Table<'_, u64, &'static [u8]>,
    op: &WriteOp,
    rev: &mut u64,
    events: &mut Vec<WatchEvent>,
) -> Result<Result<Committed, StoreError>, StoreError> {
    Ok(match apply_one(objects, hist, op, *rev + 1)? {
        Ok(event) => {
            *rev += 1;
            let committed = Committed {
                revision: *rev,
                object: event.raw.clone(),
            };
            events.push(event);
            Ok(committed)
        }
        Err(rejected) => Err(rejected),
    })
}

/// Applies `op` at revision `rev` inside a write transaction. The outer error is a storage
/// failure (abort the transaction); the inner one a failed precondition (nothing written).
/// Objects are stored and recorded as the text the writer encoded: nothing is parsed here.
pub(crate) fn apply_one(
    objects: &mut redb::Table<'_, &'static str, (u64, &'static [u8])>,
    hist: &mut redb::Table<'_, u64, &'static [u8]>,
    op: &WriteOp,
    rev: u64,
) -> Result<Result<WatchEvent, StoreError>, StoreError> {
    let key = op.key();
    let current: Option<(u64, Json)> = match objects.get(key)? {
        Some(g) => {
            let (r, b) = g.value();
            Some((r, Json::from_stored(b)?))
        }
        None => None,
    };
    let (event, prev_revision) = match change(op, current, rev) {
        Ok(c) => c,
        Err(rejected) => return Ok(Err(rejected)),
    };
    match op {
        WriteOp::Put { value, .. } => {
            objects.insert(key, (rev, value.as_str().as_bytes()))?;
        }
        WriteOp::Delete { .. } => {
            objects.remove(key)?;
        }
    }
    hist.insert(rev, history::encode(&event, prev_revision).as_slice())?;
    Ok(Ok(event))
}

/// The event `op` makes at revision `rev` given the key's `current` (revision, object), and
/// the revision of the object's previous version (0: none); or the failed precondition.
pub(crate) fn change(
    op: &WriteOp,
    current: Option<(u64, Json)>,
    rev: u64,
) -> Result<(WatchEvent, u64), StoreError> {
    let key = op.key();
    let prev_revision = current.as_ref().map(|c| c.0).unwrap_or(0);
    let pre = match op {
        WriteOp::Put { precondition, .. } | WriteOp::Delete { precondition, .. } => *precondition,
    };
    check(
        key,
        pre,
        current.as_ref().map(|c| c.0),
        matches!(op, WriteOp::Delete { .. }),
    )?;
    let event = match op {
        WriteOp::Put { value, .. } => {
            let type_ = if current.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            };
            WatchEvent::new(
                rev,
                type_,
                key.to_string(),
                value.clone(),
                current.map(|c| c.1),
            )
        }
        WriteOp::Delete { .. } => {
            let (_, last) = current.expect("checked: exists");
            WatchEvent::new(
                rev,
                EventType::Deleted,
                key.to_string(),
                last.clone(),
                Some(last),
            )
        }
    };
    Ok((event, prev_revision))
}

fn check(
    key: &str,
    pre: Precondition,
    current: Option<u64>,
    is_delete: bool,
) -> Result<(), StoreError> {
    let key_s = || key.to_string();
    match (pre, current) {
        (_, None) if is_delete => Err(StoreError::NotFound { key: key_s() }),
        (Precondition::MustNotExist, Some(_)) => Err(StoreError::AlreadyExists { key: key_s() }),
        (Precondition::MustExist | Precondition::Revision(_), None) => {
            Err(StoreError::NotFound { key: key_s() })
        }
        (Precondition::Revision(want), Some(have)) if want != have => Err(StoreError::Conflict {
            key: key_s(),
            expected: want,
            actual: have,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "store_test.rs"]
mod tests;
