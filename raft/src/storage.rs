//! openraft's storage: the log, the vote and the committed log id in a write-ahead log of
//! their own (`raft-wal/`, [`crate::wal`]); the state machine is the object store itself
//! (objects, history, revision), with the last applied log id and membership written in the
//! same transaction as the entries they cover.
//!
//! The log is the durable record: every append is one write and one `fdatasync` (per batch
//! of entries). Applying goes to the store's in-memory tail (`store/src/tail.rs`), persisted
//! in one fsync'd transaction when the applies pause ([`FLUSH_IDLE`]), at least every
//! [`FLUSH_EVERY`], and before a snapshot is built (which
//! lets openraft purge the log behind it). A crash loses at most the applies since the last
//! persist, which openraft applies again
//! from the log at start (up to the committed log id saved with the log, then as the leader
//! commits), as etcd re-applies its WAL over its backend's last commit.

use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use groundwork_store::{Dump, Entry as SmEntry, Store, StoreError};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};

use crate::wal::Wal;
use crate::{Applied, NodeId, Outcome, Rejected, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type SError = StorageError<NodeId>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;
/// The last snapshot built or installed, with its data.
type Current = Arc<Mutex<Option<(Meta, Vec<u8>)>>>;

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// The longest the state machine's applies stay in memory under a steady load: they are
/// made durable once the applies pause ([`FLUSH_IDLE`]) or the store's tail holds 64 MiB,
/// and at least this often. The log is the durable record, so this only bounds how much is
/// applied again after a crash (at most the 64 MiB) and how often redb rewrites the pages
/// writes touched. 10 s rather than 1 s (thirteenth session): under a trickle of writes
/// (controllers' status updates) every period's persist writes and fsyncs a few hundred KiB
/// of copied pages, and the log's fsyncs that wait behind it were the slowest watch
/// deliveries; under a heavy load the 64 MiB bound starts persists about as often as before
/// (docs/benchmarks.md).
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the applies pause before the tail is persisted without waiting for the period:
/// a burst's writes are made durable as it ends, not on the next writes' time.
pub const FLUSH_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// The newest log entries, as appended, so replication to followers that keep up reads them
/// from memory rather than from the file (and does not parse them again for each follower).
#[derive(Default)]
struct Recent {
    entries: std::collections::VecDeque<Entry>,
    bytes: usize,
}

/// At most this many bytes of entries (by their JSON size) are kept in [`Recent`].
const RECENT_BYTES: usize = 32 << 20;

/// A snapshot is due once the log written since the last one is this large, or as large as
/// that snapshot, whichever is more (see [`LogGrowth`]). etcd keeps about as much: 100,000
/// entries by default (`--snapshot-count`), ~150 MB of 1.5 KiB writes, and five 64 MB WAL
/// files. 64 MiB measured 4-10 % fewer writes/s at 64 connections (three alternating 15 s
/// runs): a 13 MB snapshot on every member every ~6 s.
pub const SNAPSHOT_MIN_LOG_BYTES: u64 = 256 << 20;

/// The log written since the last snapshot and that snapshot's size. A snapshot costs about
/// its size to build (and each follower the same), so taking one when the log behind it has
/// outgrown it keeps that cost at most the bytes written, whatever the write rate or the size
/// of each entry, and the log on disk within about twice the state. Counting entries alone
/// (openraft's policy) snapshots a 10,000-object store every 2,000 one-write entries.
#[derive(Debug, Default)]
pub struct LogGrowth {
    since_snapshot: AtomicU64,
    snapshot_bytes: AtomicU64,
}

impl LogGrowth {
    /// Whether the log since the last snapshot has outgrown it.
    pub fn snapshot_due(&self) -> bool {
        self.since_snapshot.load(Ordering::Relaxed)
            >= SNAPSHOT_MIN_LOG_BYTES.max(self.snapshot_bytes.load(Ordering::Relaxed))
    }

    fn appended(&self, bytes: usize) {
        self.since_snapshot
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A snapshot of `bytes` now covers what was appended before `seen` was read.
    fn snapshot_taken(&self, seen: u64, bytes: usize) {
        self.since_snapshot.fetch_sub(seen, Ordering::Relaxed);
        self.snapshot_bytes.store(bytes as u64, Ordering::Relaxed);
    }
}

impl Recent {
    fn push(&mut self, e: Entry) {
        // A gap (after a snapshot install or a truncation the cache did not see) restarts it.
        if self
            .entries
            .back()
            .is_some_and(|b| b.log_id.index + 1 != e.log_id.index)
        {
            self.clear();
        }
        self.bytes += crate::entry_size_hint(&e);
        self.entries.push_back(e);
        while self.bytes > RECENT_BYTES {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= crate::entry_size_hint(&old),
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops entries at or after `index` (truncate), or up to and including it (purge).
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.entries.retain(|e| keep(e.log_id.index));
        self.bytes = self.entries.iter().map(crate::entry_size_hint).sum();
    }

    /// The entries in `[start, end)`, if all are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.log_id.index;
        let last = self.entries.back()?.log_id.index;
        if start < first || end > last + 1 || start > end {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(self.entries.range(from..to).cloned().collect())
    }
}

/// The raft log, vote and committed log id, in a write-ahead log of their own
/// ([`crate::wal`]).
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
    recent: Arc<Mutex<Recent>>,
    /// The last committed log id openraft reported, written with the next append (a stale
    /// value is safe: it only bounds what is applied again at start).
    committed: Arc<Mutex<Option<LogId<NodeId>>>>,
    growth: Arc<LogGrowth>,
    /// The flusher thread's queue, started on the first leader append (see [`Flusher`]).
    flusher: Arc<std::sync::OnceLock<Flusher>>,
}

/// The thread that flushes the leader's appends, so the leader replicates its entries while
/// its own log makes them durable (vendor/openraft/PATCHES.md). Each callback is sent after
/// its entries are written; the thread takes what has queued, then a
/// [`Wal::sync_handle`], so one `fdatasync` covers every write in the batch, and reports each
/// in order. It ends when the last [`LogStore`] clone is dropped.
struct Flusher {
    tx: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

/// Makes every write to `wal` so far durable; the `fdatasync` runs without the lock held.
fn sync_wal(wal: &Mutex<Wal>) -> Result<(), String> {
    let (f, path) = wal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sync_handle()?;
    f.sync_data()
        .map_err(|e| format!("{}: fdatasync: {e}", path.display()))
}

impl Flusher {
    fn start(wal: std::sync::Weak<Mutex<Wal>>) -> std::io::Result<Flusher> {
        let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let synced = match wal.upgrade() {
                        Some(wal) => sync_wal(&wal),
                        None => Err("the raft log was closed before it was flushed".to_string()),
                    };
                    for callback in batch {
                        callback.log_io_completed(synced.clone().map_err(std::io::Error::other));
                    }
                }
            })?;
        Ok(Flusher { tx })
    }
}

impl LogStore {
    /// Opens (or creates) the write-ahead log in the directory `path`.
    pub fn open(path: &std::path::Path) -> Result<LogStore, String> {
        let wal = Wal::open(path)?;
        Ok(LogStore {
            wal: Arc::new(Mutex::new(wal)),
            recent: Default::default(),
            committed: Default::default(),
            growth: Default::default(),
            flusher: Default::default(),
        })
    }

    /// The log's growth since the last snapshot, shared with the [`StateMachine`].
    pub fn growth(&self) -> Arc<LogGrowth> {
        self.growth.clone()
    }

    fn wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `entries` and the last committed log id, with one `fdatasync` if `sync`,
    /// counting their encoded size in [`LogGrowth`].
    fn write_entries(&self, entries: &[Entry], sync: bool) -> Result<(), String> {
        let committed = *self.committed.lock().unwrap_or_else(|e| e.into_inner());
        let committed = committed
            .map(|c| serde_json::to_vec(&c).map_err(|e| e.to_string()))
            .transpose()?;
        let records = entries.iter().map(|e| {
            (e.log_id.index, move |out: &mut Vec<u8>| {
                out.reserve(crate::entry_size_hint(e));
                serde_json::to_writer(out, e).map_err(|e| e.to_string())
            })
        });
        let bytes = self.wal().append_with(records, committed, sync)?;
        self.growth.appended(bytes);
        Ok(())
    }

    /// Hands `callback` to the flusher thread (started on first use); flushes inline if the
    /// thread cannot be started or has stopped.
    fn flush_later(&self, callback: LogFlushed<TypeConfig>) {
        let flusher = self.flusher.get_or_init(|| {
            Flusher::start(Arc::downgrade(&self.wal)).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot start the raft log's flusher thread; flushing inline");
                // A sender whose receiver is gone: every send fails, and flushes inline.
                Flusher { tx: std::sync::mpsc::channel().0 }
            })
        });
        if let Err(std::sync::mpsc::SendError(callback)) = flusher.tx.send(callback) {
            callback.log_io_completed(sync_wal(&self.wal).map_err(std::io::Error::other));
        }
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        get: impl FnOnce(&Wal) -> Option<&[u8]>,
    ) -> Result<Option<T>, String> {
        get(&self.wal()).map(decode).transpose()
    }

    fn last_entry(&self) -> Result<Option<Entry>, String> {
        self.wal().last()?.map(|(_, b)| decode(&b)).transpose()
    }
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    serde_json::from_slice(b).map_err(|e| e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, SError> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let start = match bounds.0 {
            std::ops::Bound::Included(i) => Some(i),
            std::ops::Bound::Excluded(i) => i.checked_add(1),
            std::ops::Bound::Unbounded => None,
        };
        let end = match bounds.1 {
            std::ops::Bound::Included(i) => i.checked_add(1),
            std::ops::Bound::Excluded(i) => Some(i),
            std::ops::Bound::Unbounded => None,
        };
        if let (Some(start), Some(end)) = (start, end)
            && let Some(hit) = self
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(start, end)
        {
            return Ok(hit);
        }
        let read = || -> Result<Vec<Entry>, String> {
            let (start, end) = (start.unwrap_or(0), end.unwrap_or(u64::MAX));
            let raw = self.wal().read(start, end)?;
            raw.iter().map(|(_, b)| decode(b)).collect()
        };
        read().map_err(|e| StorageIOError::read_logs(any(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let purged: Option<LogId<NodeId>> = self
            .meta(|w| w.purged())
            .map_err(|e| StorageIOError::read_logs(any(e)))?;
        let last = self
            .last_entry()
            .map_err(|e| StorageIOError::read_logs(any(e)))?
            .map(|e| e.log_id)
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(any(e)))?;
        self.wal()
            .save_vote(bytes)
            .map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        self.meta(|w| w.vote())
            .map_err(|e| StorageIOError::read_vote(any(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        // Kept until the next append's durable commit (no fsync of its own).
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        let saved = *self.committed.lock().unwrap_or_else(|e| e.into_inner());
        if saved.is_some() {
            return Ok(saved);
        }
        self.meta(|w| w.committed())
            .map_err(|e| StorageIOError::read_logs(any(e)).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // The leader's own append: openraft replicates the entries while the flusher thread
        // makes them durable. A follower's is flushed here: its answer waits for it anyway.
        let later = callback.flush_may_lag();
        let written = self.write_entries(&entries, !later);
        match written {
            Ok(()) => {
                let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
                for e in entries {
                    recent.push(e);
                }
                drop(recent);
                if later {
                    self.flush_later(callback);
                } else {
                    callback.log_io_completed(Ok(()));
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(StorageIOError::write_logs(any(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|i| i < log_id.index);
        self.wal()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|i| i > log_id.index);
        let bytes = serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write_logs(any(e)))?;
        // Not fsync'd unless segments are deleted: it becomes durable with the next append. A
        // purge lost in a crash only leaves entries the snapshot already covers.
        self.wal()
            .purge(log_id.index, bytes)
            .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }
}

/// The state machine: the object store.
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    /// The last snapshot built or installed: (meta, data).
    current: Current,
    growth: Arc<LogGrowth>,
}

impl StateMachine {
    /// `growth` is the log's ([`LogStore::growth`]): snapshots reset it.
    pub fn new(store: Store, growth: Arc<LogGrowth>) -> Self {
        StateMachine {
            store,
            current: Default::default(),
            growth,
        }
    }

    fn applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), String> {
        let get = |k: &str| self.store.sm_meta(k).map_err(|e| e.to_string());
        let applied = match get("applied")? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
            None => None,
        };
        let membership = match get("membership")? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, String> {
        // openraft purges the log up to the snapshot, so the state it covers must be durable:
        // everything applied so far is persisted first, then the dump reads the database,
        // whose raft metadata names exactly what it holds (applies may continue meanwhile,
        // into the in-memory tail).
        let seen = self.growth.since_snapshot.load(Ordering::Relaxed);
        self.store.flush().map_err(|e| e.to_string())?;
        let dump = self.store.dump().map_err(|e| e.to_string())?;
        let find = |k: &str| {
            dump.meta
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let last_log_id: Option<LogId<NodeId>> = match find("applied") {
            Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
            None => None,
        };
        let last_membership = match find("membership") {
            Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
            None => StoredMembership::default(),
        };
        let data = serde_json::to_vec(&dump).map_err(|e| e.to_string())?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id: format!(
                "{}-{}",
                last_log_id.map(|l| l.index).unwrap_or(0),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            ),
        };
        self.growth.snapshot_taken(seen, data.len());
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((meta.clone(), data.clone()));
        tracing::info!(
            index = last_log_id.map(|l| l.index).unwrap_or(0),
            objects = dump.objects.len(),
            bytes = data.len(),
            "raft snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let me = self.clone();
        off_runtime(move || me.build())
            .await
            .and_then(|built| built)
            .map_err(|e| StorageIOError::read_state_machine(any(e)).into())
    }
}

/// Runs `f`, which blocks (building or installing a snapshot: a persist, a dump and its
/// encoding, or a decode and a restore; hundreds of milliseconds at 10,000 objects), on
/// tokio's blocking pool. On a runtime worker it held up every task queued there: raft RPCs
/// among them, whose replies then missed openraft's timeout (the heartbeat interval), so the
/// leader resent appends and failed read-index rounds.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("snapshot task failed: {e}"))
}

fn rejected(e: StoreError) -> Result<Rejected, StoreError> {
    match e {
        StoreError::Conflict {
            key,
            expected,
            actual,
        } => Ok(Rejected::Conflict {
            key,
            expected,
            actual,
        }),
        StoreError::NotFound { key } => Ok(Rejected::NotFound { key }),
        StoreError::AlreadyExists { key } => Ok(Rejected::AlreadyExists { key }),
        other => Err(other),
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        SError,
    > {
        let (applied, membership) = self
            .applied()
            .map_err(|e| StorageIOError::read_state_machine(any(e)))?;
        self.store
            .set_applied_index(applied.map(|l| l.index).unwrap_or(0));
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, SError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        let mut last = None;
        let mut membership = None;
        for e in entries {
            last = Some(e.log_id);
            let ops = match e.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(b) => b.0,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(e.log_id), m));
                    Vec::new()
                }
            };
            batch.push(SmEntry {
                index: e.log_id.index,
                ops,
            });
        }
        let Some(last) = last else { return Ok(vec![]) };
        let mut meta = vec![("applied", enc(&Some(last)))];
        if let Some(m) = &membership {
            meta.push(("membership", enc(m)));
        }
        let results = self
            .store
            // In memory until the next persist: the log is the durable record (see the
            // module's documentation).
            .apply_entries(&batch, &meta)
            .map_err(|e| StorageIOError::write_state_machine(any(e)))?;
        let mut out = Vec::with_capacity(results.len());
        for entry in results {
            let mut outcomes = Vec::with_capacity(entry.len());
            for r in entry {
                outcomes.push(match r {
                    Ok(c) => Outcome::Ok {
                        revision: c.revision,
                        object: c.object,
                    },
                    Err(e) => Outcome::Rejected(
                        rejected(e).map_err(|e| StorageIOError::write_state_machine(any(e)))?,
                    ),
                });
            }
            out.push(Applied(outcomes));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let data = snapshot.into_inner();
        let sig = Some(meta.signature());
        let (store, m) = (self.store.clone(), meta.clone());
        // Decoding and restoring block for as long as a build.
        let data = off_runtime(move || -> Result<Vec<u8>, Box<SError>> {
            let mut dump: Dump = serde_json::from_slice(&data)
                .map_err(|e| Box::new(StorageIOError::read_snapshot(sig.clone(), any(e)).into()))?;
            // The meta the leader sent is the authority for what the snapshot covers.
            dump.meta
                .retain(|(k, _)| k != "applied" && k != "membership");
            dump.meta.push(("applied".into(), enc(&m.last_log_id)));
            dump.meta
                .push(("membership".into(), enc(&m.last_membership)));
            store
                .restore(&dump, m.last_log_id.map(|l| l.index).unwrap_or(0))
                .map_err(|e| Box::new(StorageIOError::write_snapshot(sig, any(e)).into()))?;
            Ok(data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?
        .map_err(|e| *e)?;
        // openraft purges the log the snapshot covers.
        let seen = self.growth.since_snapshot.load(Ordering::Relaxed);
        self.growth.snapshot_taken(seen, data.len());
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        let cur = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match cur {
            Some((meta, data)) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })),
            // The state machine is durable, so the current state is always a valid snapshot.
            None => {
                let (applied, _) = self
                    .applied()
                    .map_err(|e| StorageIOError::read_state_machine(any(e)))?;
                if applied.is_none() {
                    return Ok(None);
                }
                let me = self.clone();
                off_runtime(move || me.build())
                    .await
                    .and_then(|built| built)
                    .map(Some)
                    .map_err(|e| StorageIOError::read_state_machine(any(e)).into())
            }
        }
    }
}

/// JSON encoding of the raft metadata kept with the objects.
fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("raft metadata serialises")
}

#[cfg(test)]
mod suite {
    use super::*;

    struct Builder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir>
        for Builder
    {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), SError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(groundwork_store::StoreConfig::new(dir.path().join("db")))
                .expect("store opens");
            let log = LogStore::open(&dir.path().join("wal")).expect("log opens");
            let growth = log.growth();
            Ok((dir, log, StateMachine::new(store, growth)))
        }
    }

    /// A snapshot is due once the log since the last one reaches the floor or that
    /// snapshot's size, whichever is more; building one counts only what it covers.
    #[test]
    fn snapshot_due_by_log_growth() {
        let g = LogGrowth::default();
        g.appended(SNAPSHOT_MIN_LOG_BYTES as usize - 1);
        assert!(!g.snapshot_due());
        g.appended(1);
        assert!(g.snapshot_due());
        // A snapshot larger than the floor raises the bar to its own size; what was
        // appended while it was built still counts.
        let seen = g.since_snapshot.load(Ordering::Relaxed);
        g.appended(10);
        g.snapshot_taken(seen, 2 * SNAPSHOT_MIN_LOG_BYTES as usize);
        assert_eq!(g.since_snapshot.load(Ordering::Relaxed), 10);
        g.appended(SNAPSHOT_MIN_LOG_BYTES as usize);
        assert!(!g.snapshot_due());
        g.appended(SNAPSHOT_MIN_LOG_BYTES as usize);
        assert!(g.snapshot_due());
    }

    /// Appends count their encoded size and a built snapshot resets the count.
    #[test]
    fn appends_grow_and_snapshots_reset() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (_dir, log, mut sm) = openraft::testing::StoreBuilder::build(&Builder)
                .await
                .expect("storage");
            let growth = log.growth();
            let entry = |index| Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Blank,
            };
            log.write_entries(&[entry(1), entry(2)], true)
                .expect("append");
            let appended = growth.since_snapshot.load(Ordering::Relaxed);
            assert!(appended > 20, "two encoded entries counted: {appended}");
            sm.apply(vec![entry(1), entry(2)]).await.expect("apply");
            let snap = sm.build_snapshot().await.expect("snapshot");
            assert_eq!(growth.since_snapshot.load(Ordering::Relaxed), 0);
            assert_eq!(
                growth.snapshot_bytes.load(Ordering::Relaxed) as usize,
                snap.snapshot.get_ref().len()
            );
        });
    }

    /// openraft's own conformance suite for log and state-machine storage.
    #[test]
    fn openraft_storage_suite() {
        openraft::testing::Suite::test_all(Builder).expect("storage suite");
    }
}
